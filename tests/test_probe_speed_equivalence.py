"""The probe stage's speed-ups change no record: the jitted induction probe equals the eager one,
compiled scoring programs are reused across checkpoints and runs of one model shape (counted by
jax's own jit caches), and one `llmjax probe` call over several runs writes what one call per
run writes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx

from llmjax.data.tokenizer import ByteTokenizer
from llmjax.eval import icl, probe
from llmjax.model import ModelConfig, Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_jitted_prefix_matching_equals_the_eager_probe(scan_layers):
    tok = ByteTokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=2, n_heads=2,
                      max_seq_len=32, scan_layers=scan_layers)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    pool = probe.induction_pool(tok)
    eager = icl.prefix_matching_scores(model, tok.vocab_size, 8, 4, 3, tokens=pool,
                                       bos_id=tok.bos_id)
    batch = icl.repeated_random_tokens(pool, 8, 4, 3, tok.bos_id)
    graphdef, params = nnx.split(model)
    probs = np.asarray(probe._attention_weights(graphdef, params, batch))
    jitted = icl.prefix_matching_from_attention(probs, batch[:, 1:9], 1)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory):
    import jax

    from llmjax.config import load_config
    from llmjax.train import train

    base = tmp_path_factory.mktemp("multi_run")
    config = load_config(os.path.join(REPO, "experiments", "configs", "tiny.py"), [
        f"data.data_dir={base / 'data'}", "steps=4", "checkpoint_every=2",
        "keep_checkpoints=2", "eval_every=0", "tensorboard=False"])
    train(config, str(base / "run"), progress=False, devices=jax.devices()[:1])
    return base


def _records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "probes.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_one_call_over_several_runs_writes_what_one_call_per_run_writes(two_checkpoint_run):
    from llmjax.cli import main

    base = two_checkpoint_run
    runs = {}
    for name in ("a", "b", "c"):  # three copies of one run: one model shape
        runs[name] = str(base / name)
        shutil.copytree(base / "run", runs[name])
    args = ["--all_steps", "--tasks=copy,icl,induction,perplexity", "--quiet"]
    assert main(["probe", f"--workdir={runs['a']}", *args]) == 0
    compiled = probe.compiled_programs()
    assert main(["probe", f"--workdir={runs['b']},{runs['c']}", *args]) == 0
    # Two more runs of the same shape, two checkpoints each: nothing new compiled.
    assert probe.compiled_programs() == compiled
    assert {r["step"] for r in _records(runs["a"])} == {2, 4}
    assert _records(runs["b"]) == _records(runs["a"])
    assert _records(runs["c"]) == _records(runs["a"])
