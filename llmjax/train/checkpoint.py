"""Checkpoints: a thin wrapper over orbax's CheckpointManager, and the one module that spells a
checkpoint's paths (other modules use `saved_steps`, `read_meta`, `restore_params`).

Layout: `<workdir>/checkpoints/<step>/{state, data, meta}` (`rundir.CHECKPOINTS`):
  state  the TrainState pytree (params, optimizer state, step, rng) — orbax StandardSave
  data   the training data iterator's state (JSON) — resume continues at the exact next batch
  meta   {"step", "tokens", ...} (JSON, in `meta/metadata`, the file name fixed by `JSON_FILE`)
Saves are asynchronous (the host keeps training while orbax writes).

Complete: a step directory counts as a checkpoint (`is_complete`, `complete_steps`) when
  1. its name is the step number and orbax calls it finalized (`ocp.utils.is_checkpoint_finalized`,
     public: orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when every
     item is written, so a save killed midway is never a finalized step directory), and
  2. it holds all three items, and its `meta` item reads as a JSON object whose "step" is the
     directory's step (our own marker: a truncated copy, a copy under another name, or a
     damaged meta is not complete).
Nothing here depends on orbax's private file names (e.g. `_CHECKPOINT_METADATA`).

Complete is not the same as restorable: array files may still be damaged. `restore_latest` tries
complete steps newest first, says why one does not restore and falls back to the previous one;
the damaged steps newer than the one restored are renamed `<step>.damaged` (kept for inspection,
out of the way of the re-save at that step and of retention).

Retention: keep the last K, every M-th step forever, and (optionally) log-spaced early steps
0, 1, 2, 4, ..., 512 forever (Pythia-style, for studying training dynamics).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from llmjax import rundir
from llmjax.errors import UserError

STATE, DATA, META = "state", "data", "meta"
ITEMS = (STATE, DATA, META)
# File name of a JSON item inside its item directory. Set explicitly on the handlers (it is the
# name orbax's JsonCheckpointHandler defaults to, so checkpoints written before still read).
JSON_FILE = "metadata"
DAMAGED_SUFFIX = ".damaged"


def log_spaced_steps(max_step: int, last: int = 512) -> list[int]:
    """0, 1, 2, 4, ..., min(last, max_step): Pythia's log-spaced early checkpoints."""
    steps, s = [0], 1
    while s <= min(last, max_step):
        steps.append(s)
        s *= 2
    return steps


def checkpoints_dir(workdir: str) -> str:
    """The absolute checkpoints folder of run directory `workdir`."""
    return os.path.join(os.path.abspath(workdir), rundir.CHECKPOINTS)


def step_dir(workdir: str, step: int) -> str:
    """The directory of `step`'s checkpoint in run directory `workdir` (may not exist)."""
    return os.path.join(checkpoints_dir(workdir), str(int(step)))


def _read_json_item(path: str) -> Any:
    """The JSON value of the item directory `path`; raises OSError/ValueError when unreadable."""
    with open(os.path.join(path, JSON_FILE)) as f:
        return json.load(f)


def is_complete(path: str) -> bool:
    """`path` (a `<checkpoints>/<step>` directory) is a complete checkpoint (module docstring)."""
    name = os.path.basename(os.path.normpath(path))
    if not name.isdigit() or not os.path.isdir(path):
        return False
    if not all(os.path.isdir(os.path.join(path, item)) for item in ITEMS):
        return False
    try:
        if not ocp.utils.is_checkpoint_finalized(path):
            return False
        meta = _read_json_item(os.path.join(path, META))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("step") == int(name)


def complete_steps(directory: str) -> list[int]:
    """Steps under checkpoints folder `directory` that are complete (module docstring),
    ascending. Reads the disk only (no orbax manager)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and is_complete(os.path.join(directory, name)))


def saved_steps(workdir: str) -> list[int]:
    """Complete checkpoint steps of run directory `workdir`, ascending."""
    return complete_steps(checkpoints_dir(workdir))


def read_meta(workdir: str, step: int) -> dict[str, Any]:
    """The meta record ({"step", "tokens", ...}) of `step`'s checkpoint in run `workdir`;
    UserError naming the file when it is missing, damaged or of another step."""
    path = os.path.join(step_dir(workdir, step), META, JSON_FILE)
    meta = rundir.read_json_file(path, "checkpoint meta file")
    if meta is None:
        raise UserError(f"{path}: no checkpoint meta file (no complete checkpoint at step "
                        f"{step})")
    if not isinstance(meta, dict) or meta.get("step") != int(step):
        raise UserError(f"{path}: checkpoint meta file is not a JSON object of step {step}")
    return meta


def _one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or "no message"
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def restore_params(workdir: str, step: int, abstract_params: Any) -> Any:
    """The `params` subtree of `step`'s saved TrainState in run `workdir` (orbax partial restore:
    nothing else is read). `abstract_params`: the params tree of jax.ShapeDtypeStructs (with
    shardings: where the arrays go) or arrays.

    A bare orbax checkpointer, no CheckpointManager: probing a run that is still training does
    not disturb its in-flight saves. UserError when the step is not complete or does not restore.
    """
    path = step_dir(workdir, step)
    if not is_complete(path):
        raise UserError(f"{path}: no complete checkpoint at step {step}")
    target = {"params": abstract_params}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.join(path, STATE), args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
    except Exception as e:  # damaged files, a tree that does not match: one line for the CLI
        reason = _one_line(e)
        with _quiet_failed_restore():
            del e
        raise UserError(f"{path}: checkpoint step {step} does not restore ({reason})") from None
    return restored["params"]


def remove_incomplete(directory: str) -> list[str]:
    """Deletes numbered step directories that are not complete (a re-save would collide with
    them); returns their names. Call on one process only, before creating a Checkpointer."""
    import shutil

    if not os.path.isdir(directory):
        return []
    done = set(complete_steps(directory))
    removed = []
    for name in sorted(os.listdir(directory)):
        if name.isdigit() and int(name) not in done:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _quiet_failed_restore() -> Iterator[None]:
    """A restore that fails leaves orbax's other read tasks with unretrieved exceptions, which
    asyncio logs when they are collected (pages of tensorstore specs per damaged array): collect
    them here, with asyncio's logger quiet. Our one-line reason says what went wrong."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        gc.collect()
        logger.setLevel(level)


def _handler_registry() -> Any:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state = ocp.StandardCheckpointHandler()
    registry.add(STATE, ocp.args.StandardSave, state)
    registry.add(STATE, ocp.args.StandardRestore, state)
    for item in (DATA, META):
        handler = ocp.JsonCheckpointHandler(filename=JSON_FILE)
        registry.add(item, ocp.args.JsonSave, handler)
        registry.add(item, ocp.args.JsonRestore, handler)
    return registry


def _all_processes_ok(error: str | None) -> str | None:
    """Single process: `error`. Several: None only when every process restored the step (each
    reads its own shards, so damage may show on one process only)."""
    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils

    oks = multihost_utils.process_allgather(np.int32(error is None))
    if bool(np.all(np.asarray(oks))):
        return None
    return error or "it does not restore on another process"


class Checkpointer:
    """Saves/restores (TrainState pytree, data-iterator JSON, meta JSON) by step number."""

    def __init__(self, workdir: str, *, keep_last: int = 2, keep_every: int = 0,
                 keep_steps: Iterable[int] = (), async_save: bool = True):
        self.directory = checkpoints_dir(workdir)
        policies: list[Any] = [cm.LatestN(n=keep_last)]
        if keep_every > 0:
            policies.append(cm.EveryNSteps(interval_steps=keep_every))
        keep_steps = sorted(set(keep_steps))
        if keep_steps:
            policies.append(cm.CustomSteps(steps=keep_steps))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies=policies),
            enable_async_checkpointing=async_save,
            # We decide when to save (the loop calls save with force=True).
            save_interval_steps=1,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             handler_registry=_handler_registry())

    def complete_steps(self) -> list[int]:
        """Complete steps (module docstring), ascending."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts an async save of `state` (device arrays) at `step`; returns at once.
        `meta` must hold "step": step (it marks the checkpoint complete)."""
        meta = {**meta, "step": int(step)}
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            DATA: ocp.args.JsonSave(data_state),
            META: ocp.args.JsonSave(meta),
        }), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) of `step`; `abstract_state` gives shapes, dtypes, shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract_state),
            DATA: ocp.args.JsonRestore(),
            META: ocp.args.JsonRestore(),
        }))
        data, meta = out[DATA], out[META]
        if not isinstance(data, dict) or not isinstance(meta, dict):
            raise ValueError(f"data/meta items are not JSON objects ({type(data).__name__}, "
                             f"{type(meta).__name__})")
        return out[STATE], dict(data), dict(meta)

    def restore_latest(self, abstract_state: Any, say: Callable[[str], Any] = print
                       ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, meta) of the newest complete step that restores; None when
        there is no complete step.

        A step that raises while restoring (damaged array files, bad JSON) is reported through
        `say` and the previous one is tried; once one restores, the damaged newer steps are
        renamed `<step>.damaged` (so the run can save those steps again). UserError naming the
        directory when no complete step restores (then nothing is renamed).
        """
        steps = self.complete_steps()
        if not steps:
            return None
        failed: list[tuple[int, str]] = []
        for i, step in enumerate(reversed(steps)):
            try:
                state, data_state, meta = self.restore(step, abstract_state)
                error = None
            except Exception as e:  # any damage: fall back, the reason is reported
                error = _one_line(e)
                with _quiet_failed_restore():
                    del e
            error = _all_processes_ok(error)
            if error is None:
                self.set_aside([s for s, _ in failed], say)
                return step, state, data_state, meta
            failed.append((step, error))
            if i + 1 < len(steps):
                say(f"checkpoint step {step} in {self.directory} does not restore ({error}); "
                    "trying the previous one")
        reasons = "; ".join(f"step {s}: {e}" for s, e in failed[:4])
        more = f"; and {len(failed) - 4} more" if len(failed) > 4 else ""
        raise UserError(f"{self.directory}: none of the {len(steps)} complete checkpoint(s) "
                        f"restores ({reasons}{more}); use a new workdir or repair/remove them")

    def set_aside(self, steps: list[int], say: Callable[[str], Any], suffix: str = DAMAGED_SUFFIX,
                  why: str = "damaged") -> None:
        """Renames step directories to `<step><suffix>[.N]` (default `.damaged`), which neither
        orbax nor `complete_steps` lists, and refreshes the manager's list of steps."""
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                src = os.path.join(self.directory, str(step))
                dst, n = src + suffix, 1
                while os.path.exists(dst):
                    dst, n = f"{src}{suffix}.{n}", n + 1
                os.rename(src, dst)
                say(f"set aside {why} checkpoint step {step} as {dst}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("llmjax: damaged checkpoints set aside")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
