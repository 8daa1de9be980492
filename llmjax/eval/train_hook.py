"""The probe hook: the probe suite on the in-memory parameters right after each checkpoint save.

Registered from above (`llmjax.run.train`, `llmjax train`) so the training loop never imports
eval. Probing reads the parameters only (no RNG, no data), so a run's losses and parameters are
those of the same run without it. Records are merged into probes.jsonl; the cost goes to
metrics.jsonl as {"kind": "probe", "step", "seconds", "records"}.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from llmjax.distributed import decided_by_process_0
from llmjax.eval.probe import probe_params, read_probes, resolve_evals
from llmjax.finetune import params as ft_params
from llmjax.train.loop import Hook, Loop


def _gather_to_host(tree: Any) -> Any:
    """Full numpy copies of a pytree of global arrays on every process (a collective)."""
    import jax
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(x) if x.is_fully_addressable
                        else multihost_utils.process_allgather(x), tree)


def missing_probes(loop: Loop, step: int, tasks: list[str] | None) -> list[str]:
    """Probes of the training suite (restricted to `tasks`) with no record at `step` yet."""
    wanted = list(resolve_evals(loop.exp.evals, tasks))
    done = {r.get("task") for r in read_probes(loop.run.path) if r.get("step") == step}
    return [t for t in wanted if t not in done]


def probe(loop: Loop, tasks: list[str] | None) -> None:
    """The suite (restricted to `tasks`) on loop.state.params at loop.step."""
    t0 = time.perf_counter()
    params = ft_params.model_params(loop.state.params, loop.exp.finetune)
    if loop.process_count > 1:  # a collective: every process takes part, process 0 alone probes
        params = _gather_to_host(params)
    records = []
    if loop.primary:
        records = probe_params(loop.run.path, loop.exp, loop.setup.tokenizer, params, loop.step,
                               tokens=loop.tokens, tasks=tasks)
    seconds = time.perf_counter() - t0
    loop.writer.write({"kind": "probe", "step": loop.step, "seconds": seconds,
                       "records": len(records)})
    loop.bar.log(f"probe step {loop.step} | {len(records)} records | {seconds:.1f}s")


def probe_hook(loop: Loop) -> Hook | None:
    """The hook for `exp.train.probe_checkpoints` (None when it is off)."""
    if not loop.exp.train.probe_checkpoints:
        return None
    tasks = loop.exp.train.probe_task_names

    def start(loop: Loop) -> None:
        # Killed between a save and its probe, or preempted: fill in what the step lacks.
        if loop.resumed_from is None:
            return
        missing = missing_probes(loop, loop.resumed_from, tasks) if loop.primary else []
        if decided_by_process_0(bool(missing), loop.process_count):
            probe(loop, missing)

    return Hook("probe", lambda loop: probe(loop, tasks), after_save=True, start=start)


__all__ = ["missing_probes", "probe", "probe_hook"]
