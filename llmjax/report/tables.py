"""The report's input tables (results.csv, curves.csv, probes.csv): read and checked strictly.

Each table is read whole and checked before anything is fitted or written: a garbled file gives a
one-line `UserError` naming it (and the line, where there is one), never a traceback. The tables
are the ones `llmjax results` writes (`llmjax.sweep.results`); the status column holds a
`llmjax.rundir.Status` value, and only `complete` marks a finished run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping
from typing import Any

from llmjax.errors import UserError
from llmjax.rundir import Status

RESULTS_REQUIRED = ("name", "status", "n_non_embedding", "tokens", "final_eval_loss")
CURVES_REQUIRED = ("name", "tokens", "eval_loss")
PROBES_REQUIRED = ("name", "status", "step", "task", "k", "metric", "value")
# Numeric columns checked strictly in rows whose status says they finished.
RESULTS_NUMERIC = (
    "n_params", "n_non_embedding", "n_embedding", "tokens", "flops", "flops_6nd",
    "final_eval_loss", "best_eval_loss", "wall_time_s", "budget",
)
CURVES_NUMERIC = ("step", "tokens", "flops", "flops_6nd", "eval_loss", "n_non_embedding")
PROBES_NUMERIC = ("step", "k", "value", "tokens", "flops", "flops_6nd", "n_params",
                  "n_non_embedding", "n")
STATUS_VALUES = ", ".join(s.value for s in Status)


def is_finished(row: Mapping[str, Any]) -> bool:
    """The row's run trained every step (status `complete`); nothing else counts as finished."""
    return str(row.get("status") or "").strip() == Status.COMPLETE


def _is_number(text: str | None) -> bool:
    if text is None or not text.strip():
        return True  # empty cells are missing values, not garbage
    try:
        float(text)
    except ValueError:
        return False
    return True


def _short(value: str, limit: int = 40) -> str:
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


def read_table(
    path: str,
    required: tuple[str, ...],
    numeric: tuple[str, ...],
    *,
    strict_rows: Callable[[dict[str, str]], bool] | None = None,
) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings; a one-line UserError naming the file if garbled.

    required: columns the header must have. numeric: columns whose non-empty cells must parse as
    numbers, in rows for which strict_rows(row) is true (default all rows). A `status` column must
    hold `Status` values in every row.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM (spreadsheets) is fine
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
                if "status" in row and row["status"].strip() not in set(Status):
                    raise UserError(f"{path}:{line}: status {_short(row['status'])} is not one of "
                                    f"{STATUS_VALUES}")
                if strict_rows is None or strict_rows(row):
                    for col in numeric:
                        if col in row and not _is_number(row[col]):
                            raise UserError(
                                f"{path}:{line}: {col} is not a number: {_short(row[col])}")
                rows.append(row)
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV file ({type(e).__name__})") from None
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a CSV file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None
    return rows


def read_results(path: str) -> list[dict[str, str]]:
    """results.csv rows (at least one); numbers checked in the rows of complete runs."""
    rows = read_table(path, RESULTS_REQUIRED, RESULTS_NUMERIC, strict_rows=is_finished)
    if not rows:
        raise UserError(f"{path} has a header but no runs")
    return rows


def read_curves(path: str) -> list[dict[str, str]]:
    """curves.csv rows (possibly none: a sweep without eval points)."""
    return read_table(path, CURVES_REQUIRED, CURVES_NUMERIC)


def read_probes(path: str) -> list[dict[str, str]]:
    """probes.csv rows (possibly none: a sweep without probes)."""
    return read_table(path, PROBES_REQUIRED, PROBES_NUMERIC)


def load_probe_rows(workdir: str) -> list[dict[str, Any]]:
    """probes.csv of a sweep directory (checked), or (without it) the probes collected from its
    runs/ (`llmjax.sweep.results.collect_results`); [] when it has neither."""
    from llmjax.sweep.results import PROBES_CSV, RUNS_DIR, collect_results

    path = os.path.join(workdir, PROBES_CSV)
    if os.path.lexists(path):
        return read_probes(path)
    if os.path.isdir(os.path.join(workdir, RUNS_DIR)):
        return collect_results(workdir)[2]
    return []


__all__ = ["CURVES_NUMERIC", "CURVES_REQUIRED", "PROBES_NUMERIC", "PROBES_REQUIRED",
           "RESULTS_NUMERIC", "RESULTS_REQUIRED", "is_finished", "load_probe_rows", "read_curves",
           "read_probes", "read_results", "read_table"]
