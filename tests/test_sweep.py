"""Sweeps: override helpers, run names, validation, and real sweeps of the tiny config through
`llmjax sweep` subprocesses (complete, skip, fail, kill and resume, dry run)."""

import builtins
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from llmjax.errors import UserError
from llmjax.sweep import product, sweep, zip
from llmjax.sweep.results import RESULT_COLUMNS, read_csv
from llmjax.sweep.spec import NAME_RE, load_sweep, run_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


# --------------------------------------------------------------------------- helpers


def test_sweep_product_zip_on_known_values():
    assert sweep("a", [1, 2]) == [{"a": 1}, {"a": 2}]
    assert product(sweep("a", [1, 2]), sweep("b", ["x", "y"])) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert zip(sweep("a", [1, 2]), sweep("b", [3, 4])) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    # Nesting: a zipped pair crossed with a third key.
    nested = product(zip(sweep("d", [16, 32]), sweep("l", [1, 2])), sweep("lr", [0.1]))
    assert nested == [{"d": 16, "l": 1, "lr": 0.1}, {"d": 32, "l": 2, "lr": 0.1}]
    assert product(sweep("a", [1])) == [{"a": 1}]
    with pytest.raises(ValueError, match="different lengths"):
        zip(sweep("a", [1, 2]), sweep("b", [3]))
    with pytest.raises(ValueError, match="set twice"):
        product(sweep("a", [1]), sweep("a", [2]))


def test_run_names_are_stable_unique_and_filesystem_safe():
    a = {"model.d_model": 64, "model.n_layers": 2}
    assert run_name(a) == run_name(dict(a))
    assert run_name(a).startswith("d_model64_n_layers2-")
    assert run_name({"name": "d64_l2", "model.d_model": 64}) == "d64_l2"
    # Equal slugs (lr rounds to 0.001 in both) still get different names.
    lr1, lr2 = run_name({"optimizer.lr": 1e-3}), run_name({"optimizer.lr": 1.00001e-3})
    assert lr1 != lr2 and lr1.split("-")[0] == lr2.split("-")[0]
    odd = run_name({"data.source": "/some dir/with:odd*chars", "x.y": (1, 2)})
    assert NAME_RE.match(odd) and "/" not in odd
    grid = product(sweep("model.d_model", [16, 32, 64]), sweep("optimizer.lr", [1e-3, 3e-3]))
    assert len({run_name(p) for p in grid}) == 6
    with pytest.raises(UserError, match="name"):
        run_name({"name": "../escape"})


def _write_sweep_config(path, points_src):
    """A sweep config file over the tiny config; `points_src` is the body of get_sweep."""
    body = textwrap.indent(textwrap.dedent(points_src).strip("\n"), "    ")
    path.write_text(_CONFIG_TEMPLATE.replace("TINY_PATH", repr(TINY)) + body + "\n")
    return str(path)


_CONFIG_TEMPLATE = """
import importlib.util

from llmjax.sweep import product, sweep, zip

_spec = importlib.util.spec_from_file_location("tiny_for_sweep", TINY_PATH)
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)


def get_config(arg=None):
    c = _tiny.get_config()
    c.steps = 12
    c.log_every = 2
    c.eval_every = 4
    c.eval_batches = 1
    c.checkpoint_every = 4
    c.tensorboard = False
    c.optimizer.warmup_steps = 2
    return c


def get_sweep(arg=None):
"""


def test_bad_point_is_one_line_error_naming_point_and_field(tmp_path):
    cfg = _write_sweep_config(tmp_path / "bad.py", """
        return [{"name": "ok", "model.d_model": 32},
                {"name": "bad", "model.d_model": 64, "model.n_heads": 3}]
    """)
    with pytest.raises(UserError) as e:
        load_sweep(cfg)
    msg = str(e.value)
    assert "'bad'" in msg and "model.n_heads" in msg and "\n" not in msg
    cfg2 = _write_sweep_config(tmp_path / "unknown.py", """
        return [{"model.no_such_field": 1}]
    """)
    with pytest.raises(UserError, match="no_such_field"):
        load_sweep(cfg2)
    dup = _write_sweep_config(tmp_path / "dup.py", """
        return [{"name": "x", "steps": 5}, {"name": "x", "steps": 6}]
    """)
    with pytest.raises(UserError, match="same name"):
        load_sweep(dup)


# --------------------------------------------------------------------------- real sweeps

GOOD_POINTS = """
    return zip(sweep("name", ["w32", "w48", "w64"]), sweep("model.d_model", [32, 48, 64]),
               sweep("model.n_heads", [2, 3, 4]))
"""


def _env():
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("COLUMNS", None)
    return env


def _sweep(cfg, workdir, data_dir, *extra, parallel=2, check=None, timeout=600):
    cmd = [sys.executable, "-m", "llmjax", "sweep", f"--config={cfg}", f"--workdir={workdir}",
           f"--parallel={parallel}", f"--config.data.data_dir={data_dir}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def _param_counts(d_model, n_heads):
    from llmjax.model import ModelConfig
    from llmjax.model.flops import flops_per_token, param_counts

    cfg = ModelConfig(vocab_size=259, d_model=d_model, n_layers=2, n_heads=n_heads,
                      max_seq_len=64, mlp="swiglu", positions="rope")
    return param_counts(cfg), flops_per_token(cfg, 64).training


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A 3-point sweep of the tiny config run to completion through the CLI (2 at a time)."""
    root = tmp_path_factory.mktemp("sweep")
    cfg = _write_sweep_config(root / "three.py", GOOD_POINTS)
    workdir, data_dir = root / "sweep", root / "data"
    proc = _sweep(cfg, workdir, data_dir, check=0)
    return root, cfg, workdir, data_dir, proc


def test_sweep_runs_every_point_and_gathers_results(finished_sweep):
    root, cfg, workdir, data_dir, proc = finished_sweep
    assert "expected time" in proc.stdout and "total compute" in proc.stdout
    assert "3/3 points complete" in proc.stdout
    rows = read_csv(workdir / "results.csv")
    assert [r["name"] for r in rows] == ["w32", "w48", "w64"]
    with open(workdir / "results.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert {"override.name", "override.model.d_model", "override.model.n_heads"} <= set(header)
    for r, (d, h) in builtins.zip(rows, [(32, 2), (48, 3), (64, 4)], strict=True):
        counts, fpt = _param_counts(d, h)
        assert r["status"] == "complete" and r["error"] is None
        assert (r["d_model"], r["n_heads"], r["n_layers"]) == (d, h, 2)
        assert r["n_params"] == counts.total
        assert r["n_non_embedding"] == counts.non_embedding
        assert r["n_embedding"] == counts.embedding
        assert r["steps"] == 12 and r["tokens"] == 12 * 16 * 64
        assert r["tokens_per_param"] == pytest.approx(12 * 16 * 64 / counts.non_embedding)
        assert r["flops_6nd"] == pytest.approx(6 * counts.non_embedding * 12 * 16 * 64)
        assert r["flops"] == pytest.approx(fpt * 12 * 16 * 64)
        assert r["override.model.d_model"] == d
        # Losses are the run's own metrics: finite, and below the ~5.5 nats of a fresh model.
        metrics = [json.loads(x) for x in open(workdir / "runs" / r["name"] / "metrics.jsonl")]
        evals = [m["loss"] for m in metrics if m["kind"] == "eval"]
        trains = [m["loss"] for m in metrics if m["kind"] == "train"]
        assert r["final_eval_loss"] == pytest.approx(evals[-1])
        assert r["best_eval_loss"] == pytest.approx(min(evals))
        assert r["final_train_loss"] == pytest.approx(trains[-1])
        assert 0 < r["final_eval_loss"] < 5.5
        assert r["wall_time_s"] > 0 and r["budget"] is None and r["seed"] == 0
        status = json.loads((workdir / "runs" / r["name"] / "status.json").read_text())
        assert status["status"] == "complete" and status["returncode"] == 0
        overrides = json.loads((workdir / "runs" / r["name"] / "overrides.json").read_text())
        assert overrides == {"name": r["name"], "model.d_model": d, "model.n_heads": h}
    curves = read_csv(workdir / "curves.csv")
    for r in rows:
        pts = [c for c in curves if c["name"] == r["name"]]
        assert [c["step"] for c in pts] == [4, 8, 12]
        assert [c["tokens"] for c in pts] == [s * 16 * 64 for s in (4, 8, 12)]
        assert pts[-1]["eval_loss"] == pytest.approx(r["final_eval_loss"])
        assert pts[-1]["flops"] == pytest.approx(r["flops"])


def test_rerun_of_finished_sweep_does_nothing(finished_sweep):
    root, cfg, workdir, data_dir, _ = finished_sweep
    status = workdir / "runs" / "w32" / "status.json"
    before = (status.stat().st_mtime_ns, (workdir / "results.csv").stat().st_mtime_ns)
    proc = _sweep(cfg, workdir, data_dir, check=0)
    assert "sweep complete: nothing to do" in proc.stdout
    assert (status.stat().st_mtime_ns, (workdir / "results.csv").stat().st_mtime_ns) == before
    # `llmjax results` regathers the same table.
    out = subprocess.run([sys.executable, "-m", "llmjax", "results", f"--workdir={workdir}"],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0 and "3 runs (3 complete)" in out.stdout
    assert [r["name"] for r in read_csv(workdir / "results.csv")] == ["w32", "w48", "w64"]


def test_rerun_with_a_changed_config_is_refused_or_reruns_when_allowed(finished_sweep):
    """A point whose run was trained with another config: exit 2 naming the point and the field,
    before anything runs; named in --allow_changes, the point is planned again (to resume)."""
    root, cfg, workdir, data_dir, _ = finished_sweep
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    proc = _sweep(cfg, workdir, data_dir, "--config.eval_batches=2", check=2)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "sweep point 'w32'" in err[0] and "eval_batches: 1 -> 2" in err[0]
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == before
    proc = _sweep(cfg, workdir, data_dir, "--config.eval_batches=2", "--allow_changes=eval_batches",
                  "--dry_run", check=0)
    assert "3 points, 3 to run" in proc.stdout, proc.stdout
    sweep_json = json.loads((workdir / "sweep.json").read_text())
    import hashlib

    assert sweep_json["config_sha256"] == hashlib.sha256(open(cfg, "rb").read()).hexdigest()


def test_failed_point_is_recorded_and_others_complete(finished_sweep):
    """Adds a diverging point (lr 1e9 -> NaN at step 2) to the finished sweep: only it runs."""
    root, _, workdir, data_dir, _ = finished_sweep
    cfg = _write_sweep_config(root / "with_failure.py", GOOD_POINTS.replace("return ", "ok = ")
                              + """
    return ok + [{"name": "diverges", "optimizer.lr": 1e9, "optimizer.warmup_steps": 0}]
""")
    proc = _sweep(cfg, workdir, data_dir, check=1)
    assert "diverges FAILED" in proc.stdout and "failed: diverges" in proc.stdout
    assert "started w32" not in proc.stdout  # complete points are skipped
    status = json.loads((workdir / "runs" / "diverges" / "status.json").read_text())
    assert status["status"] == "failed" and status["returncode"] == 1
    assert "non-finite loss" in status["error"] and "step 2" in status["error"]
    rows = {r["name"]: r for r in read_csv(workdir / "results.csv")}
    assert rows["diverges"]["status"] == "failed" and "non-finite" in rows["diverges"]["error"]
    assert all(rows[n]["status"] == "complete" for n in ("w32", "w48", "w64"))


def test_dry_run_writes_nothing(tmp_path):
    cfg = _write_sweep_config(tmp_path / "three.py", GOOD_POINTS)
    proc = _sweep(cfg, tmp_path / "sweep", tmp_path / "data", "--dry_run", check=0)
    assert "w32" in proc.stdout and "w64" in proc.stdout and "dry run" in proc.stdout
    assert "total compute" in proc.stdout and "expected time" in proc.stdout
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "data").exists()


def test_killed_sweep_resumes_and_completes(tmp_path):
    """SIGKILL the sweep mid-run: its child is stopped too (it checkpoints); a rerun resumes."""
    cfg = _write_sweep_config(tmp_path / "long.py", """
        return [{"name": "long", "steps": 40}]
    """)
    workdir, data_dir = tmp_path / "sweep", tmp_path / "data"
    cmd = [sys.executable, "-m", "llmjax", "sweep", f"--config={cfg}", f"--workdir={workdir}",
           "--parallel=1", f"--config.data.data_dir={data_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    metrics = workdir / "runs" / "long" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # until it has trained past its first checkpoint
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()
                     ] if metrics.exists() else []
            if steps and max(steps) >= 6:
                break
            assert proc.poll() is None, "the sweep ended before it was killed"
            time.sleep(0.2)
        else:
            pytest.fail("the first point never got past step 6")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    status = json.loads((workdir / "runs" / "long" / "status.json").read_text())
    assert status["status"] == "running"  # as the killed sweep left it
    rerun = _sweep(cfg, workdir, data_dir, parallel=1, check=0)
    # The plan shows the killed point as interrupted (or waits for its child to finish saving).
    assert "interrupted" in rerun.stdout or "waiting for the previous run" in rerun.stdout
    assert "1/1 points complete" in rerun.stdout
    log = (workdir / "runs" / "long" / "train.log").read_text()
    assert "resumed from checkpoint at step" in log
    status = json.loads((workdir / "runs" / "long" / "status.json").read_text())
    assert status["status"] == "complete" and status["attempts"] == 2
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 40
    assert [r["status"] for r in read_csv(workdir / "results.csv")] == ["complete"]
