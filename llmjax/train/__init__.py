"""Training: the jitted step, AdamW, checkpoints, the loop, `llmjax train` and `llmjax info`.

From Python (with the probe hook as well: `llmjax.run.train`):

    from llmjax.config import load_experiment
    from llmjax.train import train, read_metrics
    exp = load_experiment("experiments/configs/lm.py:size=S", ["steps=500"])
    result = train(exp, "runs/lm_s")             # resumes if runs/lm_s has a checkpoint
    evals = read_metrics("runs/lm_s", kind="eval")

Heavy modules (jax, orbax) load on first use of `train`, so `import llmjax.train` stays cheap.
"""

from __future__ import annotations

from typing import Any

from llmjax.train.metrics import read_metrics


def train(config: Any, workdir: str, **kwargs: Any) -> Any:
    """See `llmjax.train.loop.train`."""
    from llmjax.train.loop import train as _train

    return _train(config, workdir, **kwargs)


__all__ = ["read_metrics", "train"]
