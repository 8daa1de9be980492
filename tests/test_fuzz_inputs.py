"""Fuzz: many seeded random bad configs and command lines. Each one must end in exit 2 with one
line naming what is wrong, no traceback, and nothing written (no workdir, no data dir).

Bad values are drawn from each field's own declaration (type hint and bounds in the typed
sections of llmjax.config), so every case is bad by construction; the test never asks the code
under test which values are bad.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import typing

import pytest

from llmjax import config as config_lib
from llmjax import fields
from llmjax.cli import main as cli_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
SEED = 20261201
N_CASES = 400

SECTIONS = {"": config_lib.TrainConfig, "optimizer": config_lib.OptimizerConfig,
            "mesh": config_lib.MeshConfig, "model": config_lib.ModelConfig}
# Fields whose every value of the right type is allowed (nothing bad to draw but the type).
_FREE = {"distributed"}


def _bad_values(hint, meta, name: str) -> list[str]:
    """Command-line spellings of values that the field's declaration forbids."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if origin is not None and origin is not typing.Literal and args else hint
    out = []
    if origin is typing.Literal:
        return ["bogus", "STOP!"]
    if base is bool:
        return ["maybe", "2"]
    if base is int:
        out += ["1.5", "abc"]
        if "ge" in meta:
            out.append(str(int(meta["ge"]) - 3))
        if "gt" in meta:
            out.append(str(int(meta["gt"])))
    if base is float:
        out += ["nan", "inf", "-inf", "abc"]
        if "ge" in meta:
            out.append(str(meta["ge"] - 1.5))
        if "gt" in meta:
            out.append(str(meta["gt"]))
        if "lt" in meta:
            out.append(str(meta["lt"]))
        if "le" in meta:
            out.append(str(meta["le"] + 0.5))
    if base is str and name == "distributed":
        out.append("sometimes")
    return out


def _model_bad() -> list[tuple[str, str]]:
    """model.* values that ModelConfig's own checks forbid (bounds are in its checker)."""
    return [("model.d_model", "0"), ("model.d_model", "66"), ("model.n_heads", "-1"),
            ("model.n_kv_heads", "3"), ("model.norm", "batchnorm"), ("model.mlp", "relu6"),
            ("model.positions", "alibi"), ("model.dropout", "1.0"), ("model.dropout", "nan"),
            ("model.init_std", "inf"), ("model.norm_eps", "-1e-5"), ("model.rope_theta", "nan"),
            ("model.param_dtype", "int8"), ("model.remat", "sometimes"),
            ("model.max_seq_len", "0"), ("model.d_model", "wide")]


def _data_bad() -> list[tuple[str, str]]:
    return [("data.seq_len", "1"), ("data.seq_len", "abc"), ("data.batch_size", "0"),
            ("data.batch_size", "6"),  # not a multiple of the 4 devices
            ("data.batch_size", "1.5"), ("data.seed", "-1"), ("data.worker_count", "-2"),
            ("data.num_epochs", "0"), ("data.shuffle", "maybe"), ("data.tokenizer", "bpe:0"),
            ("data.tokenizer", "bpe:abc"), ("data.tokenizer", "wordpiece"),
            ("data.dataset", "no_such_dataset"), ("data.seq_len", "999")]


def cases() -> list[tuple[list[str], str]]:
    """(extra flags, text the error must contain) — the whole seeded population."""
    pool: list[tuple[list[str], str]] = []
    for section, cls in SECTIONS.items():
        if cls is config_lib.ModelConfig:
            continue
        hints = fields.hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("evals",):
                continue
            dotted = f"{section}.{f.name}" if section else f.name
            for v in _bad_values(hints[f.name], f.metadata, f.name):
                pool.append(([f"--config.{dotted}={v}"], f.name))
    for dotted, v in _model_bad() + _data_bad():
        pool.append(([f"--config.{dotted}={v}"], dotted.split(".")[-1]))
    # Mesh values that cannot fit the 4 forced devices, and unknown keys.
    pool += [(["--config.mesh.data=3"], "mesh"), (["--config.mesh.tensor=0"], "mesh.tensor"),
             (["--config.mesh.data=-1", "--config.mesh.fsdp=-1"], "mesh"),
             (["--config.model.d_modle=64"], "d_modle"), (["--config.optimizr.lr=1"], "optimizr"),
             (["--config.steps"], "steps"), (["--learning_rate=3"], "learning_rate"),
             (["--config.microbatches=3"], "microbatches"),
             (["--config.probe_tasks=icl,nope"], "probe_tasks")]
    rng = random.Random(SEED)
    out = []
    for _ in range(N_CASES):
        flags, expect = rng.choice(pool)
        # Mix in a valid override or two, so a bad field is found among good ones.
        keys = {f.split("=")[0] for f in flags}
        good = [g for g in ("--config.seed=3", "--config.log_every=5", "--config.z_loss=0.0",
                            "--config.optimizer.b1=0.8", "--config.eval_batches=1")
                if g.split("=")[0] not in keys]
        noise = rng.sample(good, rng.randint(0, 2))
        mixed = noise + flags
        rng.shuffle(mixed)
        out.append((mixed, expect))
    return out


CASES = cases()


@pytest.mark.parametrize("chunk", range(4))
def test_fuzzed_bad_configs_exit_2_with_one_line_and_write_nothing(chunk, tmp_path, capsys):
    seen = set()
    for i, (flags, expect) in enumerate(CASES[chunk::4]):
        workdir = tmp_path / f"run{i}"
        data_dir = tmp_path / f"data{i}"
        rc = cli_main(["train", f"--config={TINY}:steps=2", f"--workdir={workdir}",
                       f"--config.data.data_dir={data_dir}", *flags])
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert rc == 2, (flags, err, captured.out)
        assert err.startswith("error: ") and "\n" not in err, (flags, err)
        assert expect in err, (flags, expect, err)
        assert not workdir.exists() and not data_dir.exists(), (flags, "wrote files")
        seen.add(tuple(sorted(flags)))
    assert len(seen) > 40  # the draw really varies


@pytest.mark.parametrize("env,expect", [
    ({"SLURM_NTASKS": "two"}, "SLURM_NTASKS"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "5"}, "SLURM_PROCID"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost"}, "JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID"),
    ({"OMPI_COMM_WORLD_SIZE": "-4"}, "OMPI_COMM_WORLD_SIZE"),
])
def test_malformed_cluster_variables_are_one_line(env, expect, tmp_path):
    """Through the real entry point: the variables reach a fresh process as a cluster sets them."""
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax", "train", f"--config={TINY}:steps=2",
         f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'data'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in proc.stderr, lines
    assert not workdir.exists() and not (tmp_path / "data").exists()
