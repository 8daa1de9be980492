"""`llmjax finetune`: classification heads and LoRA on a pretrained tiny run, through the real
loop, checkpoints and CLI; the embedded sentiment task checked against its own definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score

import llmjax
from llmjax import cli
from llmjax.config import load_config, parse_experiment
from llmjax.data import synthetic
from llmjax.finetune import sentiment
from llmjax.finetune.cli import finetune_config
from llmjax.finetune.task import macro_f1
from llmjax.rundir import read_jsonl
from llmjax.train import checkpoint
from llmjax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "finetune_sentiment.py")
SMALL = ["--config.data.seq_len=64", "--config.data.batch_size=16",
         "--config.finetune.train_examples=256", "--config.finetune.validation_examples=96",
         "--config.eval_every=10", "--config.checkpoint_every=10", "--config.log_every=5",
         "--config.optimizer.warmup_steps=0", "--config.optimizer.schedule=constant"]


def _exp(init_run, *overrides, variant="full"):
    argv = [f"--config={CONFIG}:{variant}", *SMALL, *overrides]
    config = load_config(f"{CONFIG}:{variant}", [*SMALL, *overrides])
    return parse_experiment(finetune_config(config, init_run, argv))


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llmjax", *args], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=600)


# ---------------------------------------------------------------------------- the task


def test_sentiment_labels_follow_the_lexicon_negation_scope_and_held_out_words():
    world = synthetic.build_world(synthetic.SyntheticConfig())
    lex = sentiment.lexicon(world)
    polarity = dict(zip(lex.adjectives, lex.polarity, strict=True))
    heldout = {a for a, h in zip(lex.adjectives, lex.heldout, strict=True) if h}
    assert 0.15 < len(heldout) / len(lex.adjectives) < 0.35
    assert lex.negation not in world.lexicon
    for split in ("train", "validation"):
        rs = sentiment.reviews(world, split, 400)
        labels = np.array([r.label for r in rs])
        assert 0.4 < labels.mean() < 0.6
        for r in rs:
            words = r.text.replace(".", " ").split()
            score, negate, seen_heldout = 0, False, False
            for w in words:  # an independent reading of the definition: NEG flips the next adj
                if w == lex.negation:
                    negate = True
                elif w in polarity:
                    score += -polarity[w] if negate else polarity[w]
                    seen_heldout |= w in heldout
                    negate = False
            assert score != 0 and r.label == int(score > 0), r
            assert r.heldout == seen_heldout
            if split == "train":
                assert not seen_heldout
    assert any(r.heldout for r in sentiment.reviews(world, "validation", 100))


def test_macro_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for labels in (3, 2):
        y, p = rng.integers(0, labels, 200), rng.integers(0, labels, 200)
        assert macro_f1(y, p, labels) == pytest.approx(f1_score(y, p, average="macro"))


# ---------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def classifier(trained_tiny_run, tmp_path_factory):
    """A 20-step full fine-tune of the tiny run, and its half-way-then-resumed twin."""
    base = tmp_path_factory.mktemp("ft")
    exp = _exp(trained_tiny_run, "--config.steps=20")
    full = train(exp, str(base / "full"), progress=False, devices=jax.devices()[:1],
                 return_state=True)
    half = _exp(trained_tiny_run, "--config.steps=10")
    train(half, str(base / "resumed"), progress=False, devices=jax.devices()[:1])
    resumed = train(exp, str(base / "resumed"), progress=False, devices=jax.devices()[:1],
                    allow_changes=["steps"], return_state=True)
    return exp, full, resumed


def test_classification_learns_and_reports_accuracy_and_macro_f1(classifier, trained_tiny_run):
    exp, full, _ = classifier
    evals = [r for r in read_jsonl(os.path.join(full.workdir, "metrics.jsonl"))
             if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20]
    last = evals[-1]
    assert last["examples"] == 96 and 0 <= last["macro_f1"] <= 1
    assert "heldout_accuracy" in last and "majority_baseline" in last
    state = full.state
    assert set(state.params) == {"model", "head"}
    saved = json.load(open(os.path.join(full.workdir, "config.json")))
    assert saved["finetune"]["init_from"] == os.path.abspath(trained_tiny_run)
    assert saved["data"]["tokenizer"].startswith("file:")
    # Full fine-tuning moved the model's matrices (20 Adam steps of lr 3e-3: at most ~20 * lr).
    _, init_params, _ = llmjax.eval.probe.load_params(trained_tiny_run)
    assert jax.tree.structure(init_params) == jax.tree.structure(state.params["model"])
    w0 = np.asarray(init_params["blocks"]["attn"]["wq"])
    w1 = np.asarray(state.params["model"]["blocks"]["attn"]["wq"])
    assert 0 < np.abs(w1 - w0).max() <= 20 * exp.optimizer.lr * 1.5


def test_resumed_classifier_reproduces_the_uninterrupted_run(classifier):
    _, full, resumed = classifier
    assert resumed.resumed_from == 10
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lora_trains_only_adapters_and_loads_merged(trained_tiny_run, tmp_path):
    exp = _exp(trained_tiny_run, "--config.steps=10", "--config.finetune.lora_rank=4",
               variant="lora")
    result = train(exp, str(tmp_path / "lora"), progress=False, devices=jax.devices()[:1],
                   return_state=True)
    params = result.state.params
    _, init_params, _ = llmjax.eval.probe.load_params(trained_tiny_run)
    for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(params["model"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the base is frozen
    wq = params["lora"]["blocks/attn/wq"]
    assert wq["a"].shape == (2, 64, 4) and wq["b"].shape == (2, 4, 64)
    assert float(np.abs(np.asarray(wq["b"])).max()) > 0  # B left zero-init: it trained
    # The optimizer keeps no moments for the frozen model.
    opt_leaves = sum(np.size(x) for x in jax.tree.leaves(result.state.opt_state))
    assert opt_leaves < sum(np.size(x) for x in jax.tree.leaves(init_params))
    # llmjax.load gives the merged model: W + alpha/r A B.
    model, _ = llmjax.load(result.workdir)
    scale = exp.finetune.lora_alpha / exp.finetune.lora_rank
    w = np.asarray(init_params["blocks"]["attn"]["wq"])
    merged = w + scale * np.einsum("lir,lro->lio", wq["a"], wq["b"]).reshape(w.shape)
    np.testing.assert_allclose(np.asarray(model.params["blocks"]["attn"]["wq"]), merged,
                               rtol=1e-6, atol=1e-6)


def test_causal_lm_finetune_on_user_jsonl_then_generate(trained_tiny_run, tmp_path):
    corpus = tmp_path / "notes.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"note {i}: the kettle sings at dawn."}) + "\n"
                              for i in range(300)))
    out = _cli("finetune", f"--config={CONFIG}", f"--init_from={trained_tiny_run}",
               f"--workdir={tmp_path / 'lm'}", "--config.finetune.task=lm",
               "--config.data.seq_len=64", "--config.data.batch_size=8",
               "--config.steps=10", "--config.eval_every=10", "--config.eval_batches=1",
               "--config.data.dataset=text_files", f"--config.data.source={corpus}",
               f"--config.data.data_dir={tmp_path / 'data'}", "--config.finetune.lora_rank=2",
               "--config.tensorboard=False")
    assert out.returncode == 0, out.stderr[-2000:]
    evals = [r for r in read_jsonl(str(tmp_path / "lm" / "metrics.jsonl")) if r["kind"] == "eval"]
    assert evals and np.isfinite(evals[-1]["loss"])
    assert checkpoint.saved_steps(str(tmp_path / "lm")) == [10]
    gen = _cli("generate", f"--workdir={tmp_path / 'lm'}", "--prompt=note 7:",
               "--max_new_tokens=8", "--temperature=0")
    assert gen.returncode == 0, gen.stderr[-2000:]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["label", "vocabulary", "lora_target"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, trained_tiny_run, tmp_path,
                                                         capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "good", "label": 1}) + "\n"
                    + json.dumps({"text": "bad", "label": 5}) + "\n")
    flags = {"label": [f"--config.finetune.dataset=jsonl:{data},{data}"],
             "vocabulary": ["--config.data.tokenizer=bpe:300"],
             "lora_target": ["--config.finetune.lora_targets=wq,w_nope"]}[case]
    workdir = tmp_path / "new"
    capsys.readouterr()
    rc = cli.main(["finetune", f"--config={CONFIG}", f"--init_from={trained_tiny_run}",
                   f"--workdir={workdir}", *SMALL, *flags])  # the console entry point, in-process
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    expected = {"label": f"{data}:2: label=5 is outside [0, 2)", "vocabulary": "bpe:300",
                "lora_target": "w_nope"}[case]
    assert expected in lines[0]
    assert not workdir.exists()
