"""Sweeps: defined beside their config (`get_sweep(arg)`), run as resumable subprocesses, gathered
into one results table.

- `spec`: `sweep`, `product`, `zip` build override lists; `load_sweep` names, validates points.
- `runner`: `SweepRunner` runs each point as `llmjax train` in `DIR/runs/<name>/`.
- `cli`: `llmjax sweep --config=FILE[:arg] --workdir=DIR [--parallel=K] [--dry_run]`.
- `results`: `llmjax results --workdir=DIR` -> results.csv, curves.csv; `collect_results`.
"""

from llmjax.sweep.spec import product, sweep, zip  # noqa: A004 - big_vision's helper names

__all__ = ["product", "sweep", "zip"]
