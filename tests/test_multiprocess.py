"""Multi-process training: real `llmjax train` processes joined by jax.distributed on this machine.

Each process has one CPU device (`--xla_force_host_platform_device_count=1`), the coordinator is
on 127.0.0.1 and the collectives between the processes run through gloo (JAX's default CPU
implementation). Two such processes must train exactly what one process with two devices
trains: the same global batch (each process feeds its half), the same all-reduced gradients.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
# A constant schedule, so that a 10-step run resumed as a 20-step one is the 20-step run.
COMMON = ["--config.optimizer.schedule=constant", "--config.eval_every=0",
          "--config.checkpoint_every=10", "--config.log_every=5", "--config.tensorboard=False"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
              "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        env.pop(k, None)
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def train_cmd(workdir: str, data: str, steps: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "llmjax", "train", f"--config={TINY}", f"--workdir={workdir}",
            f"--config.steps={steps}", f"--config.data.data_dir={data}", *COMMON, *more]


def start_processes(n: int, cmd: list[str], logs: str, **extra: str) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(n):
        env = env_for(1, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(n),
                      JAX_PROCESS_ID=str(i), **extra)
        with open(os.path.join(logs, f"p{i}.out"), "w") as out, \
                open(os.path.join(logs, f"p{i}.err"), "w") as err:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=REPO))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def records(run: str, kind: str = "train") -> list[tuple[int, float]]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == kind]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny corpus, built once (in this process) for every run of the module."""
    from llmjax.config import load_config, parse_experiment
    from llmjax.data.pipeline import get_data_tokenizer

    path = str(tmp_path_factory.mktemp("mpdata"))
    exp = parse_experiment(load_config(TINY, [f"data.data_dir={path}"]))
    get_data_tokenizer(exp.data)
    return path


def test_two_processes_train_what_two_devices_train_and_resume(tmp_path, data_dir):
    """2 processes x 1 device == 1 process x 2 devices, bitwise, including a resume of the
    2-process run from its checkpoint (10 steps, then resumed to 20); only process 0 writes."""
    single = str(tmp_path / "single")
    ref = subprocess.run(train_cmd(single, data_dir, 20), env=env_for(2), cwd=REPO,
                         capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-2000:]

    multi, logs = str(tmp_path / "multi"), str(tmp_path)
    rcs = wait_all(start_processes(2, train_cmd(multi, data_dir, 10), logs))
    assert rcs == [0, 0], read(os.path.join(logs, "p0.err"))[-2000:] + read(
        os.path.join(logs, "p1.err"))[-2000:]
    os.makedirs(os.path.join(logs, "first"))
    for name in ("p0.out", "p0.err", "p1.out", "p1.err"):
        os.rename(os.path.join(logs, name), os.path.join(logs, "first", name))
    procs = start_processes(2, train_cmd(multi, data_dir, 20, "--allow_changes=steps"), logs)
    rcs = wait_all(procs)
    assert rcs == [0, 0], read(os.path.join(logs, "p0.err"))[-2000:] + read(
        os.path.join(logs, "p1.err"))[-2000:]

    expected = records(single)
    assert [s for s, _ in expected] == [5, 10, 15, 20]
    assert records(multi) == expected  # bitwise: the same floats, each record written once
    assert "resumed from checkpoint at step 10" in read(os.path.join(logs, "p0.out"))
    meta = json.loads(read(os.path.join(multi, "metadata.json")))
    assert meta["devices"]["process_count"] == 2 and meta["devices"]["count"] == 2
    assert [r["step"] for r in meta["resumes"]] == [10]
    status = json.loads(read(os.path.join(multi, "status.json")))
    assert status["status"] == "complete"
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["10", "20"]
    # Only process 0 writes logs and run files: process 1 prints no step line, and the process
    # that wrote status.json while running was process 0 (its pid is in the lock's history).
    for run in ("first", "."):
        p1 = read(os.path.join(logs, run, "p1.out"))
        assert "step " not in p1 and "loss" not in p1, p1
        assert "step 10/" in read(os.path.join(logs, run, "p0.out")) or run == "."
    assert "step 20/20" in read(os.path.join(logs, "p0.out"))


def test_data_shards_are_disjoint_halves_of_the_global_batch(data_dir):
    import numpy as np

    from llmjax.config import load_config, parse_experiment
    from llmjax.data.pipeline import get_data_tokenizer, make_train_iterator

    exp = parse_experiment(load_config(TINY, [f"data.data_dir={data_dir}"]))
    tok = get_data_tokenizer(exp.data)
    whole = make_train_iterator(exp.data, tok, process_index=0, process_count=1)
    parts = [make_train_iterator(exp.data, tok, process_index=i, process_count=2) for i in (0, 1)]
    for _ in range(3):
        batch = next(whole)["inputs"]
        halves = [next(p)["inputs"] for p in parts]
        assert all(h.shape[0] == batch.shape[0] // 2 for h in halves)
        rows = [{r.tobytes() for r in h} for h in halves]
        assert not rows[0] & rows[1]  # no row is read by both processes
        np.testing.assert_array_equal(np.concatenate(halves), batch)


def test_a_dead_process_takes_the_other_down_with_one_line(tmp_path, data_dir):
    """Process 1 is killed (SIGKILL) mid-run: process 0's next collective fails and it exits 1
    with one line naming the cause, within seconds, instead of waiting forever."""
    run = str(tmp_path / "run")
    procs = start_processes(2, train_cmd(run, data_dir, 100000, "--config.checkpoint_every=0"),
                            str(tmp_path), LLMJAX_HEARTBEAT_TIMEOUT="30")
    metrics = os.path.join(run, "metrics.jsonl")
    deadline = time.monotonic() + 180
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "\n".join(f"p{i}: " + read(str(tmp_path / f"p{i}.err"))[-1500:] for i in (0, 1))
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    rc = wait_all(procs[:1], timeout=60)[0]
    took = time.monotonic() - killed
    err = read(str(tmp_path / "p0.err")).strip().splitlines()
    assert rc == 1, "\n".join(err[-20:])
    assert err[-1].startswith("error: process 0 of 2: a collective with the other processes "
                              "failed, another process probably died"), err[-5:]
    print(f"process 0 exited {took:.1f} s after process 1 was killed")
    assert took < 30
    procs[1].wait()


def test_unreachable_coordinator_is_one_line_and_exit_2(tmp_path, data_dir):
    port = free_port()  # nothing listens there
    env = env_for(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID="1", LLMJAX_INIT_TIMEOUT="2")
    start = time.monotonic()
    p = subprocess.run(train_cmd(str(tmp_path / "run"), data_dir, 10), env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: process 1: cannot reach the JAX coordinator at 127.0.0.1:{port} within 2 s"), lines
    assert time.monotonic() - start < 60
    assert not os.path.exists(tmp_path / "run")  # nothing written


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID=2: must be < JAX_NUM_PROCESSES=2"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2"},
     "JAX_PROCESS_ID is required"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_NODES": "3"},
     "inconsistent process counts: SLURM_NTASKS=2 tasks on 3 nodes"),
    ({"LLMJAX_INIT_TIMEOUT": "soon", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
      "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, "LLMJAX_INIT_TIMEOUT='soon'"),
])
def test_inconsistent_cluster_variables_are_user_errors(env, message):
    from llmjax import distributed
    from llmjax.errors import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        distributed.cluster_env(env)
        distributed.timeouts(env)
