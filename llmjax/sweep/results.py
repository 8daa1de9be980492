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
  group                             the point the run replicates (a sweep point's `seeds`:
                                    members `<group>_s<seed>`); the run's own name otherwise
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

The status column holds a `llmjax.rundir.Status` value: the run's status.json, or for a run
trained outside a sweep without one, `complete` when its metrics reach the last step. Run files
are read through `llmjax.rundir.RunDir`; a damaged one (status.json, config.json, point.json, a
metrics.jsonl or probes.jsonl holding no JSON record) is a one-line UserError naming it, and
nothing is written. Every table is written atomically: a kill leaves the previous one readable.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from llmjax import rundir
from llmjax.errors import UserError
from llmjax.rundir import (
    CONFIG,
    RunDir,
    Status,
    atomic_output,
    read_json,
    read_json_file,
    read_jsonl,
)

RESULT_COLUMNS = (
    "name", "status", "error", "n_params", "n_non_embedding", "n_embedding", "d_model", "n_layers",
    "n_heads", "seq_len", "batch_size", "lr", "parametrization", "steps", "tokens",
    "tokens_per_param", "flops_6nd", "flops", "final_train_loss", "final_eval_loss",
    "best_eval_loss", "wall_time_s", "budget", "seed", "group",
    # extras (after the required columns)
    "vocab_size", "d_ff", "flops_per_token", "final_step", "final_eval_bits_per_byte",
    "cpu_time_s", "study", "entropy_nats_per_token", "entropy_se", "schedule",
)
CURVE_COLUMNS = ("name", "step", "tokens", "flops", "flops_6nd", "eval_loss", "n_non_embedding",
                 "n_params", "eval_bits_per_byte")
PROBE_COLUMNS = ("name", "status", "step", "final", "tokens", "flops", "flops_6nd", "n_params",
                 "n_non_embedding", "task", "k", "metric", "value", "n", "n_layers", "study")
# Metrics that get a results.csv column: all-or-nothing and continuous scores side by side, the
# hard subset (where the in-context frequency baseline is wrong), the ICL and induction scores.
PROBE_METRICS = ("exact_match", "exact_match_hard", "normalized_token_edit_distance",
                 "target_cross_entropy", "chrf", "acc", "icl_score", "prefix_matching_max",
                 "bits_per_byte")
# The sweep directory: DIR/runs/<name>/ (run directories, `llmjax.rundir.RunDir`) and the tables.
RUNS_DIR = rundir.RUNS
RESULTS_CSV, CURVES_CSV, PROBES_CSV = "results.csv", "curves.csv", "probes.csv"
_SWEEP, _POINT, _OVERRIDES = rundir.SWEEP, rundir.POINT, rundir.OVERRIDES  # `llmjax sweep` writes
_COST_KEYS = ("n_params", "n_non_embedding", "n_embedding", "flops_per_token", "steps")


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)  # metrics.jsonl writes NaN/Inf as strings
    except (TypeError, ValueError):
        return None
    return x


def _int(value: Any) -> int | None:
    """An integer from a JSON value (3 or 3.0); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _read_status(run: RunDir) -> dict[str, Any]:
    """`run.read_status()`: UserError naming status.json when it is damaged."""
    return run.read_status()


def _read_object(path: str, what: str) -> dict[str, Any] | None:
    """The JSON object in `path` (None when the file does not exist); UserError naming the file
    when it is damaged or holds something else than an object."""
    value = read_json_file(path, what)
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{path}: {what} must hold a JSON object, got {type(value).__name__}")
    return value


def _read_records(path: str, what: str) -> list[dict[str, Any]]:
    """Records of a run's JSON-lines file ([] when it does not exist), read with torn-line
    tolerance (`llmjax.rundir.read_jsonl`). A file with content but not one JSON record in it
    (binary or text garbage, not a JSON-lines file) is a UserError naming it; an empty file, or
    one line torn by a kill while the first record was written, is a run that logged nothing yet.
    """
    try:
        records = read_jsonl(path)
    except IsADirectoryError:
        raise UserError(f"{path}: expected a {what}, found a directory") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if records or not os.path.exists(path):
        return records
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text = head.strip()
    if not text:
        return []
    torn_first_line = (b"\n" not in text and b"\0" not in text and text.startswith(b"{")
                       and os.path.getsize(path) <= len(head))
    if torn_first_line:
        return []
    raise UserError(f"{path}: {what} holds no JSON record; is it a JSON-lines file?")


def _section(config: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{source}: config field {key!r} must be an object, got "
                        f"{type(value).__name__}")
    return value


def _positive_int(section: dict[str, Any], key: str, where: str, source: str) -> int:
    value = _int(section.get(key))
    if value is None or value <= 0:
        raise UserError(f"{source}: {where}.{key} is {section.get(key)!r}, not a positive integer")
    return value


def _entropy_from_metadata(meta: Any) -> tuple[float | None, float | None]:
    """(nats per token, standard error) of the run's corpus as its generator computed it
    (metadata.json `dataset.entropy.corpus`; llmjax.data.entropy); None when not computed."""
    corpus = (((meta or {}).get("dataset") or {}).get("entropy") or {}).get("corpus") \
        if isinstance(meta, dict) else None
    if not isinstance(corpus, dict):
        return None, None
    return _float(corpus.get("nats_per_token")), _float(corpus.get("nats_per_token_se"))


def _wall_from_metadata(meta: Any, last_time: Any) -> float | None:
    """Seconds from the run's start (metadata.json) to its last train record (no sweep status)."""
    import datetime

    if not isinstance(meta, dict):
        return None
    try:
        start = datetime.datetime.fromisoformat(meta["start_time"]).timestamp()
        return float(last_time) - start
    except (KeyError, TypeError, ValueError):
        return None


def _model_info(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Parameter counts and FLOPs/token of a run's config dict (imports jax: only when needed);
    a config they cannot be counted from is a UserError naming `source`."""
    from ml_collections import ConfigDict

    from llmjax.sweep.spec import cost, model_config

    try:
        cfg = ConfigDict(config)
        c = cost(cfg)
        d_ff = model_config(cfg).ff_dim
    except UserError as e:
        raise UserError(f"{source}: {_one_line(e)}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: cannot count the model's parameters from this config "
                        f"({type(e).__name__}: {_one_line(e)})") from None
    return {"n_params": c.n_params, "n_non_embedding": c.n_non_embedding,
            "n_embedding": c.n_embedding, "flops_per_token": c.flops_per_token, "steps": c.steps,
            "d_ff": d_ff}


def _run_row(path: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any],
                                 list[dict[str, Any]]] | None:
    """(row, curve rows, overrides, probe rows) of one run directory, or None if it is not a run
    (neither config.json nor a sweep point with a config). A damaged run file is a UserError
    naming it."""
    run = RunDir(path)
    point_path = run.file(_POINT)
    point = _read_object(point_path, "sweep point file")
    overrides = _read_object(run.file(_OVERRIDES), "overrides file")
    config, source = run.saved_config(), run.config_path
    if config is None and point is not None and point.get("config") is not None:
        config, source = point["config"], point_path
        if not isinstance(config, dict):
            raise UserError(f"{point_path}: its config must be a JSON object")
    if config is None:
        return None
    if overrides is None:
        overrides = (point or {}).get("overrides") or {}
        if not isinstance(overrides, dict):
            raise UserError(f"{point_path}: its overrides must be a JSON object")
    status = _read_status(run)  # UserError naming status.json when it is damaged
    has_status = os.path.exists(run.status_path)
    name = os.path.basename(run.path)
    m, d = _section(config, "model", source), _section(config, "data", source)
    o = _section(config, "optimizer", source)

    info: dict[str, Any] = {}
    cost = (point or {}).get("cost")
    if isinstance(cost, dict) and all(_number(cost.get(k)) for k in _COST_KEYS) \
            and _int(cost["steps"]) is not None:
        info = {k: cost[k] for k in _COST_KEYS}
        info["steps"] = _int(cost["steps"])
        d_ff = m.get("d_ff")
        if d_ff is None:
            try:
                from ml_collections import ConfigDict

                from llmjax.sweep.spec import model_config

                d_ff = model_config(ConfigDict(config)).ff_dim
            except Exception:  # noqa: BLE001 - a column of convenience
                d_ff = None
        info["d_ff"] = d_ff
    else:
        info = _model_info(config, source)

    seq_len = _positive_int(d, "seq_len", "data", source)
    batch = _positive_int(d, "batch_size", "data", source)
    steps = info["steps"]
    tokens = steps * batch * seq_len
    n_ne, fpt = info["n_non_embedding"], info["flops_per_token"]
    metrics = _read_records(run.metrics_path, "metrics file")
    train = [r for r in metrics if r.get("kind") == "train" and _int(r.get("step")) is not None]
    evals = [r for r in metrics if r.get("kind") == "eval" and _int(r.get("step")) is not None]
    eval_losses = [x for x in (_float(r.get("loss")) for r in evals) if x is not None]
    finite = [x for x in eval_losses if math.isfinite(x)]
    final_step = _int(train[-1]["step"]) if train else 0

    if has_status:
        # (read_status checked the value; a file without the key means pending)
        run_status = Status(status.get("status", Status.PENDING))
    else:  # trained outside a sweep, by a loop that left no status.json: infer from its metrics
        run_status = (Status.COMPLETE if train and final_step >= steps
                      else Status.RUNNING if train else Status.PENDING)
    meta = read_json(run.metadata_path)  # damage only means "not known" here
    wall = _float(status.get("wall_time_s"))
    if not wall and train:
        wall = _wall_from_metadata(meta, train[-1].get("time"))
    budget = status.get("budget")
    if budget is None:
        budget = (point or {}).get("budget")
    if budget is None:
        budget = overrides.get("budget", overrides.get("meta.budget"))
    budget = _float(budget)

    row = {
        "name": name, "status": run_status.value,
        "error": status.get("error") if run_status != Status.COMPLETE else None,
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
        # Replicates (a point's `seeds`) share a group; a run on its own is its own group.
        "group": (point or {}).get("group") or name,
        "vocab_size": m.get("vocab_size"), "d_ff": info["d_ff"], "flops_per_token": fpt,
        "final_step": final_step,
        "final_eval_bits_per_byte": _float(evals[-1].get("bits_per_byte")) if evals else None,
        "cpu_time_s": _float(status.get("cpu_time_s")),
        # Which study of a sweep the run belongs to (a point's `meta.study`, e.g. the demo's
        # "scaling" and "emergence"); the scaling fits use the "scaling" runs when any is marked.
        "study": overrides.get("meta.study") or "",
        "schedule": o.get("schedule"),
        **dict(zip(("entropy_nats_per_token", "entropy_se"), _entropy_from_metadata(meta),
                   strict=True)),
    }
    tokens_per_step = batch * seq_len
    curves = []
    for r in evals:
        step = _int(r["step"])
        tok = _int(r.get("tokens"))
        tok = step * tokens_per_step if tok is None else tok
        curves.append({"name": name, "step": step, "tokens": tok, "flops": float(fpt) * tok,
                       "flops_6nd": 6.0 * n_ne * tok, "eval_loss": _float(r.get("loss")),
                       "n_non_embedding": n_ne, "n_params": info["n_params"],
                       "eval_bits_per_byte": _float(r.get("bits_per_byte"))})
    probes = _probe_rows(run, name, run_status, info, tokens_per_step)
    for p in probes:  # the shape family and study, so the emergence analysis can group runs
        p["n_layers"], p["study"] = row["n_layers"], row["study"]
    row.update(_probe_columns(probes))
    return row, curves, overrides, probes


def _probe_rows(run: RunDir, name: str, status: Status, info: dict[str, Any],
                tokens_per_step: int) -> list[dict[str, Any]]:
    """probes.csv rows of one run: its probes.jsonl records with size and compute at each step
    (records without a task, metric, integer step and k are skipped, like torn lines)."""
    records = [r for r in _read_records(run.probes_path, "probes file")
               if {"task", "k", "metric", "value", "step"} <= set(r)
               and _int(r["step"]) is not None and _int(r["k"]) is not None]
    if not records:
        return []
    last = max(_int(r["step"]) for r in records)
    n_ne, fpt = info["n_non_embedding"], info["flops_per_token"]
    out = []
    for r in records:
        step = _int(r["step"])
        tokens = _int(r.get("tokens")) or step * tokens_per_step
        out.append({"name": name, "status": status.value, "step": step, "final": step == last,
                    "tokens": tokens, "flops": float(fpt) * tokens,
                    "flops_6nd": 6.0 * n_ne * tokens,
                    "n_params": info["n_params"], "n_non_embedding": n_ne, "task": r["task"],
                    "k": _int(r["k"]), "metric": r["metric"], "value": _float(r["value"]),
                    "n": r.get("n") if _number(r.get("n")) else None})
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
    """Run directories under `<workdir>/runs/`, in sweep order then by name (at least one)."""
    if not os.path.exists(workdir):
        raise UserError(f"--workdir={workdir}: does not exist")
    if not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir}: is not a directory")
    runs = os.path.join(workdir, RUNS_DIR)
    if not os.path.isdir(runs):
        if os.path.lexists(runs):
            raise UserError(f"{runs}: is not a directory; a sweep keeps its runs in it")
        raise UserError(f"--workdir={workdir}: no runs/ directory (run `llmjax sweep` first)")
    sweep_path = os.path.join(workdir, _SWEEP)
    sweep = _read_object(sweep_path, "sweep file") or {}
    points = sweep.get("points", [])
    if not isinstance(points, list):
        raise UserError(f"{sweep_path}: points must be a list of run names")
    order = {n: i for i, n in enumerate(points) if isinstance(n, str)}
    try:
        entries = os.listdir(runs)
    except OSError as e:
        raise UserError(f"{runs}: cannot list it: {e.strerror or e}") from None
    names = sorted((n for n in entries if os.path.isdir(os.path.join(runs, n))),
                   key=lambda n: (order.get(n, len(order)), n))
    if not names:
        raise UserError(f"{runs}: holds no run directories (run `llmjax sweep` first)")
    return [os.path.join(runs, n) for n in names]


def collect_results(workdir: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, curves, probes) of every run under `<workdir>/runs/` (columns: module docstring).

    Rows carry `override.<key>` entries for each of the run's overrides. Reads files only; jax is
    imported only for a run trained outside a sweep (no point.json) to count its parameters.
    A missing or empty runs/, or a damaged run file, is a UserError naming it.
    """
    rows, curves, probes = [], [], []
    dirs = _run_dirs(workdir)
    for path in dirs:
        got = _run_row(path)
        if got is None:
            continue
        row, run_curves, overrides, run_probes = got
        for k, v in overrides.items():
            row[f"override.{k}"] = v
        rows.append(row)
        curves.extend(run_curves)
        probes.extend(run_probes)
    if not rows:
        runs = os.path.join(workdir, RUNS_DIR)
        raise UserError(f"{runs}: none of its {len(dirs)} directories is a run (no {CONFIG} "
                        f"or {_POINT} with a config)")
    return rows, curves, probes


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def _write_csv(path: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({c: _cell(r.get(c)) for c in columns})


def _parquet_table(columns: list[str], rows: list[dict[str, Any]]):
    """The pyarrow table of `rows`, or None without pyarrow."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    data = {c: [None if r.get(c) in ("",) else r.get(c) for r in rows] for c in columns}
    # Mixed-type override columns become strings so one table holds them all.
    for c, values in data.items():
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            data[c] = [None if v is None else str(v) for v in values]
    return pa.table(data)


def _write_parquet(path: str, table) -> None:
    import pyarrow.parquet as pq

    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


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


def _check_outputs(workdir: str, paths: list[str]) -> None:
    """Every output can be written: the workdir is writable and no output path is taken by a
    directory (checked before the first file is written)."""
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UserError(f"--workdir={workdir}: not writable")
    for path in paths:
        if os.path.lexists(path) and not os.path.isfile(path):
            raise UserError(f"{path}: exists and is not a file; move it away to write results")


def write_results(workdir: str, collected: tuple[list, list, list] | None = None) -> list[str]:
    """Writes results.csv, curves.csv and probes.csv (and .parquet copies with pyarrow); returns
    the paths written. `collected`: `collect_results(workdir)` if already gathered.

    Each file is written atomically (`llmjax.rundir.atomic_output`): a kill or a failed write
    leaves its previous version readable. Output paths are checked before anything is written; a
    write that fails is a UserError naming the file.
    """
    rows, curves, probes = collected if collected is not None else collect_results(workdir)
    columns = result_columns(rows)
    tables = [(RESULTS_CSV, columns, rows), (CURVES_CSV, list(CURVE_COLUMNS), curves),
              (PROBES_CSV, list(PROBE_COLUMNS), probes)]
    outputs = []  # (path, writer)
    for name, cols, table in tables:
        path = os.path.join(workdir, name)
        outputs.append((path, lambda p, cols=cols, table=table: _write_csv(p, cols, table)))
        parquet = _parquet_table(cols, table)
        if parquet is not None:
            outputs.append((os.path.splitext(path)[0] + ".parquet",
                            lambda p, t=parquet: _write_parquet(p, t)))
    _check_outputs(workdir, [p for p, _ in outputs])
    for path, write in outputs:
        try:
            write(path)
        except OSError as e:
            raise UserError(f"{path}: cannot write it: {e.strerror or e}") from None
    return [p for p, _ in outputs]


def read_csv(path: str) -> list[dict[str, Any]]:
    """Rows of a results/curves/probes CSV with numbers parsed back (empty cells -> None); a
    file that cannot be read as one is a UserError naming it."""
    def parse(v: str) -> Any:
        if v == "":
            return None
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            out = []
            for r in reader:
                if None in r or None in r.values():
                    raise UserError(f"{path}:{reader.line_num}: expected "
                                    f"{len(reader.fieldnames or ())} fields")
                out.append({k: parse(v) for k, v in r.items()})
            return out
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV file ({type(e).__name__})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None


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


__all__ = ["CURVES_CSV", "CURVE_COLUMNS", "PROBES_CSV", "PROBE_COLUMNS", "PROBE_METRICS",
           "RESULTS_CSV", "RESULT_COLUMNS", "RUNS_DIR", "collect_results", "main", "probe_column",
           "read_csv", "result_columns", "write_results"]
