"""The scaling report of a sweep: fits from results.csv / curves.csv, plots, report.md.

- `analyze(rows, curves)` (scaling.py): every fit of the report with bootstrap intervals, pure.
- `plot_*` / `write_plots` (plots.py): matplotlib figures and PNGs.
- `render_markdown`, `headline_lines` (markdown.py): report.md and the headline.
- `analyze_emergence` (emergence.py): the probes across scale and through training, sigmoid
  transitions in log-compute; `plot_task` / `write_emergence_plots` (emergence_plots.py);
  `section_emergence` (markdown.py).
- `load_tables`, `write_report` (cli.py): the file edge; `llmjax report --workdir=DIR`.
"""

from llmjax.report.cli import ReportResult, load_tables, write_report
from llmjax.report.emergence import EmergenceAnalysis, analyze_emergence, load_probe_rows
from llmjax.report.emergence_plots import (
    plot_icl_vs_scale,
    plot_task,
    plot_training,
    write_emergence_plots,
)
from llmjax.report.markdown import headline_lines, render_markdown, section_emergence
from llmjax.report.plots import (
    plot_isoflop,
    plot_loss_vs_compute,
    plot_loss_vs_params,
    plot_nopt_vs_compute,
    write_plots,
)
from llmjax.report.scaling import AnalysisOptions, ScalingAnalysis, analyze

__all__ = [
    "AnalysisOptions",
    "EmergenceAnalysis",
    "analyze_emergence",
    "load_probe_rows",
    "plot_icl_vs_scale",
    "plot_task",
    "plot_training",
    "section_emergence",
    "write_emergence_plots",
    "ReportResult",
    "ScalingAnalysis",
    "analyze",
    "headline_lines",
    "load_tables",
    "plot_isoflop",
    "plot_loss_vs_compute",
    "plot_loss_vs_params",
    "plot_nopt_vs_compute",
    "render_markdown",
    "write_plots",
    "write_report",
]
