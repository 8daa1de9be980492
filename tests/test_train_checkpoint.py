"""Checkpoints: retention (last K, every M-th step, Pythia-style log-spaced early steps), what
counts as complete, restore falling back past damaged steps, meta / params readers."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llmjax.config import load_config
from llmjax.errors import UserError
from llmjax.model import ModelConfig, Transformer
from llmjax.train.checkpoint import (
    JSON_FILE,
    Checkpointer,
    checkpoints_dir,
    complete_steps,
    is_complete,
    log_spaced_steps,
    read_meta,
    remove_incomplete,
    restore_params,
    saved_steps,
    step_dir,
)
from llmjax.train.loop import train
from llmjax.train.step import TrainState

# A damaged checkpoint fails inside orbax's concurrent reads; tensorstore's other pending reads
# then complete into a closed event loop ("Event loop is closed", raised on tensorstore threads).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

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


# --------------------------------------------------------------------------- completeness, fallback


def _tiny_state(offset: float) -> TrainState:
    """A real TrainState: a 2-layer Transformer's params and AdamW state, shifted by `offset`
    so every saved step holds different values."""
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, max_seq_len=8)
    _, params, _ = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    params = jax.tree.map(lambda x: x + offset, nnx.to_pure_dict(params))
    opt_state = optax.adamw(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + offset if x.dtype == jnp.float32 else x, opt_state)
    return TrainState(step=jnp.int32(int(offset)), params=params, opt_state=opt_state,
                      rng=jax.random.PRNGKey(int(offset)))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


@pytest.fixture(scope="module")
def saved_states():
    return {s: _tiny_state(float(s)) for s in (1, 2, 3)}


def _save_run(workdir: str, states: dict[int, TrainState]) -> Checkpointer:
    ckpt = Checkpointer(workdir, keep_last=10)
    for step, state in states.items():
        ckpt.save(step, state.as_dict(), {"position": step}, {"step": step, "tokens": 10 * step})
    ckpt.wait()
    return ckpt


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _state_files(step_path: str) -> list[str]:
    """The array data files orbax wrote for the `state` item (OCDBT data files under d/)."""
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_path, "state"))
             for f in names if os.path.basename(root) == "d"]
    assert files, os.listdir(os.path.join(step_path, "state"))
    return files


def test_complete_needs_a_finalized_dir_all_items_and_a_meta_of_its_step(tmp_path, saved_states):
    workdir = str(tmp_path / "run")
    _save_run(workdir, {1: saved_states[1]}).close()
    directory = checkpoints_dir(workdir)
    src = os.path.join(directory, "1")
    assert complete_steps(directory) == [1] and saved_steps(workdir) == [1]
    # A half-written save: orbax's temporary name, never renamed.
    shutil.copytree(src, os.path.join(directory, "7.orbax-checkpoint-tmp-1234567"))
    # A copy under another step's name: its meta says step 1.
    shutil.copytree(src, os.path.join(directory, "5"))
    # Missing items.
    for step, item in ((6, "data"), (8, "state"), (9, "meta")):
        shutil.copytree(src, os.path.join(directory, str(step)))
        shutil.rmtree(os.path.join(directory, str(step), item))
    # Garbage meta JSON, and a meta that is not an object.
    for step, text in ((10, "{not json"), (11, "[10]")):
        path = os.path.join(directory, str(step))
        shutil.copytree(src, path)
        with open(os.path.join(path, "meta", JSON_FILE), "w") as f:
            f.write(text)
    # orbax's private marker is not what decides: removing it changes nothing.
    marked = os.path.join(directory, "12")
    shutil.copytree(src, marked)
    with open(os.path.join(marked, "meta", JSON_FILE), "w") as f:
        json.dump({"step": 12, "tokens": 120}, f)
    if os.path.exists(os.path.join(marked, "_CHECKPOINT_METADATA")):
        os.remove(os.path.join(marked, "_CHECKPOINT_METADATA"))

    assert complete_steps(directory) == [1, 12]
    assert not is_complete(os.path.join(directory, "7.orbax-checkpoint-tmp-1234567"))
    assert sorted(remove_incomplete(directory)) == ["10", "11", "5", "6", "8", "9"]
    assert complete_steps(directory) == [1, 12]


def test_restore_latest_falls_back_past_damaged_array_files(tmp_path, saved_states):
    workdir = str(tmp_path / "run")
    ckpt = _save_run(workdir, saved_states)
    newest = os.path.join(ckpt.directory, "3")
    for i, path in enumerate(_state_files(newest)):
        if i % 2:  # garble half of them, truncate the others
            with open(path, "r+b") as f:
                f.write(os.urandom(os.path.getsize(path)))
        else:
            os.truncate(path, 7)
    said = []
    step, state, data_state, meta = ckpt.restore_latest(
        _abstract(saved_states[2].as_dict()), say=said.append)
    assert (step, data_state, meta) == (2, {"position": 2}, {"step": 2, "tokens": 20})
    _assert_trees_equal(state, saved_states[2].as_dict())
    assert said[0].startswith(f"checkpoint step 3 in {ckpt.directory} does not restore (")
    assert said[0].endswith("); trying the previous one") and "\n" not in said[0]
    assert said[1] == f"set aside damaged checkpoint step 3 as {newest}.damaged"
    # The damaged step is out of the way: step 3 can be saved again, and then it is the latest.
    assert ckpt.complete_steps() == [1, 2] and os.path.isdir(newest + ".damaged")
    ckpt.save(3, saved_states[3].as_dict(), {"position": 3}, {"step": 3, "tokens": 30})
    ckpt.wait()
    step, state, _, _ = ckpt.restore_latest(_abstract(saved_states[3].as_dict()))
    assert step == 3
    _assert_trees_equal(state, saved_states[3].as_dict())
    ckpt.close()


def test_restore_latest_skips_garbage_meta_and_falls_back_past_garbage_data(
        tmp_path, saved_states):
    workdir = str(tmp_path / "run")
    ckpt = _save_run(workdir, saved_states)
    with open(os.path.join(ckpt.directory, "3", "meta", JSON_FILE), "w") as f:
        f.write('{"step": 3, "tok')  # torn meta: step 3 is not complete at all
    with open(os.path.join(ckpt.directory, "2", "data", JSON_FILE), "w") as f:
        f.write("\x00garbage")  # complete, but its data state does not restore
    said = []
    step, state, data_state, meta = ckpt.restore_latest(
        _abstract(saved_states[1].as_dict()), say=said.append)
    assert (step, data_state, meta) == (1, {"position": 1}, {"step": 1, "tokens": 10})
    _assert_trees_equal(state, saved_states[1].as_dict())
    assert len(said) == 2 and said[0].startswith("checkpoint step 2 in ")
    assert "does not restore (JSONDecodeError" in said[0]
    ckpt.close()


def test_restore_latest_none_without_steps_and_user_error_when_none_restores(
        tmp_path, saved_states):
    ckpt = Checkpointer(str(tmp_path / "empty"))
    assert ckpt.restore_latest(_abstract(saved_states[1].as_dict())) is None
    ckpt.close()

    ckpt = _save_run(str(tmp_path / "run"), {1: saved_states[1], 2: saved_states[2]})
    for step in (1, 2):
        for path in _state_files(os.path.join(ckpt.directory, str(step))):
            os.truncate(path, 0)
    said = []
    with pytest.raises(UserError) as info:
        ckpt.restore_latest(_abstract(saved_states[1].as_dict()), say=said.append)
    message = str(info.value)
    assert message.startswith(f"{ckpt.directory}: none of the 2 complete checkpoint(s) restores")
    assert "step 2: " in message and "step 1: " in message and "\n" not in message
    assert len(said) == 1  # step 2 -> trying step 1; nothing is said after the oldest
    assert ckpt.complete_steps() == [1, 2]  # nothing set aside when nothing restores
    ckpt.close()


def test_read_meta_and_restore_params(tmp_path, saved_states):
    workdir = str(tmp_path / "run")
    _save_run(workdir, saved_states).close()
    assert read_meta(workdir, 2) == {"step": 2, "tokens": 20}
    params = restore_params(workdir, 2, _abstract(saved_states[2].params))
    _assert_trees_equal(params, saved_states[2].params)
    assert jax.tree.structure(params) == jax.tree.structure(saved_states[2].params)

    with pytest.raises(UserError, match="no checkpoint meta file"):
        read_meta(workdir, 4)
    with pytest.raises(UserError, match="no complete checkpoint at step 4"):
        restore_params(workdir, 4, _abstract(saved_states[2].params))
    with open(os.path.join(step_dir(workdir, 1), "meta", JSON_FILE), "w") as f:
        f.write("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        read_meta(workdir, 1)
    for path in _state_files(step_dir(workdir, 3)):
        os.truncate(path, 3)
    with pytest.raises(UserError, match="checkpoint step 3 does not restore"):
        restore_params(workdir, 3, _abstract(saved_states[3].params))
