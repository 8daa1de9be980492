"""The scaling report of a sweep: renders the analysis of `llmjax.scaling` as plots and report.md.

The report computes nothing of its own: point selection, fits, identification checks and the
extrapolation are `llmjax.scaling.analysis`; the emergence tests are `llmjax.scaling.emergence`.
Both are re-exported here for convenience.

- `analyze(rows, curves)` (llmjax.scaling.analysis): every fit with bootstrap intervals, pure.
- `plot_*` / `scaling_figures` / `write_plots` (plots.py): matplotlib figures and PNGs.
- `render_markdown`, `headline_lines` (markdown.py): report.md and the headline.
- `analyze_emergence` (llmjax.scaling.emergence): the probes across scale and through training,
  sigmoid transitions in log-compute; `plot_task` / `write_emergence_plots` (emergence_plots.py);
  `section_emergence` (markdown.py).
- `read_results` / `read_curves` / `read_probes` (tables.py): the input tables, checked strictly;
  `outputs.py`: every output written atomically, output paths checked before the first write.
- `load_tables`, `write_report` (cli.py): the file edge; `llmjax report --workdir=DIR`.

The names below are imported on first use, so `llmjax report` with bad input answers before
numpy, scipy and matplotlib are loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

# module -> where it lives: names in this package, or "llmjax.scaling.<m>" for the analysis.
_WHERE = {
    "ReportResult": "cli", "load_tables": "cli", "write_report": "cli",
    "EmergenceAnalysis": "llmjax.scaling.emergence",
    "analyze_emergence": "llmjax.scaling.emergence",
    "load_probe_rows": "llmjax.scaling.emergence",
    "emergence_figures": "emergence_plots", "plot_icl_vs_scale": "emergence_plots",
    "plot_task": "emergence_plots", "plot_training": "emergence_plots",
    "write_emergence_plots": "emergence_plots",
    "headline_lines": "markdown", "render_markdown": "markdown", "section_emergence": "markdown",
    "plot_isoflop": "plots", "plot_loss_vs_compute": "plots", "plot_loss_vs_params": "plots",
    "plot_nopt_vs_compute": "plots", "scaling_figures": "plots", "write_plots": "plots",
    "AnalysisOptions": "llmjax.scaling.analysis", "ScalingAnalysis": "llmjax.scaling.analysis",
    "analyze": "llmjax.scaling.analysis",
    "read_curves": "tables", "read_probes": "tables", "read_results": "tables",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    path = module if module.startswith("llmjax.") else f"{__name__}.{module}"
    value = getattr(importlib.import_module(path), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = sorted(_WHERE)
