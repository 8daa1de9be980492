"""`llmjax info --config=FILE[:arg] [--config.key=value ...] [--json]`: size and cost of a config.

Prints parameter counts, training FLOPs per token, tokens and FLOPs of the whole run, and the
compiled train step's memory (ahead-of-time `lower().compile()`, nothing allocated or trained).
Writes nothing. With --json, one JSON object on stdout instead (for scripts and sweeps).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np

from llmjax import config as config_lib
from llmjax import distributed
from llmjax.config import Experiment
from llmjax.data.tokenizer import spec_vocab_size
from llmjax.errors import UserError
from llmjax.model.flops import flops_per_token, param_counts
from llmjax.train.loop import build, compile_train_step


@dataclasses.dataclass
class SizeOnlyTokenizer:
    """Stands in for the tokenizer when only its vocabulary size matters (no data is read)."""

    vocab_size: int

    def token_byte_lengths(self) -> np.ndarray:
        return np.ones(self.vocab_size, np.int32)


def _vocab_size(exp: Experiment) -> int:
    if not exp.vocab_from_tokenizer:
        return exp.model.vocab_size
    return int(spec_vocab_size(exp.data.tokenizer))


def describe(exp: Experiment | Any, *, compile_step: bool = True) -> dict[str, Any]:
    """Parameter counts, FLOPs/token, run totals and (compile_step) the step's compiled memory."""
    if not isinstance(exp, Experiment):
        exp = config_lib.parse_experiment(exp)
    exp.check_devices(jax.device_count(), jax.process_count())
    setup = build(exp, SizeOnlyTokenizer(_vocab_size(exp)))
    counts = param_counts(setup.model_cfg)
    flops = flops_per_token(setup.model_cfg, exp.data.seq_len)
    tokens = setup.steps * exp.tokens_per_step
    out: dict[str, Any] = {
        "params": dataclasses.asdict(counts),
        "flops_per_token": dataclasses.asdict(flops),
        "vocab_size": setup.model_cfg.vocab_size,
        "steps": setup.steps,
        "tokens": tokens,
        "train_flops": flops.training * tokens,
        "mesh": dict(setup.mesh.shape),
    }
    if compile_step:
        compiled = compile_train_step(setup, exp)
        mem = compiled.memory_analysis()
        if mem is not None:
            fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                      "temp_size_in_bytes", "generated_code_size_in_bytes")
            stats = {f: int(getattr(mem, f, 0) or 0) for f in fields}
            # Donated state aliases its output: count it once.
            stats["total_bytes"] = (stats["argument_size_in_bytes"] + stats["output_size_in_bytes"]
                                    - stats["alias_size_in_bytes"] + stats["temp_size_in_bytes"])
            out["memory"] = stats
        else:
            out["memory"] = None
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**24 else f"{n / 2**20:.2f} MiB"


def format_info(info: dict[str, Any]) -> str:
    p, f = info["params"], info["flops_per_token"]
    lines = [
        f"parameters      total {p['total']:,}  non-embedding {p['non_embedding']:,}  "
        f"embedding {p['embedding']:,}",
        f"vocab_size      {info['vocab_size']:,}",
        f"FLOPs/token     training {f['training']:,} (6N part {f['dense_6n']:,}, "
        f"attention {f['attention']:,}); forward {f['forward']:,}",
        f"run             {info['steps']:,} steps, {info['tokens']:,} tokens, "
        f"{info['train_flops']:.3e} training FLOPs",
        f"mesh            {info['mesh']}",
    ]
    mem = info.get("memory")
    if mem:
        lines.append(
            f"compiled step   {_gib(mem['total_bytes'])} per device (arguments "
            f"{_gib(mem['argument_size_in_bytes'])}, outputs {_gib(mem['output_size_in_bytes'])}, "
            f"aliased {_gib(mem['alias_size_in_bytes'])}, temporaries "
            f"{_gib(mem['temp_size_in_bytes'])})")
    elif "memory" in info:
        lines.append("compiled step   memory analysis not available on this backend")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    argv = list(argv)
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if any(a in ("-h", "--help", "help") for a in argv):
        print("usage: llmjax info --config=FILE[:arg] [--config.key=value ...] [--json]")
        return 0
    config, _ = config_lib.parse_flags(argv)
    exp = config_lib.parse_experiment(config)
    distributed.initialize(exp.train.distributed)
    info = describe(exp)
    if as_json:
        print(json.dumps(info, sort_keys=True))
    else:
        print(format_info(info))
    return 0


__all__ = ["describe", "format_info", "main", "UserError"]
