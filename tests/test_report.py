"""The scaling report on sweep tables generated from a known law: fits, plots, report.md, errors.

The tables are synthetic on purpose: the report consumes results.csv / curves.csv, and a known
L(N, D) = E + A/N^alpha + B/D^beta lets the tests check the fitted numbers against the truth.
With alpha = beta and D = 20 N the final losses follow L(N) = E + const / N^alpha exactly, so
alpha_N = 0.3, and every compute-optimal exponent is beta / (alpha + beta) = 0.5.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from llmjax import cli
from llmjax.report import analyze, write_plots, write_report

LAW = {"E": 1.8, "A": 60.0, "B": 200.0, "alpha": 0.3, "beta": 0.3}
TRUE_ALPHA_N = 0.3
TRUE_A = 0.5  # beta / (alpha + beta)
TOKENS_PER_PARAM = 20.0
VOCAB, D_MODEL = 256, 64
RESULT_COLUMNS = [
    "name", "status", "error", "n_params", "n_non_embedding", "n_embedding", "d_model",
    "n_layers", "n_heads", "seq_len", "batch_size", "lr", "parametrization", "steps", "tokens",
    "tokens_per_param", "flops_6nd", "flops", "final_train_loss", "final_eval_loss",
    "best_eval_loss", "wall_time_s", "budget", "seed", "override.optimizer.lr",
]
CURVE_COLUMNS = ["name", "step", "tokens", "flops", "flops_6nd", "eval_loss", "n_non_embedding",
                 "n_params"]


def law_loss(N: float, D: float) -> float:
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def _run_row(name, N, D, loss, *, lr=1e-3, budget="", status="complete", error=""):
    emb = VOCAB * D_MODEL
    done = status == "complete"
    return {
        "name": name, "status": status, "error": error, "n_params": int(N) + emb,
        "n_non_embedding": int(N), "n_embedding": emb, "d_model": D_MODEL, "n_layers": 2,
        "n_heads": 2, "seq_len": 128, "batch_size": 8, "lr": lr, "parametrization": "sp",
        "steps": int(D // 1024), "tokens": int(D), "tokens_per_param": D / N,
        "flops_6nd": 6 * int(N) * int(D), "flops": 6.6 * N * D,
        "final_train_loss": loss * 0.98 if done else "", "final_eval_loss": loss if done else "",
        "best_eval_loss": loss if done else "", "wall_time_s": 1e-6 * N, "budget": budget,
        "seed": 0, "override.optimizer.lr": lr,
    }


def _curve_rows(name, N, D, final_loss, rng, noise, n_points):
    """Eval points along training: the law at the tokens seen, a warmup bump in the first 10%."""
    out = []
    for t in np.linspace(D / n_points, D, n_points):
        if t >= D:
            loss = final_loss
        else:
            warm = max(0.0, 1.0 - t / (0.1 * D))
            loss = (law_loss(N, t) + 1.5 * warm) * math.exp(rng.normal(0.0, noise))
        out.append({
            "name": name, "step": int(t // 1024), "tokens": int(t), "flops": 6.6 * N * t,
            "flops_6nd": 6 * int(N) * int(t), "eval_loss": loss, "n_non_embedding": int(N),
            "n_params": int(N) + VOCAB * D_MODEL,
        })
    return out


def make_sweep(
    *, sizes: int = 8, budgets=(), noise: float = 0.002, seed: int = 0, curve_points: int = 16,
    failed: bool = False, duplicate: bool = False, curves: bool = True,
):
    """(results rows, curve rows) of a sweep drawn from LAW with log-normal noise.

    sizes runs at D = 20 N from N = 2e5 to 2e7; per budget C, 5 iso-FLOP runs around the true
    N_opt; failed: one run that diverged; duplicate: a second learning rate at the middle size
    that ends worse (the report must keep the better one).
    """
    rng = np.random.default_rng(seed)
    rows, curve_rows = [], []

    def add(name, N, D, **kw):
        loss = law_loss(N, D) * math.exp(rng.normal(0.0, noise))
        rows.append(_run_row(name, N, D, loss, **kw))
        if curves:
            curve_rows.extend(_curve_rows(name, N, D, loss, rng, noise, curve_points))

    for i, N in enumerate(np.geomspace(2e5, 2e7, sizes)):
        add(f"size{i}", N, TOKENS_PER_PARAM * N)
    for C in budgets:
        n_opt = (LAW["A"] / LAW["B"]) ** (1 / (LAW["alpha"] + LAW["beta"])) * math.sqrt(C / 6)
        for j, N in enumerate(np.geomspace(n_opt / 8, n_opt * 8, 5)):
            add(f"iso{C:.0e}_{j}", N, C / (6 * N), budget=C)
    if duplicate:
        mid = rows[sizes // 2]
        N, D = mid["n_non_embedding"], mid["tokens"]
        rows.append(_run_row("size_mid_lr3e-3", N, D, mid["final_eval_loss"] * 1.05, lr=3e-3))
    if failed:
        rows.append(_run_row("size_diverged", 3e6, 6e7, float("nan"), status="failed",
                             error="loss is NaN at step 40"))
    return rows, curve_rows


def write_sweep(directory, rows, curve_rows=None) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if curve_rows is not None:
        with open(os.path.join(directory, "curves.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            writer.writerows(curve_rows)
    return str(directory)


def run_cli(argv):
    """llmjax.cli.main in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def check_png(path: str) -> None:
    """A readable PNG of a real figure: big enough, not blank."""
    assert os.path.getsize(path) > 10_000, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 600, img.shape
    rgb = img[..., :3]
    non_white = np.mean(np.any(rgb < 0.9, axis=-1))
    assert non_white > 0.02, f"{path} is nearly blank ({non_white:.3%} non-white pixels)"
    assert rgb.std() > 0.05


def ci_from_markdown(text: str, label: str) -> tuple[float, float, float]:
    m = re.search(re.escape(label) + r" = ([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", text)
    assert m, f"{label} with an interval not found in report.md"
    return tuple(float(g) for g in m.groups())


@pytest.fixture(scope="module")
def size_sweep(tmp_path_factory):
    """Fixed tokens-per-parameter sweep with curves, a diverged run and a worse learning rate,
    reported through the CLI."""
    d = tmp_path_factory.mktemp("size_sweep")
    rows, curve_rows = make_sweep(failed=True, duplicate=True)
    write_sweep(d, rows, curve_rows)
    rc, out, err = run_cli(["report", f"--workdir={d}", "--n_boot=100"])
    assert rc == 0, err
    md = (d / "report" / "report.md").read_text()
    report = json.loads((d / "report" / "report.json").read_text())
    return {"dir": d, "stdout": out, "md": md, "json": report, "headline": report["headline"]}


def test_cli_prints_report_path_and_headline_numbers(size_sweep):
    out = size_sweep["stdout"]
    assert f"report: {size_sweep['dir'] / 'report' / 'report.md'}" in out
    assert "L(N): alpha_N = " in out and "Held-out prediction, L(N) power law: size7" in out
    assert "Held-out prediction, Approach 3: size7" in out
    assert size_sweep["json"]["report"] == str(size_sweep["dir"] / "report" / "report.md")


def test_report_recovers_the_loss_exponent_with_an_interval_around_it(size_sweep):
    value, lo, hi = ci_from_markdown(size_sweep["md"], "alpha_N")
    assert abs(value - TRUE_ALPHA_N) < 0.02
    assert lo < TRUE_ALPHA_N < hi
    assert hi - lo < 0.1  # the interval says something
    head = size_sweep["headline"]["alpha_N"]
    assert head["value"] == pytest.approx(value, abs=5e-4)
    e = size_sweep["headline"]["E"]
    assert e["ci"][0] < LAW["E"] < e["ci"][1]


def test_plots_are_real_pngs(size_sweep):
    out = size_sweep["dir"] / "report"
    for name in ("loss_vs_compute.png", "loss_vs_params.png", "nopt_vs_compute.png"):
        check_png(str(out / name))
        assert f"]({name})" in size_sweep["md"]
    assert not (out / "isoflop.png").exists()  # no budgets in this sweep


def test_extrapolation_to_the_largest_model_is_accurate_on_law_data(size_sweep):
    ex = size_sweep["headline"]["extrapolation"]
    assert set(ex) == {"L(N) power law", "Approach 3"}
    for method in ex.values():
        assert method["runs"] == ["size7"]
        assert abs(method["relative_error"][0]) < 0.02
    expected = law_loss(2e7, TOKENS_PER_PARAM * 2e7)
    assert ex["L(N) power law"]["predicted"][0] == pytest.approx(expected, rel=0.02)
    assert "| L(N) power law | size7 |" in size_sweep["md"]


def test_failed_and_worse_learning_rate_runs_are_listed_not_fitted(size_sweep):
    md, head = size_sweep["md"], size_sweep["headline"]
    assert head["n_runs"] == 10 and head["n_failed"] == 1 and head["n_used"] == 8
    failed = md.split("## Failed or unused runs")[1].split("##")[0]
    assert "size_diverged" in failed and "loss is NaN at step 40" in failed
    assert "size_mid_lr3e-3" in md and "another run at this (N, D) has lower loss" in md
    assert "1 run(s) dropped this way" in md


def test_approach3_uses_curve_points_and_says_final_points_are_collinear(size_sweep):
    a3 = size_sweep["headline"]["chinchilla"]
    lo, hi = a3["a"]["ci"]
    assert lo < TRUE_A < hi
    assert abs(a3["alpha"]["value"] - LAW["alpha"]) < 0.05
    md = size_sweep["md"]
    assert "**Identification.**" in md and "fixed tokens-per-parameter" in md
    assert "8 final losses and" in md and "intermediate eval points" in md


def test_approach1_warns_that_a_fixed_ratio_sweep_fixes_its_exponent(size_sweep):
    a1 = size_sweep["headline"]["a"]["Approach 1"]
    assert a1["ci"] is not None
    assert "where the smaller run ended" in size_sweep["md"]


def test_fit_choices_are_stated(size_sweep):
    choices = size_sweep["md"].split("## Fit choices")[1]
    for phrase in ("non-embedding parameters", "final eval loss", "δ = 0.001",
                   "paper grid, 4500 starts", "100 bootstrap replicates", "Li et al. 2025"):
        assert phrase in choices, phrase


def test_isoflop_sweep_gives_approach2(tmp_path):
    rows, curve_rows = make_sweep(budgets=(1e14, 1e15, 1e16))
    analysis = analyze(rows, curve_rows, n_boot=100)
    sec = analysis.approach2
    assert sec is not None, analysis.absent
    assert abs(sec.params["a"].value - TRUE_A) < 0.05
    assert sec.params["a"].lo < TRUE_A < sec.params["a"].hi
    assert np.all(sec.fit.vertex_in_range)
    true_n_opt = (LAW["A"] / LAW["B"]) ** (1 / 0.6) * np.sqrt(sec.fit.budgets / 6)
    np.testing.assert_allclose(sec.fit.n_opt_per_budget, true_n_opt, rtol=0.15)
    plots = write_plots(analysis, str(tmp_path))
    check_png(plots["isoflop.png"])
    # The size sweep alone (runs without a budget) still defines L(N).
    assert len(analysis.loss_vs_n.x) == 8


def test_two_runs_degrade_to_sentences(tmp_path):
    rows, curve_rows = make_sweep(sizes=2)
    result = write_report(write_sweep(tmp_path, rows, curve_rows), n_boot=20)
    md = open(result.report_md).read()
    assert "L(N) needs at least 3 model sizes" in md
    assert "Approach 3 needs at least 3 model sizes" in md
    assert "The extrapolation check needs the L(N) fit" in md
    assert "Approach 2 needs iso-FLOP runs" in md
    assert "alpha_N" not in result.headline
    check_png(result.plots["loss_vs_params.png"])


def test_all_runs_failed_still_writes_a_report(tmp_path):
    rows = [_run_row(f"r{i}", 1e6 * (i + 1), 2e7 * (i + 1), 0.0, status="failed",
                     error="out of memory") for i in range(3)]
    result = write_report(write_sweep(tmp_path, rows), n_boot=20)
    md = open(result.report_md).read()
    assert "No usable runs" in md
    failed = md.split("## Failed or unused runs")[1].split("##")[0]
    assert failed.count("out of memory") == 3
    assert result.plots == {} and "![" not in md
    assert result.headline["n_used"] == 0


def test_no_curves_fits_loss_vs_n_and_explains_the_rest(tmp_path):
    rows, _ = make_sweep(curves=False)
    result = write_report(write_sweep(tmp_path, rows), n_boot=50)
    md = open(result.report_md).read()
    assert abs(result.headline["alpha_N"]["value"] - TRUE_ALPHA_N) < 0.02
    assert "Approach 1 needs eval curves (curves.csv)" in md
    assert "Approach 3 not fitted" in md and "N and D move together" in md
    assert not os.path.exists(os.path.join(result.out_dir, "nopt_vs_compute.png"))


GOOD_HEADER = ",".join(RESULT_COLUMNS)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "is empty"),
        (GOOD_HEADER + "\n", "has a header but no runs"),
        ("a,b,c\n1,2,3\n", "lacks column(s) name, status, n_non_embedding"),
        (GOOD_HEADER + "\nx,complete,,1\n", "expected 25 fields, got 4"),
        (GOOD_HEADER + "\n" + "r,complete,," + ",".join(["1"] * 16) + ",oops,"
         + ",".join(["1"] * 5), "final_eval_loss is not a number: 'oops'"),
        (GOOD_HEADER + "\n" + "r,ok,," + ",".join(["1"] * 22),
         "status 'ok' is not one of pending, running, complete, failed, interrupted"),
        ("\x00\xff\xfe garbage \x00", "results.csv"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, content, message):
    d = tmp_path / "sweep"
    if content is not None:
        d.mkdir()
        (d / "results.csv").write_bytes(content.encode("latin-1"))
    rc, out, err = run_cli(["report", f"--workdir={d}"])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(d) in lines[0] and message in lines[0], lines[0]


def test_bad_flag_is_a_one_line_error():
    rc, _, err = run_cli(["report", "--workdir=x", "--n_boot=1"])
    assert rc == 2 and "n_boot" in err and len(err.strip().splitlines()) == 1


def test_missing_tables_tell_the_user_what_to_run(tmp_path):
    rc, _, err = run_cli(["report", f"--workdir={tmp_path}"])
    assert rc == 2 and f"llmjax results --workdir={tmp_path}" in err


def test_missing_tables_are_collected_from_runs_first(tmp_path):
    """Sweep-style run directories (point.json, status.json, metrics.jsonl) and no results.csv:
    the report runs the real collector, then fits."""
    rows, _ = make_sweep(sizes=6, curves=False)
    for r in rows:
        run = tmp_path / "runs" / r["name"]
        run.mkdir(parents=True)
        n, tokens = r["n_non_embedding"], r["tokens"]
        config = {"seed": 0, "steps": tokens // 1024,
                  "model": {"d_model": D_MODEL, "n_layers": 2, "n_heads": 2, "vocab_size": VOCAB},
                  "data": {"seq_len": 128, "batch_size": 8}, "optimizer": {"lr": 1e-3}}
        cost = {"n_params": n + VOCAB * D_MODEL, "n_non_embedding": n,
                "n_embedding": VOCAB * D_MODEL, "flops_per_token": 6 * n, "steps": tokens // 1024}
        (run / "point.json").write_text(json.dumps({"name": r["name"], "config": config,
                                                    "cost": cost, "overrides": {}}))
        (run / "status.json").write_text(json.dumps({"status": "complete", "wall_time_s": 1.0}))
        (run / "metrics.jsonl").write_text(json.dumps(
            {"kind": "eval", "step": tokens // 1024, "tokens": tokens,
             "loss": r["final_eval_loss"]}) + "\n")
    rc, out, err = run_cli(["report", f"--workdir={tmp_path}", "--n_boot=20"])
    assert rc == 0, err
    assert f"collected {tmp_path}/runs into {tmp_path}/results.csv" in out
    assert (tmp_path / "results.csv").exists() and (tmp_path / "report" / "report.md").exists()
    assert "runs: 6 (6 in the scaling fits" in out and "alpha_N = " in out


def test_console_entry_reports_bad_workdir_in_a_subprocess(tmp_path):
    missing = tmp_path / "nope"
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax", "report", f"--workdir={missing}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: workdir {missing} does not exist or is not a directory"
