"""Where a fine-tuning run starts: another run's checkpoint (`finetune.init_from=RUN[:STEP]`).

The init run's parameters (LoRA merged, a head dropped: `llmjax.eval.probe.load_params`) become
the new run's model parameters; its model config must be the new run's, field for field, except
those that do not change the parameters (dropout, remat, attention kernel).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from llmjax.errors import UserError

# Model fields a fine-tuning run may set differently from its init run.
FREE_FIELDS = ("dropout", "remat", "attention", "compute_dtype")


def parse_init_from(spec: str) -> tuple[str, int | None]:
    """'RUN' or 'RUN:STEP' -> (run directory, step or None = its latest checkpoint)."""
    run, sep, step = spec.rpartition(":")
    if sep and step.isdigit() and run:
        return run, int(step)
    return spec, None


def init_run(ft: Any) -> Any:
    """The init run (`llmjax.eval.probe.Run`): its config and tokenizer; UserError naming it."""
    from llmjax.eval.probe import load_run

    path, _ = parse_init_from(ft.init_from)
    if not os.path.isdir(path):
        raise UserError(f"finetune.init_from={ft.init_from!r}: no such run directory")
    try:
        return load_run(path)
    except UserError as e:
        raise UserError(f"finetune.init_from={ft.init_from!r}: {e}") from None


def check_model(init_cfg: Any, model_cfg: Any, init_from: str) -> None:
    """UserError naming the first model field where the new run differs from its init run."""
    if init_cfg.vocab_size != model_cfg.vocab_size:
        raise UserError(f"finetune.init_from={init_from!r}: that run's vocabulary has "
                        f"{init_cfg.vocab_size} tokens, this run's {model_cfg.vocab_size} "
                        "(data.tokenizer must be the init run's: file:RUN/tokenizer)")
    for f in dataclasses.fields(model_cfg):
        if f.name in FREE_FIELDS:
            continue
        a, b = getattr(init_cfg, f.name), getattr(model_cfg, f.name)
        if a != b:
            raise UserError(f"model.{f.name}={b!r} differs from the init run's {a!r} "
                            f"(finetune.init_from={init_from!r}); only "
                            f"{', '.join(FREE_FIELDS)} may differ")


def check_init_run(ft: Any, model_cfg: Any) -> Any:
    """The init run, checked against a run of `model_cfg` (UserError naming the field); reads
    its config and tokenizer, not its checkpoint."""
    run = init_run(ft)
    check_model(run.model_cfg, model_cfg, ft.init_from)
    return run


def init_params(ft: Any, run: Any) -> Any:
    """The checked init run's model parameters (a pure dict on one device)."""
    from llmjax.eval.probe import load_params

    _, step = parse_init_from(ft.init_from)
    try:
        _, params, _ = load_params(run.workdir, step)
    except UserError as e:
        raise UserError(f"finetune.init_from={ft.init_from!r}: {e}") from None
    return params
