"""The run directory: one lock per workdir, resume refuses a changed config, one status that the
training loop writes, and atomic writes. Real training runs (tiny.py, a few steps), real
subprocesses holding real locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llmjax import rundir
from llmjax.cli import main as cli_main
from llmjax.config import load_config
from llmjax.errors import UserError
from llmjax.rundir import RunDir, Status
from llmjax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _tiny(data_dir: str, *overrides: str):
    return load_config(f"{TINY}:steps=6", [f"data.data_dir={data_dir}", "eval_every=0",
                                           "log_every=2", "checkpoint_every=3", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A complete 6-step run."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    train(_tiny(data_dir), workdir, progress=False)
    return workdir


# ---------------------------------------------------------------------------- status


def test_training_writes_complete_and_the_status_is_one_enum(trained):
    run = RunDir(trained)
    assert run.status() == Status.COMPLETE and run.is_complete()
    info = run.read_status()
    assert info["step"] == info["steps"] == 6 and info["pid"] is None
    assert not os.path.exists(os.path.join(trained, rundir.LOCK)) or \
        open(os.path.join(trained, rundir.LOCK)).read() == ""  # released cleanly


def test_a_damaged_status_file_is_one_line_naming_it(tmp_path):
    run = RunDir(str(tmp_path))
    with open(run.status_path, "w") as f:
        f.write('{"status": "done"}')
    with pytest.raises(UserError, match="status.json.*'done' is not one of"):
        run.status()
    with open(run.status_path, "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="status.json.*not valid JSON"):
        run.is_complete()


# ---------------------------------------------------------------------------- resume


def test_resume_with_a_changed_config_exits_2_naming_the_fields(trained, data_dir, capsys):
    before = {n: open(os.path.join(trained, n), "rb").read()
              for n in (rundir.CONFIG, rundir.METRICS, rundir.STATUS)}
    rc = cli_main(["train", f"--config={TINY}:steps=6", f"--workdir={trained}",
                   f"--config.data.data_dir={data_dir}", "--config.eval_every=0",
                   "--config.log_every=2", "--config.checkpoint_every=3",
                   "--config.optimizer.lr=0.02", "--config.model.d_model=32"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err
    assert "optimizer.lr: 0.01 -> 0.02" in err and "model.d_model" in err
    assert "--allow_changes=model.d_model,optimizer.lr" in err
    after = {n: open(os.path.join(trained, n), "rb").read() for n in before}
    assert after == before, "a refused resume must not touch the run"


def test_allow_changes_extends_steps_and_records_the_change(tmp_path, data_dir, trained):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    with pytest.raises(UserError, match="steps: 6 -> 9"):
        train(_tiny(data_dir, "steps=9"), workdir, progress=False)
    result = train(_tiny(data_dir, "steps=9"), workdir, progress=False, allow_changes=["steps"])
    assert result.resumed_from == 6 and result.step == 9
    meta = json.load(open(os.path.join(workdir, rundir.METADATA)))
    assert meta["resumes"][-1]["changed"] == {"steps": [6, 9]}
    assert json.load(open(os.path.join(workdir, rundir.CONFIG)))["steps"] == 9
    assert RunDir(workdir).is_complete()


# ---------------------------------------------------------------------------- the lock

_HOLD = textwrap.dedent("""
    import sys, time
    from llmjax import rundir
    with rundir.hold(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_process_on_a_held_workdir_exits_2_naming_the_holder(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(
            [sys.executable, "-m", "llmjax", "train", f"--config={TINY}:steps=2",
             f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"],
            capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 2, proc.stderr
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"pid {holder.pid}" in err[0] and "in use by" in err[0]
        assert not os.path.exists(os.path.join(workdir, rundir.CONFIG))
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holders_lock_is_taken_over_and_said(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, workdir], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no clean release, the lock file still names it
    holder.wait()
    said = []
    with rundir.hold(workdir, say=said.append):
        info = json.load(open(os.path.join(workdir, rundir.LOCK)))
        assert info["pid"] == os.getpid()
    assert len(said) == 1 and f"took over the lock of dead pid {holder.pid}" in said[0]


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with rundir.hold(str(tmp_path)), rundir.hold(str(tmp_path)):
        pass
    with rundir.hold(str(tmp_path)):  # released: can be taken again
        pass


# ---------------------------------------------------------------------------- workdir paths


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    rc = cli_main(["train", f"--config={TINY}", f"--workdir={path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "not a directory" in err and str(path) in err
    assert path.read_text() == "x"


# ---------------------------------------------------------------------------- atomic writes

_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from llmjax import rundir
    with rundir.atomic_output(sys.argv[1]) as tmp:
        with open(tmp, "w") as f:
            f.write("half of the new vers")
            f.flush()
            os.kill(os.getpid(), 9)
""")


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "report.md")
    rundir.atomic_write(path, "the old version\n")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, path], cwd=REPO)
    assert proc.returncode == -9
    assert open(path).read() == "the old version\n"


def test_atomic_output_removes_its_temporary_on_error(tmp_path):
    path = str(tmp_path / "x.json")
    rundir.atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), rundir.atomic_output(path) as tmp:
        open(tmp, "w").write("partial")
        raise RuntimeError("writer failed")
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_config_changes_and_fingerprint():
    a = {"steps": 6, "optimizer": {"lr": 0.1, "b1": 0.9}, "mesh": {"data": -1}}
    b = {"steps": 6, "optimizer": {"lr": 0.2, "b1": 0.9}, "mesh": {"data": -1}, "new": 1}
    assert rundir.config_changes(a, b) == {"optimizer.lr": (0.1, 0.2), "new": ("<absent>", 1)}
    assert rundir.config_fingerprint(a) == rundir.config_fingerprint(json.loads(json.dumps(a)))
    assert rundir.config_fingerprint(a) != rundir.config_fingerprint(b)
    rundir.check_config_unchanged(a, b, ["optimizer", "new"], where="x")  # section prefix
    with pytest.raises(UserError, match="optimizer.lr"):
        rundir.check_config_unchanged(a, b, ["new"], where="x")


def test_probing_a_workdir_another_process_holds_is_refused(trained):
    from llmjax.eval.probe import run_probes

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, trained], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by pid {holder.pid}"):
            run_probes(trained, tasks=["perplexity"])
        assert not os.path.exists(os.path.join(trained, rundir.PROBES))
    finally:
        holder.kill()
        holder.wait()


def test_training_writes_nothing_outside_the_workdir_and_data_dir(tmp_path):
    """HOME and the working directory stay empty: no cache in ~/.cache, nothing beside the run."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LLMJAX_CACHE_DIR", "XDG_CACHE_HOME",
                                                             "TFDS_DATA_DIR")}
    env.update(HOME=str(home), PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "llmjax", "train", f"--config={TINY}:steps=2",
         f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={tmp_path / 'data'}",
         "--config.eval_every=0"],
        capture_output=True, text=True, cwd=cwd, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "data", "home", "run"]


def test_a_run_saved_before_a_field_existed_resumes_with_that_fields_default(trained, tmp_path,
                                                                             data_dir):
    """config.json of an older llmjax lacks fields added since (here max_skips) and holds only
    the synthetic knobs it set: equal to the requested config once defaults are filled in."""
    import shutil

    workdir = str(tmp_path / "old")
    shutil.copytree(trained, workdir)
    path = os.path.join(workdir, rundir.CONFIG)
    saved = json.load(open(path))
    del saved["max_skips"]
    saved["data"]["synthetic"] = {k: v for k, v in saved["data"]["synthetic"].items()
                                  if k in ("num_train_docs", "num_validation_docs")}
    rundir.atomic_write_json(path, saved)
    result = train(_tiny(data_dir), workdir, progress=False)
    assert result.resumed_from == 6 and result.step == 6
