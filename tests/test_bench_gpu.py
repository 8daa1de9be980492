"""experiments/bench/gpu.sh --smoke: the GPU benchmark's whole code path on CPU at toy sizes.

Run through the bash wrapper in a subprocess whose interpreter refuses grain, tensorflow,
tensorflow_datasets and array_record (a sitecustomize meta-path finder), as on the GPU image,
which lacks them. Checks that the JSON has every field with sane values; no speed assertions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_SH = os.path.join(REPO, "experiments", "bench", "gpu.sh")
BLOCKED = ("grain", "tensorflow", "tensorflow_datasets", "array_record")

SITECUSTOMIZE = textwrap.dedent(f"""
    import atexit, importlib.abc, json, os, sys
    BLOCKED = {BLOCKED!r}
    ATTEMPTS = []
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append(name)
                raise ImportError("blocked by test_bench_gpu: " + name)
    sys.meta_path.insert(0, Block())
    def report():
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        path = os.path.join(os.environ["BLOCK_REPORT_DIR"], "blocked_%d.json" % os.getpid())
        with open(path, "w") as f:
            json.dump({{"argv": sys.argv, "attempts": ATTEMPTS, "loaded": loaded}}, f)
    atexit.register(report)
""")


def _finite_positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_bench_smoke(tmp_path):
    block_dir = tmp_path / "block"
    block_dir.mkdir()
    (block_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "out"
    # Not the session's persistent XLA cache either (conftest): jax reaches it through etils'
    # epath, which tries to import tensorflow; the benchmark on its GPU machine runs without it.
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("JAX_PERSISTENT_CACHE")
           and k != "JAX_COMPILATION_CACHE_DIR"}
    # XLA's CPU backend at -O0 compiles the toy step about twice as fast; the Python path is
    # unchanged (the flag only affects CPU code generation).
    env.update(PYTHON=sys.executable, OUT=str(out), PYTHONPATH=str(block_dir),
               XLA_FLAGS="--xla_backend_optimization_level=0",
               BLOCK_REPORT_DIR=str(tmp_path), JAX_PLATFORMS="cpu",
               BENCH_WHEELS=str(tmp_path / "no_wheels"))
    proc = subprocess.run(["bash", GPU_SH, "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| L | d_model |" in proc.stdout  # the markdown table
    result = json.loads((out / "gpu_bench.json").read_text())
    assert (out / "gpu_bench.md").exists() and (out / "gpu_bench.log").exists()

    # Nothing imported (or tried to import) the data-pipeline stack, in any interpreter.
    reports = [json.loads(p.read_text()) for p in tmp_path.glob("blocked_*.json")]
    assert any("gpu_mfu.py" in " ".join(r["argv"]) for r in reports)
    for r in reports:
        assert r["attempts"] == [] and r["loaded"] == [], r
    assert result["forbidden_modules_loaded"] == [] and result["blocked_import_attempts"] == []

    meta = result["meta"]
    assert result["smoke"] is True and "error" not in result
    for name in ("jax", "jaxlib", "flax", "optax", "ml-collections"):
        assert meta["versions"][name], name
    assert meta["platform"] == "cpu" and meta["attention"]["used"] == "xla"
    assert _finite_positive(meta["peak_tflops"]) and meta["peak_label"] and meta["peak_source"]

    (row,) = result["sizes"]
    assert "error" not in row, row
    assert (row["depth"], row["d_model"], row["n_layers"], row["head_dim"]) == (2, 128, 2, 128)
    assert (row["seq"], row["vocab"], row["remat"], row["compute_dtype"]) == (
        128, 512, "dots", "bfloat16")
    assert row["n_non_embedding"] == row["n_formula_scaling_gpu"]
    assert row["n_total"] > row["n_non_embedding"]
    assert row["steps_timed"] == 2 and len(row["step_s_all"]) == 2
    for key in ("step_s_median", "step_s_min", "step_s_max", "tokens_per_s", "compile_s",
                "lower_s", "mfu_with_attention", "mfu_without_attention",
                "tflops_per_s_with_attention", "tflops_per_s_without_attention",
                "flops_per_token_with_attention", "flops_per_token_without_attention",
                "loss_first", "loss_last"):
        assert _finite_positive(row[key]), (key, row[key])
    assert row["step_s_min"] <= row["step_s_median"] <= row["step_s_max"]
    assert row["flops_per_token_with_attention"] > row["flops_per_token_without_attention"]
    assert row["mfu_with_attention"] > row["mfu_without_attention"]
    assert math.isclose(row["tokens_per_s"], row["tokens_per_step"] / row["step_s_median"])
    assert row["finite"] is True
    assert abs(row["loss_first"] - math.log(512)) < 1.5  # random init: near ln(vocab)
    mem = row["memory_bytes"]
    for key in ("argument", "output", "alias", "temp"):
        assert isinstance(mem[key], int) and mem[key] >= 0, key
    assert mem["argument"] > 0 and mem["temp"] > 0
    assert mem["peak_estimate"] == mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]

    depths = result["compile_vs_depth"]
    assert [c["n_layers"] for c in depths] == [2, 4]
    assert all(_finite_positive(c["compile_s"]) and c["d_model"] == 128 for c in depths)


def _load_gpu_mfu():
    import importlib.util

    path = os.path.join(REPO, "experiments", "bench", "gpu_mfu.py")
    spec = importlib.util.spec_from_file_location("gpu_mfu_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
