"""The report's emergence analysis on constructed probe tables: a task whose exact match jumps at
a known compute while its cross-entropy falls smoothly, a task at chance everywhere, ICL and
induction scores, and runs probed through training with a phase change in one of them."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from matplotlib.image import imread

from llmjax.scaling.emergence import analyze_emergence, parse_runs
from llmjax.sweep.results import PROBE_COLUMNS

SIZES = np.geomspace(4e3, 1.6e5, 7)
TPP = 20.0  # tokens per parameter
STEPS = (100, 200, 300, 400, 500)  # probed checkpoints of every run
JUMP_BETWEEN = (3, 4)  # recall's exact match jumps between the 4th and 5th size


def _compute(n: float, frac: float = 1.0) -> float:
    return 6.0 * n * TPP * n * frac


TRUE_X0 = 0.5 * sum(math.log10(_compute(SIZES[i])) for i in JUMP_BETWEEN)


def make_rows(*, jump: bool = True, phase_in: int | None = 6) -> list[dict]:
    """probes.csv rows of a 7-size sweep, each run probed at 5 checkpoints (the last final)."""
    rows = []
    for i, n in enumerate(SIZES):
        name = f"s{i}"
        for j, step in enumerate(STEPS):
            frac = (j + 1) / len(STEPS)
            tokens = TPP * n * frac
            base = {"name": name, "status": "complete", "step": step,
                    "final": step == STEPS[-1], "tokens": tokens, "flops": 1.1 * _compute(n, frac),
                    "flops_6nd": _compute(n, frac), "n_params": n + 1000, "n_non_embedding": n}

            def add(task, k, metric, value, count=64, base=base):
                rows.append({**base, "task": task, "k": k, "metric": metric, "value": value,
                             "n": count})

            high = jump and i >= JUMP_BETWEEN[1]
            for k in (0, 4):
                em = (0.85 if high else 0.05) if k == 4 else 0.02
                add("recall", k, "exact_match", em + 0.01 * ((i * 7) % 3 - 1))
                add("recall", k, "exact_match_hard", em * 0.9)
                add("recall", k, "baseline_chance", 0.03)
                add("recall", k, "baseline_chance_hard", 0.03)
                add("recall", k, "baseline_freq", 0.2 if k else 0.0)
                add("recall", k, "normalized_token_edit_distance", 0.9 - 0.05 * i)
                add("recall", k, "target_cross_entropy", 3.0 - 0.2 * i)  # smooth in log C
                add("copy", k, "exact_match", 0.0)
                add("copy", k, "exact_match_hard", 0.0)
                add("copy", k, "baseline_chance", 0.0)
                add("copy", k, "normalized_token_edit_distance", 1.0 - 0.01 * i)
                add("copy", k, "target_cross_entropy", 3.5 - 0.1 * i)
            add("facts", 0, "exact_match", 0.01 * i)
            add("facts", 0, "acc", 0.03 + 0.02 * i)
            add("facts", 0, "baseline_chance", 0.031)
            add("facts", 0, "target_cross_entropy", 4.0 - 0.1 * i)
            pm = 0.7 if (phase_in == i and j >= 3) else 0.05
            add("induction", 0, "prefix_matching_max", pm, 16)
            add("induction", 0, "strongest_layer", 1, 16)
            add("induction", 0, "strongest_head", 0, 16)
            add("icl", 0, "icl_score", -0.02 * i - (0.5 if pm > 0.5 else 0.0))
            add("perplexity", 0, "bits_per_byte", 3.0 - 0.1 * i)
    return rows


def test_a_jump_in_exact_match_is_found_at_its_compute_and_flagged_as_metric_made():
    e = analyze_emergence(make_rows(), n_boot=100)
    assert [r.name for r in e.runs] == [f"s{i}" for i in range(7)]
    assert set(e.tasks) == {"recall", "copy", "facts"}
    assert e.tasks["recall"].panels[0] == "exact_match"
    assert "target_cross_entropy" in e.tasks["recall"].panels
    t = e.transition("recall", 4, "exact_match")
    assert t.result.detected, t.result.reason
    lo, hi = t.result.threshold_ci
    xs = [math.log10(_compute(n)) for n in SIZES]
    # The midpoint lies between the last run below the jump and the first above it.
    assert xs[JUMP_BETWEEN[0]] <= t.result.threshold <= xs[JUMP_BETWEEN[1]]
    assert lo <= TRUE_X0 <= hi or xs[JUMP_BETWEEN[0]] <= lo <= hi <= xs[JUMP_BETWEEN[1]]
    assert t.result.jump == pytest.approx(0.8, abs=0.05)
    # Flat series are never transitions: recall at k=0, copy everywhere.
    assert not e.transition("recall", 0, "exact_match").result.detected
    assert not any(s.result.detected for s in e.transitions if s.task == "copy")
    # Cross-entropy falls linearly in log-size: smooth, no transition; the finding says the
    # exact-match jump may be the metric's.
    assert not e.transition("recall", 4, "target_cross_entropy").result.detected
    text = " ".join(e.findings)
    assert "Transition in recall k=4 exact_match" in text and "Schaeffer" in text
    assert "No induction head" not in text and "reaches 0.700 in s6" in text


def test_phase_change_within_one_run_and_flat_sweeps_say_so():
    e = analyze_emergence(make_rows(jump=False, phase_in=6), n_boot=100)
    phases = {(p.task, p.metric): p for p in e.phase_changes}
    assert phases[("s6:induction", "prefix_matching_max")].result.detected
    assert not phases[("s2:induction", "prefix_matching_max")].result.detected  # flat at 0.05
    assert not any(t.result.detected for t in e.transitions if t.task == "recall")
    flat = analyze_emergence(make_rows(jump=False, phase_in=None), n_boot=50)
    assert flat.detected() == [] and flat.phase_changes
    text = " ".join(flat.findings)
    assert f"No transition detected in any of the {len(flat.transitions)}" in text
    assert "No induction head" in text and "no task is above chance" in text
    assert f"No phase change over training in any of the {len(flat.phase_changes)} run" in text
    assert "No phase change" not in " ".join(e.findings)  # s6's is found and reported


def test_thin_and_unfinished_probes_degrade_to_sentences():
    assert "llmjax probe" in analyze_emergence([]).absent["all"]
    rows = [r for r in make_rows() if r["final"] and r["name"] in ("s0", "s1")]
    rows += [dict(r, status="failed", name="s9") for r in make_rows() if r["name"] == "s3"]
    e = analyze_emergence(rows, n_boot=20)
    assert [r.name for r in e.runs] == ["s0", "s1"] and e.skipped == ["s9 (failed)"]
    assert "training" in e.absent  # one checkpoint per run
    assert not e.detected()  # two sizes: nothing to fit a sigmoid to
    runs, _ = parse_runs([{**rows[0], "value": "nan"}])
    assert runs == []  # a NaN value is no measurement


def _write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_report_has_the_emergence_section_plots_and_json(tmp_path):
    from test_report import RESULT_COLUMNS, make_sweep, run_cli

    results, _ = make_sweep(sizes=7, curves=False)
    _write_csv(tmp_path / "results.csv", RESULT_COLUMNS, results)
    _write_csv(tmp_path / "probes.csv", PROBE_COLUMNS, make_rows())
    rc, out, err = run_cli(["report", f"--workdir={tmp_path}", "--n_boot=30"])
    assert rc == 0, err
    # The headline: recall emerged at k=4 (the largest size beats chance and the frequency
    # baseline by 3 SE, the smallest does not), its exact match jumps while its cross-entropy
    # falls smoothly (the metric's jump), copy stays at chance.
    assert "Emerged with scale: recall k=4 (k=4: hard-subset exact match 0.765" in out
    assert "the jump may be the metric's" in out
    assert "Not detected: copy" in out
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Few-shot probes and emergence" in md and "### Through training" in md
    for name in ("emergence_recall.png", "emergence_copy.png", "emergence_facts.png",
                 "emergence_icl.png", "emergence_training.png"):
        assert f"]({name})" in md
        image = imread(os.path.join(tmp_path, "report", name))
        assert image.shape[0] > 300 and image.std() > 0.01
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    em = report["emergence"]
    assert em["headline"]["n_runs_probed"] == 7
    detected = [t for t in em["transitions"] if t["detected"]]
    assert {(t["task"], t["k"], t["metric"]) for t in detected} >= {("recall", 4, "exact_match")}
    assert all(t["reason"] for t in em["transitions"])
    abilities = {(a["task"], a["k"]): a for a in em["abilities"]}
    assert abilities[("recall", 4)]["emerged"] and not abilities[("recall", 0)]["emerged"]
    assert abilities[("recall", 4)]["smallest_with"] == f"s{JUMP_BETWEEN[1]}"
    assert not abilities[("copy", 4)]["present_in"]
    assert {p["detected"] for p in em["phase_changes"]} == {True, False}
