"""`llmjax report --workdir=DIR [--n_boot=N]`: scaling-law report of a sweep, in DIR/report/.

Reads DIR/results.csv and DIR/curves.csv (written by `llmjax results`; when results.csv is missing
but DIR/runs exists, the sweep's collector writes them first), fits the scaling laws
(`llmjax.scaling.analysis.analyze`), analyses the runs' probes when the sweep has them
(DIR/probes.csv or DIR/runs/*/probes.jsonl; `llmjax.scaling.emergence`), and writes the PNG
plots, report.md and report.json (the headline numbers, every fit's parameters, every probe
series' transition test).
Prints the report's path and the headline numbers.
This module is the edge with files; the fits and rendering are pure.

Every input (the workdir, the three tables, the runs when they are collected, the output
directory and the report's own paths) is checked before the first file is written, and bad input
is a one-line UserError naming the file (`llmjax.report.tables`). Each output is then written
atomically (`llmjax.report.outputs`): a failed write or a kill leaves the previous file readable.
Only runs whose status is `complete` (`llmjax.rundir.Status`) are fitted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from llmjax.errors import ArgParser, UserError
from llmjax.report.tables import (  # noqa: F401  (re-exported: the checks of the input tables)
    CURVES_NUMERIC,
    CURVES_REQUIRED,
    RESULTS_NUMERIC,
    RESULTS_REQUIRED,
    read_curves,
    read_results,
    read_table,
)

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


def _check_workdir(workdir: str) -> None:
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist or is not a directory")


def _collect_if_needed(workdir: str, results_path: str) -> None:
    """results.csv missing but DIR/runs present: the sweep's collector writes the tables first."""
    from llmjax.sweep.results import RUNS_DIR, write_results

    if not os.path.isdir(os.path.join(workdir, RUNS_DIR)):
        raise UserError(f"{results_path} not found; run `llmjax results --workdir={workdir}` first")
    write_results(workdir)
    print(f"collected {workdir}/{RUNS_DIR} into {results_path}")


def load_tables(workdir: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(results rows, curves rows) of a sweep directory; curves are [] when curves.csv is absent.

    Both tables are checked whole (`llmjax.report.tables`): a garbled one is a UserError naming
    the file. Without results.csv, the runs under DIR/runs are collected into the tables first.
    """
    from llmjax.sweep.results import CURVES_CSV, RESULTS_CSV

    _check_workdir(workdir)
    results_path = os.path.join(workdir, RESULTS_CSV)
    if not os.path.lexists(results_path):
        _collect_if_needed(workdir, results_path)
    rows = read_results(results_path)
    curves_path = os.path.join(workdir, CURVES_CSV)
    curves: list[dict[str, str]] = []
    if os.path.lexists(curves_path):
        curves = read_curves(curves_path)
    return rows, curves


@dataclass
class ReportResult:
    """Where the report went and its headline numbers (report.json's `headline`)."""

    out_dir: str
    report_md: str
    report_json: str
    plots: dict[str, str]
    headline: dict[str, Any]
    seconds: float


def _fits_dict(analysis) -> dict[str, Any]:
    """Every fit's parameters and bootstrap summary, JSON-able."""
    out: dict[str, Any] = {}
    pieces = {
        "loss_vs_n": analysis.loss_vs_n,
        "frontier": analysis.frontier,
        "approach1": analysis.approach1,
        "approach2": analysis.approach2,
        "approach3": analysis.approach3,
    }
    for key, sec in pieces.items():
        if sec is None:
            continue
        out[key] = {
            "params": {k: v.to_dict() for k, v in sec.params.items()},
            "fit": sec.fit.to_dict(),
            "bootstrap": None if sec.boot is None else sec.boot.to_dict(),
            "note": sec.note,
        }
    out["extrapolation"] = [e.to_dict() for e in analysis.extrapolations]
    return out


def _load_inputs(workdir: str, out_dir: str | None
                 ) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(output directory, results rows, curves rows, probe rows): every input read and checked,
    and the output directory checked, before any fit (cheap: no numpy, no matplotlib)."""
    from llmjax.report.outputs import check_out_dir, check_targets
    from llmjax.report.tables import load_probe_rows

    _check_workdir(workdir)
    out_dir = out_dir or os.path.join(workdir, "report")
    check_out_dir(out_dir)
    check_targets([os.path.join(out_dir, REPORT_MD), os.path.join(out_dir, REPORT_JSON)])
    rows, curves = load_tables(workdir)
    return out_dir, rows, curves, load_probe_rows(workdir)


def write_report(
    workdir: str,
    *,
    n_boot: int | None = None,
    seed: int | None = None,
    options=None,
    out_dir: str | None = None,
) -> ReportResult:
    """Load DIR's tables, fit, write DIR/report/{*.png, report.md, report.json}.

    Every input is read and checked, and every output path checked, before the first file is
    written; each file is then written atomically (`llmjax.report.outputs`), so a failure or a
    kill leaves the previous report's files readable.
    """
    start = time.perf_counter()
    inputs = _load_inputs(workdir, out_dir)
    return _write_report(workdir, *inputs, n_boot=n_boot, seed=seed, options=options,
                         start=start)


def _write_report(workdir: str, out_dir: str, rows, curves, probe_rows, *, n_boot, seed,
                  options, start: float) -> ReportResult:
    from llmjax.report import emergence_plots, plots
    from llmjax.report.markdown import render_markdown
    from llmjax.report.outputs import check_targets, ensure_out_dir, write_text
    from llmjax.scaling.analysis import analyze
    from llmjax.scaling.emergence import analyze_emergence

    analysis = analyze(rows, curves, n_boot=n_boot, seed=seed, options=options)
    emergence = analyze_emergence(probe_rows, compute=analysis.options.compute,
                                  n_boot=analysis.options.n_boot, seed=analysis.options.seed)
    figures = plots.scaling_figures(analysis)
    emergence_figures = emergence_plots.emergence_figures(emergence)
    report_md = os.path.join(out_dir, REPORT_MD)
    report_json = os.path.join(out_dir, REPORT_JSON)
    names = [n for f in (figures, emergence_figures) for n, fig in f.items() if fig is not None]
    check_targets([*(os.path.join(out_dir, n) for n in names), report_md, report_json])

    # Figures first, then report.md (which shows them), then report.json.
    ensure_out_dir(out_dir)
    written = plots.save_figures(figures, out_dir)
    written.update(plots.save_figures(emergence_figures, out_dir, dpi=emergence_plots.DPI))
    title = f"Scaling report: {os.path.basename(os.path.abspath(workdir))}"
    headline = analysis.headline()
    headline["emergence"] = emergence.headline()
    write_text(report_md, render_markdown(analysis, written, title=title, emergence=emergence))
    payload = {
        "report": report_md,
        "workdir": os.path.abspath(workdir),
        "headline": headline,
        "plots": written,
        "options": asdict(analysis.options),
        "fits": _fits_dict(analysis),
        "emergence": emergence.to_dict(),
    }
    write_text(report_json, json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return ReportResult(out_dir, report_md, report_json, written, headline,
                        time.perf_counter() - start)


def _jsonable(x: Any) -> Any:
    """Strict-JSON copy: numpy scalars/arrays to Python, non-finite floats to None."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="llmjax report", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="sweep directory holding results.csv")
    p.add_argument("--n_boot", type=int, default=None, help="bootstrap replicates per fit (200)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (0)")
    p.add_argument("--out", default=None, help="output directory (default WORKDIR/report)")
    p.add_argument("--approach3_points", choices=("auto", "curves", "final"), default="auto",
                   help="Approach 3 on final points plus intermediate eval points, final only, "
                   "or auto: final only when they vary N and D independently")
    p.add_argument("--compute", choices=("flops_6nd", "flops"), default="flops_6nd",
                   help="compute column: 6ND with non-embedding N, or exact FLOPs")
    p.add_argument("--chinchilla_grid", choices=("paper", "coarse"), default="paper",
                   help="Approach 3 L-BFGS starts: the paper's 4,500 or a coarse 675")
    p.add_argument("--holdout_largest", type=int, default=1,
                   help="model sizes held out by the extrapolation check")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.n_boot is not None and args.n_boot < 2:
        raise UserError(f"--n_boot must be >= 2; got {args.n_boot}")
    if args.holdout_largest < 1:
        raise UserError(f"--holdout_largest must be >= 1; got {args.holdout_largest}")
    start = time.perf_counter()
    inputs = _load_inputs(args.workdir, args.out)  # bad input stops here, before the imports

    from llmjax.report.markdown import headline_lines
    from llmjax.scaling.analysis import AnalysisOptions

    options = AnalysisOptions(
        approach3_points=args.approach3_points,
        compute=args.compute,
        chinchilla_grid=args.chinchilla_grid,
        holdout_largest=args.holdout_largest,
    )
    result = _write_report(args.workdir, *inputs, n_boot=args.n_boot, seed=args.seed,
                           options=options, start=start)
    print(f"report: {result.report_md} ({len(result.plots)} plots, {result.seconds:.1f} s)")
    for line in headline_lines(result.headline):
        print(f"  {line}")
    return 0
