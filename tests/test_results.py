"""`llmjax results`: results.csv / curves.csv from run directories on disk (a real training run
made outside any sweep, and sweep-style runs: failed, pending, with a torn metrics line)."""

import csv
import json
import math
import os

import pytest

from llmjax.errors import UserError
from llmjax.sweep.results import (
    CURVE_COLUMNS,
    RESULT_COLUMNS,
    collect_results,
    main,
    read_csv,
    write_results,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        if isinstance(obj, str):
            f.write(obj)
        else:
            json.dump(obj, f)


def _sweep_run(workdir, name, *, status, metrics, budget=None, overrides=None, fpt=1000,
               n_non_embedding=500, steps=10, batch=4, seq_len=8, error=None):
    """A run directory as `llmjax sweep` leaves it (point.json, status.json, metrics.jsonl)."""
    run = os.path.join(workdir, "runs", name)
    config = {"seed": 3, "steps": steps,
              "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 0,
                        "parametrization": "sp", "d_ff": 48},
              "data": {"seq_len": seq_len, "batch_size": batch, "tokenizer": "byte"},
              "optimizer": {"lr": 0.01}}
    overrides = overrides or {"name": name}
    _write(os.path.join(run, "point.json"), {
        "name": name, "overrides": overrides, "budget": budget, "config": config,
        "cost": {"n_params": n_non_embedding + 100, "n_non_embedding": n_non_embedding,
                 "n_embedding": 100, "flops_per_token": fpt, "steps": steps}})
    _write(os.path.join(run, "overrides.json"), overrides)
    _write(os.path.join(run, "status.json"), {"status": status, "error": error,
                                              "wall_time_s": 12.5, "cpu_time_s": 20.0})
    if metrics is not None:
        _write(os.path.join(run, "metrics.jsonl"), metrics)
    return run


def _lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_sweep_style_runs_become_rows_and_curves(tmp_path):
    w = str(tmp_path)
    _write(os.path.join(w, "sweep.json"), {"points": ["b_run", "a_run", "failed", "pending"]})
    _sweep_run(w, "b_run", status="complete", budget=1e9,
               overrides={"name": "b_run", "budget": 1e9, "model.d_model": 16},
               metrics=_lines(
                   {"kind": "train", "step": 5, "loss": 3.0, "tokens": 160},
                   {"kind": "eval", "step": 5, "loss": 2.5, "bits_per_byte": 3.6, "tokens": 160},
                   {"kind": "train", "step": 10, "loss": 2.0, "tokens": 320},
                   {"kind": "eval", "step": 10, "loss": 2.7, "bits_per_byte": 3.9,
                    "tokens": 320}))
    _sweep_run(w, "a_run", status="complete", metrics=_lines(
        {"kind": "train", "step": 10, "loss": 1.5, "tokens": 320},
        {"kind": "eval", "step": 10, "loss": 1.25, "bits_per_byte": 1.8, "tokens": 320},
    ) + '{"kind": "eval", "step": 1')  # a line torn by a kill
    _sweep_run(w, "failed", status="failed", error="error: non-finite loss at step 2",
               overrides={"name": "failed", "optimizer.lr": 1e9},
               metrics=_lines({"kind": "train", "step": 1, "loss": 5.5, "tokens": 32},
                              {"kind": "eval", "step": 1, "loss": "NaN", "tokens": 32}))
    _sweep_run(w, "pending", status="pending", metrics=None)

    rows, curves, probes = collect_results(w)
    assert probes == []  # no run was probed
    assert [r["name"] for r in rows] == ["b_run", "a_run", "failed", "pending"]  # sweep order
    b, a, failed, pending = rows
    tokens = 10 * 4 * 8
    assert b["tokens"] == tokens and b["steps"] == 10
    assert b["flops"] == 1000 * tokens and b["flops_6nd"] == 6 * 500 * tokens
    assert b["tokens_per_param"] == pytest.approx(tokens / 500)
    assert (b["n_params"], b["n_non_embedding"], b["n_embedding"]) == (600, 500, 100)
    assert b["final_train_loss"] == 2.0
    assert b["final_eval_loss"] == 2.7 and b["best_eval_loss"] == 2.5
    assert b["budget"] == 1e9 and b["override.model.d_model"] == 16
    assert b["wall_time_s"] == 12.5 and b["cpu_time_s"] == 20.0 and b["seed"] == 3
    assert (b["d_model"], b["n_layers"], b["n_heads"], b["lr"]) == (16, 2, 2, 0.01)
    assert b["status"] == "complete" and b["error"] is None
    assert a["final_eval_loss"] == 1.25 and a["budget"] is None
    assert failed["status"] == "failed" and "non-finite" in failed["error"]
    assert math.isnan(failed["final_eval_loss"]) and failed["best_eval_loss"] is None
    assert failed["override.optimizer.lr"] == 1e9
    assert pending["status"] == "pending" and pending["final_eval_loss"] is None
    assert pending["final_step"] == 0

    assert [(c["name"], c["step"]) for c in curves] == [("b_run", 5), ("b_run", 10),
                                                        ("a_run", 10), ("failed", 1)]
    c = curves[0]
    assert c["tokens"] == 160 and c["flops"] == 1000 * 160 and c["flops_6nd"] == 6 * 500 * 160
    assert c["eval_loss"] == 2.5 and c["n_non_embedding"] == 500 and c["n_params"] == 600

    paths = write_results(w)
    assert os.path.join(w, "results.csv") in paths and os.path.join(w, "curves.csv") in paths
    with open(os.path.join(w, "results.csv")) as f:
        header = next(csv.reader(f))
    assert header[:len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert header[len(RESULT_COLUMNS):] == ["override.budget", "override.model.d_model",
                                            "override.name", "override.optimizer.lr"]
    back = read_csv(os.path.join(w, "results.csv"))
    assert back[0]["flops"] == 1000 * tokens and back[0]["override.model.d_model"] == 16
    assert back[1]["override.model.d_model"] is None and back[3]["final_eval_loss"] is None
    with open(os.path.join(w, "curves.csv")) as f:
        assert next(csv.reader(f)) == list(CURVE_COLUMNS)
    assert len(read_csv(os.path.join(w, "curves.csv"))) == 4


def test_parquet_copy_when_pyarrow_is_installed(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    w = str(tmp_path)
    _sweep_run(w, "r", status="complete", metrics=_lines(
        {"kind": "train", "step": 10, "loss": 1.5, "tokens": 320},
        {"kind": "eval", "step": 10, "loss": 1.25, "tokens": 320}))
    write_results(w)
    table = pq.read_table(os.path.join(w, "results.parquet")).to_pylist()
    assert table[0]["name"] == "r" and table[0]["final_eval_loss"] == 1.25
    assert pq.read_table(os.path.join(w, "curves.parquet")).num_rows == 1


def test_run_trained_outside_a_sweep(tmp_path, capsys):
    """A plain `train()` run under runs/: counted from its config.json with the model's own
    parameter count, status from the status.json the loop wrote, wall time from its metadata."""
    from llmjax.config import load_config, parse_experiment
    from llmjax.model.flops import flops_per_token, param_counts
    from llmjax.train.loop import train

    config = load_config(TINY, ["steps=4", "eval_every=2", "eval_batches=1", "log_every=1",
                                "checkpoint_every=4", "tensorboard=false",
                                f"data.data_dir={tmp_path / 'data'}",
                                "data.synthetic.num_train_docs=200",
                                "data.synthetic.num_validation_docs=20"])
    run = tmp_path / "sweep" / "runs" / "by_hand"
    train(config, str(run), progress=False)
    assert main([f"--workdir={tmp_path / 'sweep'}"]) == 0
    assert "1 runs (1 complete)" in capsys.readouterr().out
    (row,) = read_csv(tmp_path / "sweep" / "results.csv")
    mcfg = parse_experiment(config).model_config(259)
    counts = param_counts(mcfg)
    tokens = 4 * 16 * 64
    assert row["name"] == "by_hand" and row["status"] == "complete"
    assert (row["n_params"], row["n_non_embedding"]) == (counts.total, counts.non_embedding)
    assert row["flops"] == pytest.approx(flops_per_token(mcfg, 64).training * tokens)
    assert row["tokens"] == tokens and row["steps"] == 4
    metrics = [json.loads(x) for x in open(run / "metrics.jsonl")]
    evals = [m for m in metrics if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [2, 4]
    assert row["final_eval_loss"] == pytest.approx(evals[-1]["loss"])
    assert row["wall_time_s"] > 0
    curves = read_csv(tmp_path / "sweep" / "curves.csv")
    assert [c["step"] for c in curves] == [2, 4]


def test_bad_workdir_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="--workdir is required"):
        main([])
    with pytest.raises(UserError, match="no runs/"):
        main([f"--workdir={tmp_path}"])
    with pytest.raises(UserError, match="unknown argument"):
        main(["--bogus"])


def test_probe_records_become_columns_and_probes_csv(tmp_path, capsys):
    """probes.jsonl of two steps: results.csv gets the last step's headline metrics as columns,
    probes.csv every record with the run's size and the compute at that step."""
    w = str(tmp_path)
    run = _sweep_run(w, "r", status="complete", fpt=1000, n_non_embedding=500, metrics=_lines(
        {"kind": "train", "step": 10, "loss": 1.5, "tokens": 320}))
    _sweep_run(w, "unprobed", status="complete", metrics=None)
    records = []
    for step, em in ((5, 0.25), (10, 0.5)):
        records += [
            {"task": "recall", "k": 0, "metric": "exact_match", "value": em / 2, "step": step,
             "n": 32, "tokens": step * 32},
            {"task": "recall", "k": 4, "metric": "exact_match", "value": em, "step": step,
             "n": 32, "tokens": step * 32},
            {"task": "recall", "k": 4, "metric": "brier_score", "value": 0.1, "step": step,
             "n": 32, "tokens": step * 32},
            {"task": "icl", "k": 0, "metric": "icl_score", "value": -0.1 * step, "step": step,
             "n": 64, "tokens": step * 32}]
    _write(os.path.join(run, "probes.jsonl"), _lines(*records) + '{"task": "icl", "k"')
    assert main([f"--workdir={w}"]) == 0
    assert "1 probed (8 probe records)" in capsys.readouterr().out

    rows = {r["name"]: r for r in read_csv(os.path.join(w, "results.csv"))}
    r = rows["r"]
    assert r["probe_step"] == 10
    assert r["probe.recall.k4.exact_match"] == 0.5 and r["probe.recall.k0.exact_match"] == 0.25
    assert r["probe.icl.icl_score"] == pytest.approx(-1.0)
    assert "probe.recall.k4.brier_score" not in r  # only the headline metrics become columns
    assert rows["unprobed"]["probe.recall.k4.exact_match"] is None
    with open(os.path.join(w, "results.csv")) as f:
        header = next(csv.reader(f))
    assert header[-4:] == ["probe_step", "probe.icl.icl_score", "probe.recall.k0.exact_match",
                           "probe.recall.k4.exact_match"]

    probes = read_csv(os.path.join(w, "probes.csv"))
    assert len(probes) == 8 and {p["name"] for p in probes} == {"r"}
    p = next(p for p in probes if p["step"] == 5 and p["metric"] == "icl_score")
    assert p["tokens"] == 160 and p["flops"] == 1000 * 160 and p["flops_6nd"] == 6 * 500 * 160
    assert p["final"] == "False" and p["value"] == pytest.approx(-0.5)
    assert p["n_non_embedding"] == 500 and p["n"] == 64 and p["status"] == "complete"


def test_status_column_holds_a_status_value(tmp_path):
    """status.json decides; a run without one (trained by hand before the loop wrote it) is
    complete only when its metrics reach the last step."""
    from llmjax.rundir import RunDir, Status

    w = str(tmp_path)
    _sweep_run(w, "done", status="interrupted", metrics=_lines(
        {"kind": "train", "step": 10, "loss": 1.5, "tokens": 320}))
    for name, last in (("legacy_done", 10), ("legacy_partial", 4), ("legacy_empty", None)):
        run = RunDir(_sweep_run(w, name, status="complete", metrics=None if last is None else
                                _lines({"kind": "train", "step": last, "loss": 2.0})))
        os.unlink(run.status_path)
    rows = {r["name"]: r for r in collect_results(w)[0]}
    assert {n: r["status"] for n, r in rows.items()} == {
        "done": "interrupted", "legacy_done": "complete", "legacy_partial": "running",
        "legacy_empty": "pending"}
    assert all(type(r["status"]) is str and r["status"] in set(Status) for r in rows.values())
    write_results(w)
    assert [r["status"] for r in read_csv(os.path.join(w, "results.csv"))] == [
        "interrupted", "complete", "pending", "running"]  # by name
