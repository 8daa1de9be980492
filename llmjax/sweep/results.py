"""`llmjax results --workdir=DIR`: one table of every run under `DIR/runs/`, and its eval curves.

Writes `DIR/results.csv` (one row per run), `DIR/curves.csv` (one row per eval point of every
run, for Chinchilla Approach 1) and `DIR/probes.csv` (every record of every run's probes.jsonl,
with the run's size and compute at that step), plus `.parquet` copies when pyarrow is importable.

results.csv columns (RESULT_COLUMNS, then one `override.<key>` column per override key):
  name, status, error               run directory name; pending|running|complete|failed|interrupted
  n_params, n_non_embedding, n_embedding   parameters (Kaplan convention, llmjax.model.flops)
  d_model, n_layers, n_heads, seq_len, batch_size, lr, parametrization, steps, seed
  tokens                            planned training tokens = steps x batch_size x seq_len
  tokens_per_param                  tokens / n_non_embedding
  flops_6nd                         6 x n_non_embedding x tokens
  flops                             exact training FLOPs: FLOPs/token (incl. attention) x tokens
  final_train_loss                  loss of the last train record (nats/token)
  final_eval_loss, best_eval_loss   eval loss at the last eval / lowest eval loss (nats/token)
  wall_time_s                       summed over attempts (sweep runs) or from metrics timestamps
  budget                            the FLOP budget of an iso-FLOP point, empty otherwise
  then: vocab_size, d_ff, flops_per_token, final_step, final_eval_bits_per_byte, cpu_time_s
then the probe columns of the run's last probed step (`llmjax probe`), for runs that have them:
  probe_step                        the step those columns were measured at
  probe.<task>.k<k>.<metric>        few-shot tasks, every k, for PROBE_METRICS
  probe.<task>.<metric>             zero-shot probes (facts, icl, induction, perplexity)
curves.csv: name, step, tokens, flops, flops_6nd, eval_loss, n_non_embedding, n_params,
  eval_bits_per_byte (tokens/FLOPs trained when that eval was taken).
probes.csv: name, status, step, final (the run's last probed step), tokens, flops, flops_6nd (at
  that step), n_params, n_non_embedding, task, k, metric, value, n.
Missing values are empty cells. Runs appear in sweep order, then any others by name.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from llmjax.errors import UserError
from llmjax.jsonl import read_json, read_jsonl

RESULT_COLUMNS = (
    "name", "status", "error", "n_params", "n_non_embedding", "n_embedding", "d_model", "n_layers",
    "n_heads", "seq_len", "batch_size", "lr", "parametrization", "steps", "tokens",
    "tokens_per_param", "flops_6nd", "flops", "final_train_loss", "final_eval_loss",
    "best_eval_loss", "wall_time_s", "budget", "seed",
    # extras (after the required columns)
    "vocab_size", "d_ff", "flops_per_token", "final_step", "final_eval_bits_per_byte",
    "cpu_time_s",
)
CURVE_COLUMNS = ("name", "step", "tokens", "flops", "flops_6nd", "eval_loss", "n_non_embedding",
                 "n_params", "eval_bits_per_byte")
PROBE_COLUMNS = ("name", "status", "step", "final", "tokens", "flops", "flops_6nd", "n_params",
                 "n_non_embedding", "task", "k", "metric", "value", "n")
# Metrics that get a results.csv column: all-or-nothing and continuous scores side by side, the
# hard subset (where the in-context frequency baseline is wrong), the ICL and induction scores.
PROBE_METRICS = ("exact_match", "exact_match_hard", "normalized_token_edit_distance",
                 "target_cross_entropy", "chrf", "acc", "icl_score", "prefix_matching_max",
                 "bits_per_byte")
PROBES_FILE = "probes.jsonl"  # as llmjax.eval.probe writes it


def _float(value: Any) -> float | None:
    try:
        x = float(value)  # metrics.jsonl writes NaN/Inf as strings
    except (TypeError, ValueError):
        return None
    return x


def _wall_from_metadata(path: str, last_time: Any) -> float | None:
    """Seconds from the run's start (metadata.json) to its last train record (no sweep status)."""
    import datetime

    meta = read_json(os.path.join(path, "metadata.json")) or {}
    try:
        start = datetime.datetime.fromisoformat(meta["start_time"]).timestamp()
        return float(last_time) - start
    except (KeyError, TypeError, ValueError):
        return None


def _model_info(config: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts and FLOPs/token of a run's config dict (imports jax: only when needed)."""
    from ml_collections import ConfigDict

    from llmjax.sweep.spec import cost, model_config

    cfg = ConfigDict(config)
    c = cost(cfg)
    return {"n_params": c.n_params, "n_non_embedding": c.n_non_embedding,
            "n_embedding": c.n_embedding, "flops_per_token": c.flops_per_token, "steps": c.steps,
            "d_ff": model_config(cfg).ff_dim}


def _run_row(path: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]] | None:
    """(row, curve rows, overrides) of one run directory, or None if it is not a run."""
    point = read_json(os.path.join(path, "point.json"))
    status = read_json(os.path.join(path, "status.json")) or {}
    overrides = read_json(os.path.join(path, "overrides.json"))
    config = read_json(os.path.join(path, "config.json"))
    if config is None and isinstance(point, dict):
        config = point.get("config")
    if not isinstance(config, dict):
        return None
    if not isinstance(overrides, dict):
        overrides = (point or {}).get("overrides") or {}
    name = os.path.basename(path.rstrip(os.sep))
    m, d, o = config.get("model", {}), config.get("data", {}), config.get("optimizer", {})

    info: dict[str, Any] = {}
    if isinstance(point, dict) and isinstance(point.get("cost"), dict):
        c = point["cost"]
        info = {k: c.get(k) for k in ("n_params", "n_non_embedding", "n_embedding",
                                      "flops_per_token", "steps")}
    if not info or any(v is None for v in info.values()):
        info = _model_info(config)
    if "d_ff" not in info:
        d_ff = m.get("d_ff")
        if d_ff is None:
            try:
                from ml_collections import ConfigDict

                from llmjax.sweep.spec import model_config

                d_ff = model_config(ConfigDict(config)).ff_dim
            except Exception:  # noqa: BLE001 - a column of convenience
                d_ff = None
        info["d_ff"] = d_ff

    seq_len, batch = d.get("seq_len"), d.get("batch_size")
    steps = info["steps"]
    tokens = steps * batch * seq_len
    n_ne, fpt = info["n_non_embedding"], info["flops_per_token"]
    metrics = read_jsonl(os.path.join(path, "metrics.jsonl"))
    train = [r for r in metrics if r.get("kind") == "train"]
    evals = [r for r in metrics if r.get("kind") == "eval"]
    eval_losses = [x for x in (_float(r.get("loss")) for r in evals) if x is not None]
    finite = [x for x in eval_losses if math.isfinite(x)]

    run_status = status.get("status")
    if run_status is None:  # trained outside a sweep: complete if it reached its last step
        reached = train[-1]["step"] if train else 0
        run_status = "complete" if reached >= steps else ("running" if train else "pending")
    wall = status.get("wall_time_s")
    if not wall and train:
        wall = _wall_from_metadata(path, train[-1].get("time"))
    budget = status.get("budget")
    if budget is None:
        budget = (point or {}).get("budget") if isinstance(point, dict) else None
    if budget is None:
        budget = overrides.get("budget", overrides.get("meta.budget"))

    row = {
        "name": name, "status": run_status,
        "error": status.get("error") if run_status != "complete" else None,
        "n_params": info["n_params"], "n_non_embedding": n_ne, "n_embedding": info["n_embedding"],
        "d_model": m.get("d_model"), "n_layers": m.get("n_layers"), "n_heads": m.get("n_heads"),
        "seq_len": seq_len, "batch_size": batch, "lr": o.get("lr"),
        "parametrization": m.get("parametrization"), "steps": steps, "tokens": tokens,
        "tokens_per_param": tokens / n_ne if n_ne else None,
        "flops_6nd": 6.0 * n_ne * tokens, "flops": float(fpt) * tokens,
        "final_train_loss": _float(train[-1].get("loss")) if train else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "best_eval_loss": min(finite) if finite else None,
        "wall_time_s": wall, "budget": budget, "seed": config.get("seed"),
        "vocab_size": m.get("vocab_size"), "d_ff": info["d_ff"], "flops_per_token": fpt,
        "final_step": train[-1]["step"] if train else 0,
        "final_eval_bits_per_byte": _float(evals[-1].get("bits_per_byte")) if evals else None,
        "cpu_time_s": status.get("cpu_time_s"),
    }
    tokens_per_step = batch * seq_len
    curves = []
    for r in evals:
        step = int(r["step"])
        tok = int(r.get("tokens", step * tokens_per_step))
        curves.append({"name": name, "step": step, "tokens": tok, "flops": float(fpt) * tok,
                       "flops_6nd": 6.0 * n_ne * tok, "eval_loss": _float(r.get("loss")),
                       "n_non_embedding": n_ne, "n_params": info["n_params"],
                       "eval_bits_per_byte": _float(r.get("bits_per_byte"))})
    probes = _probe_rows(path, name, run_status, info, tokens_per_step)
    row.update(_probe_columns(probes))
    return row, curves, overrides, probes


def _probe_rows(path: str, name: str, status: str, info: dict[str, Any],
                tokens_per_step: int) -> list[dict[str, Any]]:
    """probes.csv rows of one run: its probes.jsonl records with size and compute at each step."""
    records = [r for r in read_jsonl(os.path.join(path, PROBES_FILE))
               if isinstance(r, dict) and {"task", "k", "metric", "value", "step"} <= set(r)]
    if not records:
        return []
    last = max(int(r["step"]) for r in records)
    n_ne, fpt = info["n_non_embedding"], info["flops_per_token"]
    out = []
    for r in records:
        step = int(r["step"])
        tokens = int(r.get("tokens") or step * tokens_per_step)
        out.append({"name": name, "status": status, "step": step, "final": step == last,
                    "tokens": tokens, "flops": float(fpt) * tokens,
                    "flops_6nd": 6.0 * n_ne * tokens,
                    "n_params": info["n_params"], "n_non_embedding": n_ne, "task": r["task"],
                    "k": int(r["k"]), "metric": r["metric"], "value": _float(r["value"]),
                    "n": r.get("n")})
    return out


def probe_column(task: str, k: int, metric: str, few_shot: bool) -> str:
    """results.csv column of a probe value: probe.<task>.k<k>.<metric> or probe.<task>.<metric>."""
    return f"probe.{task}.k{k}.{metric}" if few_shot else f"probe.{task}.{metric}"


def _probe_columns(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The PROBE_METRICS values of a run's last probed step, as results.csv columns."""
    final = [p for p in probes if p["final"]]
    if not final:
        return {}
    few_shot = {p["task"] for p in final if p["k"] > 0}
    out: dict[str, Any] = {"probe_step": final[0]["step"]}
    for p in final:
        if p["metric"] in PROBE_METRICS:
            out[probe_column(p["task"], p["k"], p["metric"], p["task"] in few_shot)] = p["value"]
    return out


def _run_dirs(workdir: str) -> list[str]:
    """Run directories under `<workdir>/runs/`, in sweep order then by name."""
    runs = os.path.join(workdir, "runs")
    if not os.path.isdir(runs):
        raise UserError(f"--workdir={workdir}: no runs/ directory (run `llmjax sweep` first)")
    sweep = read_json(os.path.join(workdir, "sweep.json")) or {}
    order = {n: i for i, n in enumerate(sweep.get("points", []))}
    names = sorted((n for n in os.listdir(runs) if os.path.isdir(os.path.join(runs, n))),
                   key=lambda n: (order.get(n, len(order)), n))
    return [os.path.join(runs, n) for n in names]


def collect_results(workdir: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, curves, probes) of every run under `<workdir>/runs/` (columns: module docstring).

    Rows carry `override.<key>` entries for each of the run's overrides. Reads files only; jax is
    imported only for a run trained outside a sweep (no point.json) to count its parameters.
    """
    rows, curves, probes = [], [], []
    for path in _run_dirs(workdir):
        got = _run_row(path)
        if got is None:
            continue
        row, run_curves, overrides, run_probes = got
        for k, v in overrides.items():
            row[f"override.{k}"] = v
        rows.append(row)
        curves.extend(run_curves)
        probes.extend(run_probes)
    return rows, curves, probes


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def _write_csv(path: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c)) for c in columns})
    os.replace(tmp, path)


def _write_parquet(path: str, columns: list[str], rows: list[dict[str, Any]]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    data = {c: [None if r.get(c) in ("",) else r.get(c) for r in rows] for c in columns}
    # Mixed-type override columns become strings so one table holds them all.
    for c, values in data.items():
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            data[c] = [None if v is None else str(v) for v in values]
    pq.write_table(pa.table(data), path)
    return True


def result_columns(rows: list[dict[str, Any]]) -> list[str]:
    """RESULT_COLUMNS, the sorted `override.*` columns present in `rows`, then the probe columns
    (probe_step, then probe.* by task, k and metric)."""
    extra = sorted({k for r in rows for k in r if k.startswith("override.")})
    probe = {k for r in rows for k in r if k.startswith("probe.")}

    def order(col: str) -> tuple:
        parts = col.split(".")
        k = int(parts[2][1:]) if len(parts) == 4 else -1
        return parts[1], k, parts[-1]

    return [*RESULT_COLUMNS, *extra, *(["probe_step"] if probe else []),
            *sorted(probe, key=order)]


def write_results(workdir: str, collected: tuple[list, list, list] | None = None) -> list[str]:
    """Writes results.csv, curves.csv and probes.csv (and .parquet copies with pyarrow); returns
    the paths written. `collected`: `collect_results(workdir)` if already gathered."""
    rows, curves, probes = collected if collected is not None else collect_results(workdir)
    paths = []
    columns = result_columns(rows)
    for stem, cols, table in (("results", columns, rows), ("curves", list(CURVE_COLUMNS), curves),
                              ("probes", list(PROBE_COLUMNS), probes)):
        path = os.path.join(workdir, f"{stem}.csv")
        _write_csv(path, cols, table)
        paths.append(path)
        parquet = os.path.join(workdir, f"{stem}.parquet")
        if _write_parquet(parquet, cols, table):
            paths.append(parquet)
    return paths


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a results/curves CSV with numbers parsed back (empty cells -> None)."""
    def parse(v: str) -> Any:
        if v == "":
            return None
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


USAGE = "usage: llmjax results --workdir=DIR"


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        print(__doc__)
        return 0
    workdir = None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a.startswith("--workdir="):
            workdir = a.split("=", 1)[1]
        elif a == "--workdir" and args:
            workdir = args.pop(0)
        else:
            raise UserError(f"unknown argument {a!r}; {USAGE}")
    if not workdir:
        raise UserError(f"--workdir is required; {USAGE}")
    collected = collect_results(workdir)
    paths = write_results(workdir, collected)
    rows, probes = collected[0], collected[2]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{len(rows)} runs ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
          f"{sum(1 for r in rows if 'probe_step' in r)} probed ({len(probes)} probe records)")
    for p in paths:
        print(f"wrote {p}")
    return 0


__all__ = ["CURVE_COLUMNS", "PROBE_COLUMNS", "PROBE_METRICS", "RESULT_COLUMNS", "collect_results",
           "main", "probe_column", "read_csv", "result_columns", "write_results"]
