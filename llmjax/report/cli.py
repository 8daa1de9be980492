"""`llmjax report --workdir=DIR [--n_boot=N]`: scaling-law report of a sweep, in DIR/report/.

Reads DIR/results.csv and DIR/curves.csv (written by `llmjax results`; when results.csv is missing
but DIR/runs exists, the sweep's collector writes them first), fits the scaling laws
(`llmjax.report.scaling.analyze`), analyses the runs' probes when the sweep has them (DIR/probes.csv
or DIR/runs/*/probes.jsonl; `llmjax.report.emergence`), and writes the PNG plots, report.md and
report.json (the headline numbers, every fit's parameters, every probe series' transition test).
Prints the report's path and the headline numbers.
This module is the edge with files; the fits and rendering are pure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from llmjax.errors import UserError

RESULTS_REQUIRED = ("name", "status", "n_non_embedding", "tokens", "final_eval_loss")
CURVES_REQUIRED = ("name", "tokens", "eval_loss")
# Numeric columns checked strictly in rows whose status says they finished.
RESULTS_NUMERIC = (
    "n_params", "n_non_embedding", "n_embedding", "tokens", "flops", "flops_6nd",
    "final_eval_loss", "best_eval_loss", "wall_time_s", "budget",
)
CURVES_NUMERIC = ("step", "tokens", "flops", "flops_6nd", "eval_loss", "n_non_embedding")


def _is_number(text: str | None) -> bool:
    if text is None or not text.strip():
        return True  # empty cells are missing values, not garbage
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_table(
    path: str, required: tuple[str, ...], numeric: tuple[str, ...], *, strict_rows=None
) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings; a one-line UserError naming the file if garbled.

    required: columns the header must have. numeric: columns whose non-empty cells must parse as
    numbers, in rows for which strict_rows(row) is true (default all rows).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise UserError(f"{path} is empty")
            missing = [c for c in required if c not in header]
            if missing:
                cols = ", ".join(missing)
                raise UserError(f"{path} lacks column(s) {cols}; is it a sweep table?")
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    got = sum(v is not None for k, v in row.items() if k is not None)
                    got += len(row.get(None) or ())
                    raise UserError(f"{path}:{line}: expected {len(header)} fields, got {got}")
                if strict_rows is None or strict_rows(row):
                    for col in numeric:
                        if col in row and not _is_number(row[col]):
                            raise UserError(f"{path}:{line}: {col} is not a number: {row[col]!r}")
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV file ({type(e).__name__})") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a CSV file") from None
    return rows


def _finished(row: dict[str, str]) -> bool:
    from llmjax.report.scaling import OK_STATUSES

    return (row.get("status") or "").strip().lower() in OK_STATUSES


def _collect_if_needed(workdir: str, results_path: str) -> None:
    """results.csv missing but DIR/runs present: the sweep's collector writes the tables first."""
    if not os.path.isdir(os.path.join(workdir, "runs")):
        raise UserError(f"{results_path} not found; run `llmjax results --workdir={workdir}` first")
    from llmjax.sweep.results import write_results

    write_results(workdir)
    print(f"collected {workdir}/runs into {results_path}")


def _blank(path: str) -> bool:
    """True for an empty or whitespace-only file (an optional table that was never filled)."""
    if os.path.getsize(path) > 4096:
        return False
    with open(path, "rb") as f:
        return not f.read().strip()


def load_tables(workdir: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(results rows, curves rows) of a sweep directory; curves are [] when curves.csv is absent."""
    if not os.path.isdir(workdir):
        raise UserError(f"workdir {workdir} does not exist or is not a directory")
    results_path = os.path.join(workdir, "results.csv")
    if not os.path.exists(results_path):
        _collect_if_needed(workdir, results_path)
    rows = read_table(results_path, RESULTS_REQUIRED, RESULTS_NUMERIC, strict_rows=_finished)
    if not rows:
        raise UserError(f"{results_path} has a header but no runs")
    curves_path = os.path.join(workdir, "curves.csv")
    curves: list[dict[str, str]] = []
    if os.path.exists(curves_path) and not _blank(curves_path):
        curves = read_table(curves_path, CURVES_REQUIRED, CURVES_NUMERIC)
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


def write_report(
    workdir: str,
    *,
    n_boot: int | None = None,
    seed: int | None = None,
    options=None,
    out_dir: str | None = None,
) -> ReportResult:
    """Load DIR's tables, fit, write DIR/report/{*.png, report.md, report.json}."""
    from llmjax.report.emergence import analyze_emergence, load_probe_rows
    from llmjax.report.emergence_plots import write_emergence_plots
    from llmjax.report.markdown import render_markdown
    from llmjax.report.plots import write_plots
    from llmjax.report.scaling import analyze

    start = time.perf_counter()
    rows, curves = load_tables(workdir)
    analysis = analyze(rows, curves, n_boot=n_boot, seed=seed, options=options)
    emergence = analyze_emergence(load_probe_rows(workdir), compute=analysis.options.compute,
                                  n_boot=analysis.options.n_boot, seed=analysis.options.seed)
    out_dir = out_dir or os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    plots = write_plots(analysis, out_dir)
    plots.update(write_emergence_plots(emergence, out_dir))
    title = f"Scaling report: {os.path.basename(os.path.abspath(workdir))}"
    headline = analysis.headline()
    headline["emergence"] = emergence.headline()
    report_md = os.path.join(out_dir, "report.md")
    with open(report_md, "w", encoding="utf-8") as f:
        f.write(render_markdown(analysis, plots, title=title, emergence=emergence))
    report_json = os.path.join(out_dir, "report.json")
    payload = {
        "report": report_md,
        "workdir": os.path.abspath(workdir),
        "headline": headline,
        "plots": plots,
        "options": asdict(analysis.options),
        "fits": _fits_dict(analysis),
        "emergence": emergence.to_dict(),
    }
    with open(report_json, "w", encoding="utf-8") as f:
        json.dump(_jsonable(payload), f, indent=2, allow_nan=False)
    return ReportResult(out_dir, report_md, report_json, plots, headline,
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


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line UserErrors (the top-level CLI prints and exits 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmjax report", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="sweep directory holding results.csv")
    p.add_argument("--n_boot", type=int, default=None, help="bootstrap replicates per fit (200)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (0)")
    p.add_argument("--out", default=None, help="output directory (default WORKDIR/report)")
    p.add_argument("--approach3_points", choices=("curves", "final"), default="curves",
                   help="Approach 3 on final points plus intermediate eval points, or final only")
    p.add_argument("--compute", choices=("flops_6nd", "flops"), default="flops_6nd",
                   help="compute column: 6ND with non-embedding N, or exact FLOPs")
    p.add_argument("--chinchilla_grid", choices=("paper", "coarse"), default="paper",
                   help="Approach 3 L-BFGS starts: the paper's 4,500 or a coarse 675")
    p.add_argument("--holdout_largest", type=int, default=1,
                   help="model sizes held out by the extrapolation check")
    return p


def main(argv: list[str]) -> int:
    from llmjax.report.markdown import headline_lines
    from llmjax.report.scaling import AnalysisOptions

    args = _parser().parse_args(argv)
    if args.n_boot is not None and args.n_boot < 2:
        raise UserError(f"--n_boot must be >= 2; got {args.n_boot}")
    options = AnalysisOptions(
        approach3_points=args.approach3_points,
        compute=args.compute,
        chinchilla_grid=args.chinchilla_grid,
        holdout_largest=args.holdout_largest,
    )
    result = write_report(
        args.workdir, n_boot=args.n_boot, seed=args.seed, options=options, out_dir=args.out
    )
    print(f"report: {result.report_md} ({len(result.plots)} plots, {result.seconds:.1f} s)")
    for line in headline_lines(result.headline):
        print(f"  {line}")
    return 0
