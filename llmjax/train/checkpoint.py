"""Checkpoints: a thin wrapper over orbax's CheckpointManager.

Layout: `<workdir>/checkpoints/<step>/{state, data, meta}`:
  state  the TrainState pytree (params, optimizer state, step, rng) — orbax StandardSave
  data   the training data iterator's state (JSON) — resume continues at the exact next batch
  meta   {"step", "tokens", ...} (JSON)
Saves are asynchronous (the host keeps training while orbax writes). orbax writes each step into
a `<step>.orbax-checkpoint-tmp-*` directory and renames it when done, so a save killed midway is
never listed; `latest_step()` additionally requires the step's metadata file, so a truncated copy
is skipped too.

Retention: keep the last K, every M-th step forever, and (optionally) log-spaced early steps
0, 1, 2, 4, ..., 512 forever (Pythia-style, for studying training dynamics).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

CHECKPOINT_DIR = "checkpoints"
# orbax writes this file into a step directory as part of finishing it.
_STEP_METADATA = "_CHECKPOINT_METADATA"


def log_spaced_steps(max_step: int, last: int = 512) -> list[int]:
    """0, 1, 2, 4, ..., min(last, max_step): Pythia's log-spaced early checkpoints."""
    steps, s = [0], 1
    while s <= min(last, max_step):
        steps.append(s)
        s *= 2
    return steps


def complete_steps(directory: str) -> list[int]:
    """Steps under `directory` whose checkpoint finished writing, ascending (reads the disk only).

    A finished step is a directory named by its number (orbax renames `<step>.orbax-checkpoint-
    tmp-*` to it when done) holding orbax's metadata file and all three items.
    """
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.isdigit() and os.path.isfile(os.path.join(path, _STEP_METADATA)) and all(
                os.path.isdir(os.path.join(path, item)) for item in ("state", "data", "meta")):
            steps.append(int(name))
    return sorted(steps)


def remove_incomplete(directory: str) -> list[str]:
    """Deletes numbered step directories that never finished (a re-save would collide with them);
    returns their names. Call on one process only, before creating a Checkpointer."""
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


class Checkpointer:
    """Saves/restores (TrainState pytree, data-iterator JSON, meta JSON) by step number."""

    def __init__(self, workdir: str, *, keep_last: int = 2, keep_every: int = 0,
                 keep_steps: Iterable[int] = (), async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
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
                                             item_names=("state", "data", "meta"))

    def complete_steps(self) -> list[int]:
        """Steps whose checkpoint finished writing, ascending."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts an async save of `state` (device arrays) at `step`; returns at once."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        ), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) of `step`; `abstract_state` gives shapes, dtypes, shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        return out["state"], dict(out["data"]), dict(out["meta"])

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
