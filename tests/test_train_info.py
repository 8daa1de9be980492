"""`llmjax info`: parameter counts, FLOPs/token and the compiled step's memory, without training."""

from __future__ import annotations

import json
import math
import os

from llmjax.cli import main as cli_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


def _tiny_param_count(vocab: int, d: int, layers: int) -> int:
    """Hand count for tiny.py's architecture: tied embedding, RoPE, SwiGLU, RMSNorm, no biases."""
    d_ff = 32 * math.ceil(8 * d / 3 / 32)
    attention = 4 * d * d
    mlp = 3 * d * d_ff
    norms = 2 * d
    return vocab * d + layers * (attention + mlp + norms) + d  # + final norm


def test_info_json_counts_flops_and_memory(tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # writes nothing: the directory stays empty
    try:
        rc = cli_main(["info", f"--config={TINY}", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                       "--json"])
    finally:
        os.chdir(cwd)
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    total = _tiny_param_count(vocab=259, d=64, layers=2)
    assert info["params"]["total"] == total
    assert info["params"]["embedding"] == 259 * 64
    fpt = info["flops_per_token"]
    assert fpt["training"] == fpt["dense_6n"] + fpt["attention"]
    assert fpt["dense_6n"] == 6 * (total - 259 * 64 - 5 * 64 + 64 * 259)  # matmuls + unembedding
    assert info["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    mem = info["memory"]
    # Params + two Adam moments in float32 are arguments, sharded over fsdp=2 at most.
    assert mem["argument_size_in_bytes"] >= 3 * 4 * total // 2
    assert mem["total_bytes"] >= mem["argument_size_in_bytes"]
    assert os.listdir(tmp_path) == []


def test_info_text_output_and_config_error(capsys):
    assert cli_main(["info", f"--config={TINY}"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "FLOPs/token" in out and "compiled step" in out
    assert cli_main(["info", f"--config={TINY}", "--config.model.n_heads=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "model.d_model" in err and "\n" not in err
