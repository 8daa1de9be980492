"""Seeds in one compiled program: members equal their own runs, resume, sweep -> results -> report.

Each member of `train_members` is an ordinary run directory; the checks compare them with the
same configs trained one at a time by `train`, and follow replicates through a real sweep (CLI
subprocesses), `results.csv` and the report's error bars.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from llmjax.config import load_config, parse_experiment
from llmjax.rundir import RunDir
from llmjax.sweep.results import read_csv
from llmjax.train.checkpoint import complete_steps
from llmjax.train.loop import train, train_members
from llmjax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
SHORT = ["steps=8", "log_every=2", "eval_every=4", "eval_batches=1", "checkpoint_every=4",
         "keep_checkpoints=3", "tensorboard=False"]


def _exp(data_dir, *extra):
    return parse_experiment(load_config(TINY, [f"data.data_dir={data_dir}", *SHORT, *extra]))


def _losses(workdir):
    return [(r["kind"], r["step"], r["loss"]) for r in read_metrics(workdir)
            if r["kind"] in ("train", "eval")]


def _close(a, b):
    assert [x[:2] for x in a] == [x[:2] for x in b]
    np.testing.assert_allclose([x[2] for x in a], [x[2] for x in b], rtol=2e-5)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    data = str(root / "data")
    dirs = [str(root / f"m{s}") for s in (0, 1)]
    results = train_members(_exp(data), dirs, progress=False, return_state=True)
    return root, data, dirs, results


def test_each_member_is_the_run_of_its_own_seed(members):
    root, data, dirs, results = members
    alone = train(_exp(data, "seed=1"), str(root / "alone1"), progress=False, return_state=True)
    _close(_losses(dirs[1]), _losses(str(root / "alone1")))
    # Float rounding only (vmapped matmuls sum in another order): parameters ~0.02, Adam steps
    # ~1e-3; after 8 steps they agree to ~4e-6.
    for a, b in zip(jax.tree.leaves(results[1].state.params), jax.tree.leaves(alone.state.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=2e-5)
    # The members really differ (their own init), and each records its own seed and status.
    assert _losses(dirs[0])[0][2] != _losses(dirs[1])[0][2]
    for seed, d in enumerate(dirs):
        run = RunDir(d)
        assert json.loads(open(run.config_path).read())["seed"] == seed
        assert run.read_status()["status"] == "complete"
        assert run.read_status()["members"] == dirs
        assert complete_steps(run.checkpoints_dir) == [4, 8]


def test_members_resume_at_the_step_all_of_them_saved(members, tmp_path):
    root, data, dirs, _ = members
    copies = [str(tmp_path / os.path.basename(d)) for d in dirs]
    for d, c in zip(dirs, copies, strict=True):
        shutil.copytree(d, c)
    # A kill between the members' saves of step 8: member 1 has only step 4 finished.
    shutil.rmtree(os.path.join(RunDir(copies[1]).checkpoints_dir, "8"))
    results = train_members(_exp(data), copies, progress=False)
    assert [r.resumed_from for r in results] == [4, 4]
    for d, c in zip(dirs, copies, strict=True):
        _close(_losses(c), _losses(d))  # the resumed program reproduces the uninterrupted one
        assert RunDir(c).read_status()["status"] == "complete"
    aside = sorted(os.listdir(RunDir(copies[0]).checkpoints_dir))
    assert "8.ahead" in aside and "8" in aside  # set aside, then saved again


def test_cli_seeds_needs_a_workdir_template(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llmjax", "train", f"--config={TINY}",
                           f"--workdir={tmp_path / 'run'}", "--seeds=2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "{seed}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "run")


SEEDS_POINTS = """
    return [{"name": f"w{d}", "model.d_model": d, "model.n_heads": d // 16, "seeds": 2}
            for d in (16, 32, 48)]
"""


def test_sweep_of_seeds_trains_each_group_as_one_program_and_reports_error_bars(tmp_path):
    from test_sweep import _write_sweep_config  # the tiny sweep config of the sweep tests

    cfg = _write_sweep_config(tmp_path / "seeds.py", SEEDS_POINTS)
    workdir, data = tmp_path / "sweep", tmp_path / "data"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax", "sweep", f"--config={cfg}", f"--workdir={workdir}",
         "--parallel=2", f"--config.data.data_dir={data}"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6/6 points complete" in proc.stdout
    assert proc.stdout.count("2 seeds as one program") == 3
    rows = {r["name"]: r for r in read_csv(workdir / "results.csv")}
    assert sorted(rows) == [f"w{d}_s{s}" for d in (16, 32, 48) for s in (0, 1)]
    for name, r in rows.items():
        assert r["group"] == name[:-3] and r["seed"] == int(name[-1])
        assert r["status"] == "complete" and 0 < r["final_eval_loss"] < 5.5
        status = RunDir(str(workdir / "runs" / name)).read_status()
        group_dirs = [str(workdir / "runs" / f"{r['group']}_s{s}") for s in (0, 1)]
        assert status["members"] == group_dirs  # one program trained both replicates
    assert rows["w32_s0"]["final_eval_loss"] != rows["w32_s1"]["final_eval_loss"]

    from test_report import run_cli  # llmjax's CLI in-process (the sweep above was real)

    rc, out, err = run_cli(["report", f"--workdir={workdir}", "--n_boot=50"])
    assert rc == 0, out + err
    md = (workdir / "report" / "report.md").read_text()
    assert "fitted on the final eval loss of 3 model sizes" in md
    assert "every one of the 6 runs is a point of the fit" in md
    for d in (16, 32, 48):
        losses = [rows[f"w{d}_s{s}"]["final_eval_loss"] for s in (0, 1)]
        se = np.std(losses, ddof=1) / np.sqrt(2)
        assert f"| 2 | {np.mean(losses):.4f} ± {se:.4f} |" in md
    assert os.path.getsize(workdir / "report" / "loss_vs_params.png") > 10_000
