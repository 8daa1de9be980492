"""Checkpoint retention: last K, every M-th step forever, Pythia-style log-spaced early steps."""

from __future__ import annotations

import os

import jax

from llmjax.config import load_config
from llmjax.train.checkpoint import complete_steps, log_spaced_steps
from llmjax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


def test_log_spaced_steps():
    assert log_spaced_steps(20) == [0, 1, 2, 4, 8, 16]
    assert log_spaced_steps(10_000)[-1] == 512


def test_retention_keeps_last_k_every_m_and_log_spaced(tmp_path):
    config = load_config(TINY, [f"data.data_dir={tmp_path / 'data'}", "steps=20",
                                "checkpoint_every=3", "keep_checkpoints=2", "keep_every=6",
                                "log_spaced_checkpoints=True", "eval_every=0", "log_every=5"])
    workdir = str(tmp_path / "run")
    train(config, workdir, progress=False, devices=jax.devices()[:1])
    kept = complete_steps(os.path.join(workdir, "checkpoints"))
    # Saved: log-spaced {0,1,2,4,8,16}, every 3rd step, the last step (20).
    last_two = {18, 20}
    every_6th = {0, 6, 12, 18}
    log_spaced = {0, 1, 2, 4, 8, 16}
    assert set(kept) == last_two | every_6th | log_spaced, kept
