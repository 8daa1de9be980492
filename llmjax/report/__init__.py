"""The scaling report of a sweep: fits from results.csv / curves.csv, plots, report.md.

- `analyze(rows, curves)` (scaling.py): every fit of the report with bootstrap intervals, pure.
- `plot_*` / `write_plots` (plots.py): matplotlib figures and PNGs.
- `render_markdown`, `headline_lines` (markdown.py): report.md and the headline.
- `load_tables`, `write_report` (cli.py): the file edge; `llmjax report --workdir=DIR`.
"""

from llmjax.report.cli import ReportResult, load_tables, write_report
from llmjax.report.markdown import headline_lines, render_markdown
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
