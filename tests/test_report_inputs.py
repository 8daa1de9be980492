"""Bad input to `llmjax results` and `llmjax report`, and failed writes, through the real CLI.

Every case runs `python -m llmjax ...` as a subprocess on a small constructed sweep directory and
checks the contract of "runs you can trust": exit code 2, exactly one stderr line starting with
`error:` that names the offending file, no traceback, and nothing written (the directory tree is
byte-identical afterwards). The write tests make a real write fail part-way (a file-size limit,
RLIMIT_FSIZE, so the kernel refuses the bytes past it; a figure whose drawing raises) and check
that the previous file is intact, byte for byte, and that no temporary file is left behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import pytest
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from test_report import CURVE_COLUMNS, RESULT_COLUMNS, _run_row, make_sweep, write_sweep

from llmjax.report import AnalysisOptions, write_report
from llmjax.report.plots import save_figures
from llmjax.rundir import RunDir
from llmjax.sweep.results import PROBE_COLUMNS, write_results

GARBAGE = bytes(range(256)) * 4  # NUL, invalid UTF-8, control characters
# Quick fits: these tests are about files, not numbers.
FAST = ("--n_boot=20", "--approach3_points=final", "--chinchilla_grid=coarse")
FAST_OPTIONS = AnalysisOptions(n_boot=20, approach3_points="final", chinchilla_grid="coarse")


# --------------------------------------------------------------------------- helpers


# `python -m llmjax ARGS` under a file-size limit (RLIMIT_FSIZE): the kernel refuses the bytes
# of a write past it with EFBIG (SIGXFSZ ignored, as CPython does anyway), a real failure half-way
# through writing a file. Set in the child before llmjax is imported (no preexec_fn: the test
# process has jax's threads).
_LIMITED = """
import resource, runpy, signal, sys
limit = int(sys.argv.pop(1))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "llmjax"
runpy.run_module("llmjax", run_name="__main__")
"""


def llmjax(*args: str, fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m llmjax ARGS` in a subprocess; fsize_limit: the largest file it may write."""
    cmd = [sys.executable, "-m", "llmjax", *args]
    if fsize_limit is not None:
        cmd = [sys.executable, "-c", _LIMITED, str(fsize_limit), *args]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def tree(root) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir') of everything under root: what 'nothing written' means."""
    out = {}
    for base, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), root)] = "dir"
        for f in files:
            path = os.path.join(base, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, (name, line)
    return line


def write_csv(path, columns, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def probe_rows(names=("size0", "size1")) -> list[dict]:
    return [{"name": n, "status": "complete", "step": 10, "final": True, "tokens": 1e6,
             "flops": 1e12, "flops_6nd": 1e12, "n_params": 1e5, "n_non_embedding": 1e5,
             "task": "recall", "k": k, "metric": "exact_match", "value": 0.1 * k, "n": 32}
            for n in names for k in (0, 4)]


def good_tables(d) -> None:
    """A small valid sweep: results.csv, curves.csv, probes.csv."""
    rows, curves = make_sweep(sizes=3, curve_points=4)
    write_sweep(d, rows, curves)
    write_csv(d / "probes.csv", PROBE_COLUMNS, probe_rows())


def sweep_run(workdir, name, *, status="complete", steps=10) -> RunDir:
    """A run directory as `llmjax sweep` leaves it (point.json, status.json, metrics.jsonl)."""
    run = RunDir(str(workdir / "runs" / name)).create()
    config = {"seed": 0, "steps": steps,
              "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 0,
                        "parametrization": "sp", "d_ff": 48},
              "data": {"seq_len": 8, "batch_size": 4, "tokenizer": "byte"},
              "optimizer": {"lr": 0.01}}
    cost = {"n_params": 600, "n_non_embedding": 500, "n_embedding": 100,
            "flops_per_token": 1000, "steps": steps}
    with open(run.file("point.json"), "w") as f:
        json.dump({"name": name, "config": config, "cost": cost, "overrides": {}}, f)
    with open(run.status_path, "w") as f:
        json.dump({"status": status, "wall_time_s": 1.0}, f)
    with open(run.metrics_path, "w") as f:
        for step in (5, steps):
            f.write(json.dumps({"kind": "train", "step": step, "loss": 2.0, "tokens": step * 32})
                    + "\n")
            f.write(json.dumps({"kind": "eval", "step": step, "loss": 2.5, "tokens": step * 32})
                    + "\n")
    return run


def good_runs(workdir) -> list[RunDir]:
    return [sweep_run(workdir, "a"), sweep_run(workdir, "b")]


# --------------------------------------------------------------------------- llmjax report


def _results(d):
    return d / "results.csv"


def _replace(path_of, content: bytes):
    def make(d):
        path = path_of(d)
        path.write_bytes(content)
        return path
    return make


GOOD_HEADER = ",".join(RESULT_COLUMNS).encode()
RESULT_ROW = _run_row("r", 1e6, 2e7, 3.0)


def _results_row(**changes) -> bytes:
    row = {**RESULT_ROW, **changes}
    return GOOD_HEADER + b"\n" + ",".join(str(row[c]) for c in RESULT_COLUMNS).encode() + b"\n"


def _curves(d):
    return d / "curves.csv"


def _probes(d):
    return d / "probes.csv"


def _dir_in_place_of(name):
    def make(d):
        (d / name).unlink()
        (d / name).mkdir()
        (d / name / "x").write_text("")
        return d / name
    return make


REPORT_CASES = {
    # results.csv
    "results_empty": (_replace(_results, b""), "is empty"),
    "results_blank": (_replace(_results, b"\n\n"), "is empty"),
    "results_header_only": (_replace(_results, GOOD_HEADER + b"\n"), "has a header but no runs"),
    "results_missing_columns": (_replace(_results, b"name,loss\nr,3.0\n"),
                                "lacks column(s) status, n_non_embedding, tokens"),
    "results_ragged_row": (_replace(_results, GOOD_HEADER + b"\nr,complete,,1\n"),
                           "expected 25 fields, got 4"),
    "results_not_a_number": (_replace(_results, _results_row(final_eval_loss="low")),
                             "final_eval_loss is not a number: 'low'"),
    "results_tokens_not_a_number": (_replace(_results, _results_row(tokens="1e9x")),
                                    "tokens is not a number"),
    "results_unknown_status": (_replace(_results, _results_row(status="ok")),
                               "status 'ok' is not one of pending, running, complete"),
    "results_binary_garbage": (_replace(_results, GARBAGE), "not a readable CSV file"),
    "results_is_a_directory": (_dir_in_place_of("results.csv"), "is a directory"),
    # curves.csv
    "curves_empty": (_replace(_curves, b""), "is empty"),
    "curves_missing_columns": (_replace(_curves, b"name,step\nsize0,1\n"),
                               "lacks column(s) tokens, eval_loss"),
    "curves_not_a_number": (_replace(_curves, (",".join(CURVE_COLUMNS) + "\nsize0,1,1000,1,1,"
                                               "nan?,5,6\n").encode()),
                            "eval_loss is not a number: 'nan?'"),
    "curves_binary_garbage": (_replace(_curves, GARBAGE), "not a readable CSV file"),
    # probes.csv
    "probes_empty": (_replace(_probes, b""), "is empty"),
    "probes_missing_columns": (_replace(_probes, b"name,status,step\nsize0,complete,1\n"),
                               "lacks column(s) task, k, metric, value"),
    "probes_not_a_number": (_replace(_probes, (",".join(PROBE_COLUMNS) + "\nsize0,complete,10,"
                                               "True,1,1,1,1,1,recall,4,exact_match,high,32,2,\n"
                                               ).encode()),
                            "value is not a number: 'high'"),
    "probes_unknown_status": (_replace(_probes, (",".join(PROBE_COLUMNS) + "\nsize0,done,10,"
                                                 "True,1,1,1,1,1,recall,4,exact_match,0.5,32,2,\n"
                                                 ).encode()),
                              "status 'done' is not one of"),
    "probes_binary_garbage": (_replace(_probes, GARBAGE), "not a readable CSV file"),
}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_rejects_a_bad_table_in_one_line_and_writes_nothing(tmp_path, case):
    d = tmp_path / "sweep"
    good_tables(d)
    make, message = REPORT_CASES[case]
    bad = make(d)
    before = tree(tmp_path)
    line = assert_one_line_error(llmjax("report", f"--workdir={d}", *FAST), bad)
    assert message in line, line
    assert tree(tmp_path) == before  # no report/ directory, no file touched


def test_report_rejects_a_workdir_that_is_missing_or_a_file(tmp_path):
    missing = tmp_path / "nope"
    line = assert_one_line_error(llmjax("report", f"--workdir={missing}"), missing)
    assert "does not exist or is not a directory" in line
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = assert_one_line_error(llmjax("report", f"--workdir={a_file}"), a_file)
    assert "does not exist or is not a directory" in line
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_report_without_tables_or_runs_says_what_to_run(tmp_path):
    line = assert_one_line_error(llmjax("report", f"--workdir={tmp_path}"),
                                 tmp_path / "results.csv")
    assert f"llmjax results --workdir={tmp_path}" in line
    assert os.listdir(tmp_path) == []
    (tmp_path / "runs").mkdir()  # runs/ to collect, but none in it
    line = assert_one_line_error(llmjax("report", f"--workdir={tmp_path}"), tmp_path / "runs")
    assert "holds no run directories" in line
    assert os.listdir(tmp_path) == ["runs"] and os.listdir(tmp_path / "runs") == []


def test_report_rejects_an_output_dir_that_is_a_file(tmp_path):
    d = tmp_path / "sweep"
    good_tables(d)
    out = tmp_path / "out.txt"
    out.write_text("not a directory")
    before = tree(tmp_path)
    line = assert_one_line_error(llmjax("report", f"--workdir={d}", f"--out={out}"), out)
    assert "exists and is not a directory" in line
    under = out / "report"
    line = assert_one_line_error(llmjax("report", f"--workdir={d}", f"--out={under}"), out)
    assert "is a file" in line
    (d / "report").write_text("the default output directory, taken by a file")
    before = tree(tmp_path)
    line = assert_one_line_error(llmjax("report", f"--workdir={d}"), d / "report")
    assert "exists and is not a directory" in line
    assert tree(tmp_path) == before


def test_report_rejects_an_output_file_taken_by_a_directory(tmp_path):
    d = tmp_path / "sweep"
    good_tables(d)
    (d / "report" / "report.md").mkdir(parents=True)
    before = tree(tmp_path)
    line = assert_one_line_error(llmjax("report", f"--workdir={d}", *FAST),
                                 d / "report" / "report.md")
    assert "exists and is not a file" in line
    assert tree(tmp_path) == before  # checked before the first figure was written


def test_report_collecting_damaged_runs_names_the_run_file_and_writes_no_table(tmp_path):
    """No results.csv: the report collects runs/ first, and a damaged run stops it there."""
    a, _ = good_runs(tmp_path)
    with open(a.status_path, "w") as f:
        f.write('{"status": "complete"')  # cut short by a non-atomic writer
    before = tree(tmp_path)
    line = assert_one_line_error(llmjax("report", f"--workdir={tmp_path}"), a.status_path)
    assert "not valid JSON" in line
    assert tree(tmp_path) == before and not (tmp_path / "results.csv").exists()


# --------------------------------------------------------------------------- llmjax results


def _status(text: str):
    def make(w):
        run = RunDir(str(w / "runs" / "a"))
        with open(run.status_path, "w") as f:
            f.write(text)
        return run.status_path
    return make


def _run_file(attr: str, content: bytes):
    def make(w):
        path = getattr(RunDir(str(w / "runs" / "a")), attr)
        with open(path, "wb") as f:
            f.write(content)
        return path
    return make


def _point(mutate):
    def make(w):
        path = RunDir(str(w / "runs" / "a")).file("point.json")
        with open(path) as f:
            point = json.load(f)
        mutate(point)
        with open(path, "w") as f:
            json.dump(point, f)
        return path
    return make


def _point_text(text: str):
    def make(w):
        path = RunDir(str(w / "runs" / "a")).file("point.json")
        with open(path, "w") as f:
            f.write(text)
        return path
    return make


def _metrics_dir(w):
    path = RunDir(str(w / "runs" / "a")).metrics_path
    os.unlink(path)
    os.mkdir(path)
    return path


def _sweep_json(w):
    path = w / "sweep.json"
    path.write_text("{points: [a, b]}")
    return path


def _config_json(content: str):
    def make(w):
        path = RunDir(str(w / "runs" / "a")).config_path
        with open(path, "w") as f:
            f.write(content)
        return path
    return make


def _output_dir(w):
    (w / "curves.csv").mkdir()
    return w / "curves.csv"


RESULTS_CASES = {
    "status_not_json": (_status('{"status": "compl'), "status file is not valid JSON"),
    "status_binary": (_run_file("status_path", GARBAGE), "cannot read status file"),
    "status_unknown_value": (_status('{"status": "done"}'),
                             "status 'done' is not one of pending, running, complete"),
    "status_not_an_object": (_status('["complete"]'), "must hold a JSON object"),
    "metrics_only_garbage": (_run_file("metrics_path", b"loss=2.5 step=10\nloss=2.4 step=20\n"),
                             "metrics file holds no JSON record"),
    "metrics_binary": (_run_file("metrics_path", GARBAGE), "metrics file holds no JSON record"),
    "metrics_json_but_no_records": (_run_file("metrics_path", b"[1, 2]\n3\n"),
                                    "metrics file holds no JSON record"),
    "metrics_is_a_directory": (_metrics_dir, "found a directory"),
    "probes_only_garbage": (_run_file("probes_path", GARBAGE), "probes file holds no JSON record"),
    "config_not_json": (_config_json("{'model': {}}"), "config file is not valid JSON"),
    "config_not_an_object": (_config_json("[1]"), "must hold a JSON object"),
    "point_not_json": (_point_text('{"config": '), "sweep point file is not valid JSON"),
    "point_without_seq_len": (_point(lambda p: p["config"]["data"].pop("seq_len")),
                              "data.seq_len is None, not a positive integer"),
    "point_bad_data_section": (_point(lambda p: p["config"].update(data=[8, 4])),
                               "config field 'data' must be an object"),
    "sweep_json_damaged": (_sweep_json, "sweep file is not valid JSON"),
    "output_taken_by_a_directory": (_output_dir, "exists and is not a file"),
}


@pytest.mark.parametrize("case", list(RESULTS_CASES))
def test_results_rejects_a_damaged_run_in_one_line_and_writes_nothing(tmp_path, case):
    good_runs(tmp_path)
    make, message = RESULTS_CASES[case]
    bad = make(tmp_path)
    before = tree(tmp_path)
    line = assert_one_line_error(llmjax("results", f"--workdir={tmp_path}"), bad)
    assert message in line, line
    assert tree(tmp_path) == before


def test_results_rejects_a_workdir_without_runs(tmp_path):
    missing = tmp_path / "nope"
    line = assert_one_line_error(llmjax("results", f"--workdir={missing}"), missing)
    assert "does not exist" in line
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = assert_one_line_error(llmjax("results", f"--workdir={a_file}"), a_file)
    assert "is not a directory" in line
    w = tmp_path / "sweep"
    w.mkdir()
    line = assert_one_line_error(llmjax("results", f"--workdir={w}"), w)
    assert "no runs/ directory" in line
    (w / "runs").write_text("")
    line = assert_one_line_error(llmjax("results", f"--workdir={w}"), w / "runs")
    assert "is not a directory" in line
    (w / "runs").unlink()
    (w / "runs").mkdir()
    line = assert_one_line_error(llmjax("results", f"--workdir={w}"), w / "runs")
    assert "holds no run directories" in line
    (w / "runs" / "notes").mkdir()
    (w / "runs" / "notes" / "todo.txt").write_text("train more")
    line = assert_one_line_error(llmjax("results", f"--workdir={w}"), w / "runs")
    assert "none of its 1 directories is a run" in line
    assert sorted(tree(tmp_path)) == ["file", "sweep", "sweep/runs", "sweep/runs/notes",
                                      "sweep/runs/notes/todo.txt"]


def test_results_tolerates_a_torn_first_metrics_line(tmp_path):
    """A kill while the first record was appended leaves one torn line: a run that logged
    nothing yet, not garbage."""
    a, _ = good_runs(tmp_path)
    with open(a.metrics_path, "w") as f:
        f.write('{"kind": "train", "step": 1, "lo')
    with open(a.status_path, "w") as f:
        json.dump({"status": "running"}, f)
    proc = llmjax("results", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "2 runs (1 complete, 1 running)" in proc.stdout


# --------------------------------------------------------------------------- atomic writes


def _leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".tmp" in n)


def test_a_png_write_that_fails_midway_keeps_the_previous_report(tmp_path):
    """The second report's first PNG hits the file-size limit part-way: the previous PNGs and
    report.md stay byte-identical, and no temporary file is left."""
    d = tmp_path / "sweep"
    rows, _ = make_sweep(sizes=2, curves=False, seed=1)  # plots, but no fit: quick
    write_sweep(d, rows)
    write_report(str(d), options=FAST_OPTIONS)
    out = d / "report"
    before = tree(out)
    assert before["loss_vs_compute.png"] and before["report.md"]
    rows, _ = make_sweep(sizes=2, curves=False, seed=2)  # a different report
    write_sweep(d, rows)
    proc = llmjax("report", f"--workdir={d}", *FAST, fsize_limit=4096)
    line = assert_one_line_error(proc, out / "loss_vs_compute.png")
    assert "cannot write it: File too large" in line
    assert tree(out) == before
    assert _leftovers(out) == []
    assert os.path.getsize(out / "loss_vs_compute.png") > 4096  # the old, whole file


def test_a_report_md_write_that_fails_midway_keeps_the_previous_one(tmp_path):
    """A sweep without usable runs has no figures: report.md is the first file written. The
    second, longer report.md hits the file-size limit part-way; the first stays whole."""
    def failed_runs(n: int, error: str) -> list[dict]:
        return [_run_row(f"r{i}", 1e6 * (i + 1), 2e7 * (i + 1), 0.0, status="failed",
                         error=error) for i in range(n)]

    d = tmp_path / "sweep"
    write_sweep(d, failed_runs(2, "out of memory"))
    write_report(str(d), options=FAST_OPTIONS)
    out = d / "report"
    before = tree(out)
    old_size = os.path.getsize(out / "report.md")
    write_sweep(d, failed_runs(40, "out of memory at step 123 of a very long run " * 3))
    proc = llmjax("report", f"--workdir={d}", *FAST, fsize_limit=old_size + 512)
    line = assert_one_line_error(proc, out / "report.md")
    assert "cannot write it: File too large" in line
    assert tree(out) == before
    assert _leftovers(out) == []


def test_a_results_csv_write_that_fails_midway_keeps_the_previous_tables(tmp_path):
    good_runs(tmp_path)
    write_results(str(tmp_path))
    tables = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path) if "." in n}
    assert {"results.csv", "curves.csv", "probes.csv"} <= set(tables)
    for i in range(60):
        sweep_run(tmp_path, f"more{i:02d}")
    limit = len(tables["results.csv"]) + 256
    line = assert_one_line_error(llmjax("results", f"--workdir={tmp_path}", fsize_limit=limit),
                                 tmp_path / "results.csv")
    assert "cannot write it: File too large" in line
    assert {n: (tmp_path / n).read_bytes() for n in tables} == tables
    assert _leftovers(tmp_path) == []


class _Explodes(Artist):
    """An artist whose drawing fails: savefig raises after the temporary file was created."""

    def draw(self, renderer):
        raise RuntimeError("drawing failed")


def test_a_figure_that_fails_to_draw_leaves_the_previous_png(tmp_path):
    good = Figure(figsize=(4, 3))
    good.add_subplot().plot([1, 2, 3], [3, 1, 2])
    written = save_figures({"plot.png": good}, str(tmp_path))
    old = (tmp_path / "plot.png").read_bytes()
    bad = Figure(figsize=(4, 3))
    bad.add_subplot().plot([1, 2, 3], [1, 2, 3])
    bad.add_artist(_Explodes())
    with pytest.raises(RuntimeError, match="drawing failed"):
        save_figures({"plot.png": bad}, str(tmp_path))
    assert written == {"plot.png": str(tmp_path / "plot.png")}
    assert (tmp_path / "plot.png").read_bytes() == old
    assert os.listdir(tmp_path) == ["plot.png"]
