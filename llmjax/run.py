"""Train an experiment with the standard hooks: the Python twin of `llmjax train`.

    from llmjax.config import load_experiment
    from llmjax.run import train
    exp = load_experiment("experiments/configs/lm.py:size=S", ["steps=500"])
    result = train(exp, "runs/lm_s")   # resumes if runs/lm_s has a checkpoint

It sits above train and eval: the loop (llmjax.train.loop) knows nothing of probes, and this
module registers the probe hook (llmjax.eval.train_hook) when the config asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmjax.config import Experiment, parse_experiment
from llmjax.eval.train_hook import probe_hook
from llmjax.train.loop import TrainResult
from llmjax.train.loop import train as _train_loop
from llmjax.train.loop import train_members as _train_members_loop


def train(exp: Experiment | Any, workdir: str, *, hooks: Sequence[Any] = (),
          **kwargs: Any) -> TrainResult:
    """`llmjax.train.loop.train` with the probe hook (for config.probe_checkpoints) added."""
    if not isinstance(exp, Experiment):
        exp = parse_experiment(exp)
    return _train_loop(exp, workdir, hooks=[probe_hook, *hooks], **kwargs)


def train_members(exp: Experiment | Any, workdirs: Sequence[str], *, hooks: Sequence[Any] = (),
                  **kwargs: Any) -> list[TrainResult]:
    """`llmjax.train.loop.train_members` (several seeds as one program) with the probe hook."""
    if not isinstance(exp, Experiment):
        exp = parse_experiment(exp)
    return _train_members_loop(exp, workdirs, hooks=[probe_hook, *hooks], **kwargs)


__all__ = ["train", "train_members"]
