"""Exact resume (subprocesses): SIGKILL at a random step, SIGTERM checkpoint-and-exit, and a
half-written checkpoint skipped. The resumed runs must match an uninterrupted run bitwise."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from llmjax.config import load_config
from llmjax.train.loop import train
from llmjax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
STEPS = 30


def _flags(data_dir: str) -> list[str]:
    return [f"--config.data.data_dir={data_dir}", "--config.log_every=1",
            "--config.checkpoint_every=5", "--config.eval_every=10", "--config.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """The uninterrupted run, in this process on one device, as the subprocesses run."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    overrides = [f.removeprefix("--config.") for f in _flags(data_dir)]
    train(load_config(f"{TINY}:steps={STEPS}", overrides), workdir, progress=False,
          devices=jax.devices()[:1])
    return workdir


def _command(workdir: str, data_dir: str) -> list[str]:
    return [sys.executable, "-m", "llmjax", "train", f"--config={TINY}:steps={STEPS}",
            f"--workdir={workdir}", *_flags(data_dir)]


def _start(workdir: str, data_dir: str) -> subprocess.Popen:
    return subprocess.Popen(_command(workdir, data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _wait_for_step(proc: subprocess.Popen, step: int) -> list[str]:
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step {step}/"):
            return seen
    raise AssertionError(f"process ended before step {step}:\n{''.join(seen[-20:])}")


def _finish(workdir: str, data_dir: str) -> str:
    proc = subprocess.run(_command(workdir, data_dir), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _records(workdir: str) -> list[tuple]:
    return [(r["kind"], r["step"], r["loss"]) for r in read_metrics(workdir)]


def _final_params(workdir: str) -> list[np.ndarray]:
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    restored = ocp.StandardCheckpointer().restore(path)
    return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


def _assert_same_run(workdir: str, reference: str) -> None:
    assert _records(workdir) == _records(reference)  # every logged loss, bitwise
    for a, b in zip(_final_params(workdir), _final_params(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigkill_at_a_random_step_then_resume_is_exact(reference, data_dir, tmp_path):
    kill_at = random.randint(1, STEPS - 5)  # reported in the assertion below on failure
    workdir = str(tmp_path / "killed")
    proc = _start(workdir, data_dir)
    try:
        _wait_for_step(proc, kill_at)
    finally:
        proc.kill()  # SIGKILL: no handler runs, an async save may be cut short
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (kill_at, proc.returncode)
    out = _finish(workdir, data_dir)
    resumed = [ln for ln in out.splitlines() if ln.startswith("resumed from checkpoint")]
    if kill_at >= 10:  # checkpoints every 5 steps: by then one is surely complete
        assert resumed, out[-2000:]
    assert (kill_at, _records(workdir)) == (kill_at, _records(reference))
    _assert_same_run(workdir, reference)


def test_sigterm_saves_exits_0_and_half_written_checkpoints_are_skipped(
        reference, data_dir, tmp_path):
    workdir = str(tmp_path / "preempted")
    proc = _start(workdir, data_dir)
    try:
        _wait_for_step(proc, 12)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    assert "stopped by signal" in out
    ckpt_dir = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    saved = steps[-1]
    assert 12 <= saved < STEPS  # the preemption save (or the periodic one just before it)
    assert f"saved checkpoint at step {saved}" in out

    # Two fakes of a save killed midway, both newer than the real one.
    src = os.path.join(ckpt_dir, str(saved))
    no_marker = os.path.join(ckpt_dir, str(saved + 2))
    shutil.copytree(src, no_marker)
    os.remove(os.path.join(no_marker, "_CHECKPOINT_METADATA"))
    shutil.copytree(src, os.path.join(ckpt_dir, f"{saved + 4}.orbax-checkpoint-tmp-1234567"))

    out = _finish(workdir, data_dir)
    assert f"resumed from checkpoint at step {saved}" in out, out[-2000:]
    _assert_same_run(workdir, reference)
