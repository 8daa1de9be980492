"""`llmjax sweep --backend=slurm` against a real SLURM: slurmctld + slurmd + munge on this machine
(launch/slurm/local_cluster.sh: one node, partition `debug`). Skipped, with the script's one-line
reason, only where SLURM can be neither found nor installed (no root, no apt-get).

One point P of the tiny config is trained three ways, all submitted at once:
  A  a 3-point sweep (P and two other seeds), one task with 2 CPU devices per point;
  B  P alone as one 2-task point: `srun -n2`, 2 JAX processes with 1 device each;
  C  P alone with --requeue, signalled (`scancel --batch --signal=TERM`) mid-run: it saves a
     checkpoint, the batch script requeues the job, the task resumes from the checkpoint.
B and C must give A's losses bitwise (A's P and B are the 2-device / 2-process pair of
test_multiprocess.py; C is A's P stopped and resumed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
CLUSTER = os.path.join(REPO, "launch", "slurm", "local_cluster.sh")
P = "s0"

SWEEP_CONFIG = f"""
import importlib.util

from llmjax.sweep import sweep

_spec = importlib.util.spec_from_file_location("tiny_for_slurm", {TINY!r})
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)


def get_config(arg=None):
    c = _tiny.get_config()
    c.steps = 100
    c.log_every = 10
    c.eval_every = 0
    c.checkpoint_every = 10
    c.tensorboard = False
    c.optimizer.schedule = "constant"
    return c


def get_sweep(arg=None):
    # Points differ in seed only: one compiled train step for all (the test session shares
    # its XLA compilation cache with the jobs), so the sweep costs start-ups, not compiles.
    seeds = {{"s0": 0, "s1": 1, "s2": 2}}
    names = seeds if arg in (None, "", "all") else [arg]
    return [{{"name": n, "seed": seeds[n]}} for n in names]
"""


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM (started, and installed if missing, by local_cluster.sh)."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", CLUSTER, "start"], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr
    return {"start_s": time.monotonic() - t0}


def sweep_env(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               **extra)
    env.pop("COLUMNS", None)
    return env


def sweep(cfg: str, workdir: str, data: str, *flags: str, devices: int = 1,
          env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "llmjax", "sweep", f"--config={cfg}", f"--workdir={workdir}",
           f"--config.data.data_dir={data}", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=env or sweep_env(devices))


def losses(run: str) -> dict[int, float]:
    """step -> loss of the train records (a resumed run's redone steps: the last record)."""
    out = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "train":
                out[r["step"]] = r["loss"]
    return out


def job_of(workdir: str) -> int:
    with open(os.path.join(workdir, "slurm", "jobs.json")) as f:
        return json.load(f)[-1]["job_id"]


def wait_jobs(job_ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ids = ",".join(map(str, job_ids))
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T"], capture_output=True,
                             text=True).stdout.strip()
        if not out:
            return
        time.sleep(1)
    raise AssertionError(f"jobs {ids} still queued after {timeout} s: {out}")


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return f"({path}: none)"


@pytest.fixture(scope="module")
def slurm_sweeps(slurm_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm")
    cfg = base / "sweep_cfg.py"
    cfg.write_text(textwrap.dedent(SWEEP_CONFIG))
    data = str(base / "data")
    from llmjax.config import load_config, parse_experiment
    from llmjax.data.pipeline import get_data_tokenizer

    get_data_tokenizer(parse_experiment(load_config(TINY, [f"data.data_dir={data}"])).data)
    dirs = {k: str(base / k) for k in "ABC"}
    t0 = time.monotonic()
    a = sweep(str(cfg), dirs["A"], data, "--backend=slurm", devices=2)
    assert a.returncode == 0, a.stdout + a.stderr
    b = sweep(f"{cfg}:{P}", dirs["B"], data, "--backend=slurm", "--tasks_per_node=2", devices=1)
    assert b.returncode == 0, b.stdout + b.stderr
    # C last, and watched from its submission on: submitted first, it once ran all its steps
    # while A and B were still being submitted (a full suite loading both cores).
    c = sweep(f"{cfg}:{P}", dirs["C"], data, "--backend=slurm", "--requeue", devices=2)
    assert c.returncode == 0, c.stdout + c.stderr
    jobs = {k: job_of(d) for k, d in dirs.items()}
    # C: signal the batch script once the run has logged step 10 (and started its checkpoint
    # there), as SLURM's --signal=B:TERM@S does before the time limit.
    run_c = os.path.join(dirs["C"], "runs", P)
    deadline = time.monotonic() + 240
    while max(losses(run_c) if os.path.exists(os.path.join(run_c, "metrics.jsonl")) else [0],
              default=0) < 10:
        assert time.monotonic() < deadline, tail(os.path.join(run_c, "train.log"))
        time.sleep(0.1)
    signalled = max(losses(run_c))
    # C's array has one task: signal the array job (its only task's batch script).
    sig = subprocess.run(["scancel", "--batch", "--signal=TERM", str(jobs["C"])],
                         capture_output=True, text=True)
    state = subprocess.run(["squeue", "-a", "-r", "-o", "%i %T %r"], capture_output=True,
                           text=True).stdout
    assert sig.returncode == 0, f"{sig.stderr.strip()}; squeue:\n{state}"
    wait_jobs(list(jobs.values()), timeout=300)
    return {"dirs": dirs, "cfg": str(cfg), "data": data, "jobs": jobs, "signalled": signalled,
            "wall_s": time.monotonic() - t0, "start_s": slurm_cluster["start_s"]}


def test_three_point_sweep_completes_through_one_array(slurm_sweeps):
    s = slurm_sweeps
    d = s["dirs"]["A"]
    with open(os.path.join(d, "slurm", "jobs.json")) as f:
        jobs = json.load(f)
    assert len(jobs) == 1 and sorted(jobs[0]["tasks"]) == ["0", "1", "2"]
    script = open(jobs[0]["script"]).read()
    assert "#SBATCH --array=0-2" in script and "srun --kill-on-bad-exit=1" in script
    for name in ("s0", "s1", "s2"):
        status = json.load(open(os.path.join(d, "runs", name, "status.json")))
        assert status["status"] == "complete", tail(os.path.join(d, "runs", name, "train.log"))
        assert sorted(losses(os.path.join(d, "runs", name))) == list(range(10, 101, 10))
    status = sweep(s["cfg"], d, s["data"], "--status")  # reads state, submits nothing
    assert status.returncode == 0 and "3/3 points complete" in status.stdout, status.stdout
    again = sweep(s["cfg"], d, s["data"], "--backend=slurm")
    assert again.returncode == 0 and "nothing to submit: all 3 points complete" in again.stdout
    assert len(json.load(open(os.path.join(d, "slurm", "jobs.json")))) == 1


def test_two_task_point_is_two_jax_processes_with_the_same_losses(slurm_sweeps):
    s = slurm_sweeps
    run_b = os.path.join(s["dirs"]["B"], "runs", P)
    meta = json.load(open(os.path.join(run_b, "metadata.json")))
    assert meta["devices"]["process_count"] == 2 and meta["devices"]["local_count"] == 1, \
        tail(os.path.join(run_b, "train.log"))
    expected = losses(os.path.join(s["dirs"]["A"], "runs", P))
    assert losses(run_b) == expected  # bitwise
    log = open(os.path.join(run_b, "train.log")).read()
    assert log.count("step 100/100") == 1  # only process 0 prints


def test_signalled_job_checkpoints_requeues_and_resumes_to_the_same_result(slurm_sweeps):
    s = slurm_sweeps
    run_c = os.path.join(s["dirs"]["C"], "runs", P)
    log = open(os.path.join(run_c, "train.log")).read()
    out = tail(os.path.join(s["dirs"]["C"], "slurm", f"{s['jobs']['C']}_0.out"), 50)
    assert "restart 1" in log, log[-3000:] + out  # the requeued task ran again
    assert "resumed from checkpoint at step" in log, log[-3000:] + out
    assert "requeueing job" in out
    status = json.load(open(os.path.join(run_c, "status.json")))
    assert status["status"] == "complete"
    meta = json.load(open(os.path.join(run_c, "metadata.json")))
    assert len(meta["resumes"]) == 1 and meta["resumes"][0]["step"] >= 10
    assert losses(run_c) == losses(os.path.join(s["dirs"]["A"], "runs", P))  # bitwise
    print(f"slurm start {s['start_s']:.1f}s, sweeps A+B+C {s['wall_s']:.1f}s, signalled at "
          f"step {s['signalled']}, resumed from {meta['resumes'][0]['step']}")


def test_bad_input_is_one_line_and_submits_nothing(slurm_sweeps, tmp_path):
    s = slurm_sweeps
    d = str(tmp_path / "bad")
    # A partition SLURM refuses: sbatch's message, one line, exit 2, no job recorded.
    p = sweep(s["cfg"], d, s["data"], "--backend=slurm", "--partition=nosuch")
    assert p.returncode == 2, p.stdout + p.stderr
    line = p.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: sbatch refused the job array: "), line
    assert "nosuch" in line[0] or "partition" in line[0].lower()
    assert not os.path.exists(os.path.join(d, "slurm", "jobs.json"))
    assert os.listdir(os.path.join(d, "slurm")) == []
    # Process counts that do not split the batch (16 rows over 3 tasks).
    p = sweep(s["cfg"], d, s["data"], "--backend=slurm", "--tasks_per_node=3")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "inconsistent process counts" in p.stderr and "data.batch_size=16" in p.stderr
    # No sbatch on PATH: say so, suggest --backend=local.
    p = sweep(s["cfg"], str(tmp_path / "nopath"), s["data"], "--backend=slurm",
              env={**sweep_env(1), "PATH": str(tmp_path)})
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "sbatch not found on PATH" in p.stderr and "--backend=local" in p.stderr
    assert not os.path.exists(tmp_path / "nopath" / "slurm")
    # --dry_run prints the script and submits nothing.
    p = sweep(s["cfg"], str(tmp_path / "dry"), s["data"], "--backend=slurm", "--dry_run",
              "--nodes=2", "--gpus_per_node=4", "--partition=gpu", "--time=01:00:00",
              "--account=proj", "--max_concurrent=2", "--requeue", "--signal_before=120")
    assert p.returncode == 0, p.stderr
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00",
                 "#SBATCH --account=proj", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@120",
                 "srun --kill-on-bad-exit=1 --nodes=2 --ntasks=8 --ntasks-per-node=4"):
        assert line in p.stdout, line
    assert not os.path.exists(tmp_path / "dry")
    # --backend=local refuses SLURM flags.
    p = sweep(s["cfg"], d, s["data"], "--partition=debug")
    assert p.returncode == 2 and "only with --backend=slurm" in p.stderr
