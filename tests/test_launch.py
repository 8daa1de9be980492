"""`llmjax launch tpu|gke --dry_run`: the rendered gcloud commands and JobSet manifests, parsed
(shlex, and YAML with a real parser) and checked; nothing is run."""

from __future__ import annotations

import os
import shlex
import textwrap

import pytest
import yaml

from llmjax.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["launch", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def sweep_cfg(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(textwrap.dedent(f"""
        import importlib.util
        _spec = importlib.util.spec_from_file_location("tiny_for_launch", {TINY!r})
        _tiny = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_tiny)
        get_config = _tiny.get_config

        def get_sweep(arg=None):
            return [{{"name": "small", "model.d_model": 32, "model.n_heads": 2}},
                    {{"name": "big", "model.d_model": 64}}]
    """))
    return str(path)


def test_tpu_dry_run_is_the_gcloud_command_of_a_sweep_point(capsys, sweep_cfg):
    rc, out, _ = run(capsys, "tpu", "--dry_run", "--name=v5e-16", "--zone=us-west4-a",
                     "--project=my-proj", f"--config={sweep_cfg}", "--workdir=/mnt/gcs/sw",
                     "--point=small", "--config.steps=50")
    assert rc == 0
    (line,) = out.strip().splitlines()
    argv = shlex.split(line)
    assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5e-16",
                        "--zone=us-west4-a"]
    assert "--project=my-proj" in argv and "--worker=all" in argv
    (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
    cd, _, rest = command.partition(" && ")
    assert cd == "cd ~/llmjax"
    remote = shlex.split(rest)
    assert remote[:5] == ["PYTHONUNBUFFERED=1", ".venv/bin/python", "-m", "llmjax", "train"]
    assert f"--config={sweep_cfg}" in remote
    assert "--workdir=/mnt/gcs/sw/runs/small" in remote
    assert "--config.model.d_model=32" in remote and "--config.model.n_heads=2" in remote
    assert "--config.steps=50" in remote and remote[-1] == "--config.distributed=true"


def test_tpu_config_inside_the_repo_is_named_relative_to_it(capsys):
    rc, out, _ = run(capsys, "tpu", "--dry_run", "--name=t1", "--zone=us-central2-b",
                     f"--config={TINY}:steps=10", "--workdir=runs/t")
    assert rc == 0
    command = shlex.split(shlex.split(out)[-1].partition("--command=")[2].partition(" && ")[2])
    assert "--config=experiments/configs/tiny.py:steps=10" in command


def test_gke_dry_run_renders_a_valid_jobset(capsys, sweep_cfg):
    rc, out, _ = run(capsys, "gke", "--dry_run", "--name=tiny-big", "--image=gcr.io/p/llmjax:1",
                     "--workers=4", "--topology=4x4", "--chips_per_worker=4",
                     "--tpu_type=tpu-v5-lite-podslice", f"--config={sweep_cfg}",
                     "--workdir=/data/sw", "--point=big")
    assert rc == 0
    doc = yaml.safe_load(out)
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    assert doc["metadata"]["name"] == "tiny-big"
    (rjob,) = doc["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["name"] == "workers" and rjob["replicas"] == 1
    assert job["parallelism"] == 4 and job["completions"] == 4
    assert job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator":
                                   "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "4x4"}
    (c,) = pod["containers"]
    assert c["image"] == "gcr.io/p/llmjax:1"
    assert c["resources"]["limits"]["google.com/tpu"] == 4
    assert c["command"][:4] == ["python", "-m", "llmjax", "train"]
    assert "--workdir=/data/sw/runs/big" in c["command"]
    assert "--config.model.d_model=64" in c["command"]
    env = {e["name"]: e for e in c["env"]}
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == "tiny-big-workers-0-0.tiny-big:8476"
    assert env["JAX_NUM_PROCESSES"]["value"] == "4"
    assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # What the pods' environment gives llmjax.distributed: an explicit 4-process cluster.
    from llmjax.distributed import cluster_env

    got = cluster_env({"JAX_COORDINATOR_ADDRESS": env["JAX_COORDINATOR_ADDRESS"]["value"],
                       "JAX_NUM_PROCESSES": env["JAX_NUM_PROCESSES"]["value"],
                       "JAX_PROCESS_ID": "3"})
    assert got == {"kind": "explicit", "num_processes": 4, "process_id": 3,
                   "coordinator": "tiny-big-workers-0-0.tiny-big:8476"}


@pytest.mark.parametrize("argv, message", [
    (["tpu", "--name=x", f"--config={TINY}", "--workdir=w"], "required: --zone"),
    (["tpu", "--name=Bad_Name", "--zone=us-central2-b", f"--config={TINY}", "--workdir=w"],
     "--name='Bad_Name'"),
    (["tpu", "--name=x", "--zone=mars", f"--config={TINY}", "--workdir=w"], "--zone='mars'"),
    (["tpu", "--name=x", "--zone=us-central2-b", "--config=/no/such.py", "--workdir=w"],
     "no such file"),
    (["gke", "--name=x", "--image=i", "--workers=3", "--topology=2x4", f"--config={TINY}",
      "--workdir=w"], "inconsistent process counts: --topology=2x4 has 8 chips"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    rc, out, err = run(capsys, *argv, "--dry_run")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_point_not_in_the_sweep(capsys, sweep_cfg):
    rc, _, err = run(capsys, "tpu", "--dry_run", "--name=x", "--zone=us-central2-b",
                     f"--config={sweep_cfg}", "--workdir=w", "--point=nope")
    assert rc == 2 and "--point=nope: not a point" in err and "small, big" in err
