"""`llmjax launch tpu|gke`: the commands that start a run (or a sweep point) on Cloud TPU VMs or
on GKE, rendered from the same `llmjax train` command line the sweep runner uses.

  llmjax launch tpu --name=NAME --zone=ZONE [--project=P] --config=FILE[:arg] --workdir=DIR
        [--point=NAME] [--repo_dir=~/llmjax] [--dry_run] [--config.k=v ...]
      `gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command=...`: every worker
      of the TPU VM runs `llmjax train` in --repo_dir (a clone of this repository with its .venv
      on each worker); JAX's Cloud TPU detection joins them (`--config.distributed=true`).
      --workdir must be one directory all workers see (a gcsfuse or Filestore mount).
  llmjax launch gke --name=NAME --image=IMAGE --workers=W --config=... --workdir=DIR
        [--point=NAME] [--tpu_type=tpu-v5-lite-podslice --topology=2x4 --chips_per_worker=4]
        [--namespace=default] [--dry_run] [--config.k=v ...]
      a JobSet (jobset.x-k8s.io/v1alpha2) from launch/gke/jobset.yaml: W pods, one JAX process
      each, given JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (the pod's
      completion index), applied with `kubectl apply -f -`.

`--point=NAME` launches that point of the config's get_sweep() in DIR/runs/NAME (as the sweep
runner would); otherwise the config itself in DIR. `--dry_run` prints and runs nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys

from llmjax.errors import ArgParser, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBSET_TEMPLATE = os.path.join(REPO, "launch", "gke", "jobset.yaml")
COORDINATOR_PORT = 8476
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
_ZONE_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")


def _parser() -> ArgParser:
    p = ArgParser(prog="llmjax launch", description="start a run on Cloud TPU VMs or GKE")
    sub = p.add_subparsers(dest="target", required=True)
    for target in ("tpu", "gke"):
        s = sub.add_parser(target, prog=f"llmjax launch {target}")
        s.error = p.error  # type: ignore[method-assign]  # one-line UserErrors
        s.add_argument("--name", required=True)
        s.add_argument("--config", required=True)
        s.add_argument("--workdir", required=True)
        s.add_argument("--point", default=None)
        s.add_argument("--dry_run", "--dry-run", action="store_true")
        if target == "tpu":
            s.add_argument("--zone", required=True)
            s.add_argument("--project", default=None)
            s.add_argument("--repo_dir", default="~/llmjax")
        else:
            s.add_argument("--image", required=True)
            s.add_argument("--workers", type=int, required=True)
            s.add_argument("--tpu_type", default="tpu-v5-lite-podslice")
            s.add_argument("--topology", default="2x4")
            s.add_argument("--chips_per_worker", type=int, default=4)
            s.add_argument("--namespace", default="default")
    return p


def train_args(config: str, workdir: str, point: str | None, overrides: list[str]) -> list[str]:
    """`llmjax train` arguments (after `python -m llmjax train`) of a config or a sweep point;
    the config file named relative to the repository when it lies inside it (the remote
    workers have their own clone)."""
    path, sep, arg = config.partition(":")
    rel = os.path.relpath(os.path.abspath(path), REPO)
    shown = (rel if not rel.startswith("..") else path) + sep + arg
    if point is None:
        if not os.path.exists(path):
            raise UserError(f"--config={config}: no such file")
        return [f"--config={shown}", f"--workdir={workdir}", *overrides]
    from llmjax.sweep.spec import load_sweep

    sweep = load_sweep(config, overrides)
    names = [p.name for p in sweep.points]
    if point not in names:
        raise UserError(f"--point={point}: not a point of {config}; its points: "
                        f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    p = sweep.points[names.index(point)]
    return [f"--config={shown}", f"--workdir={os.path.join(workdir, 'runs', p.name)}",
            *p.flags(), *sweep.extra]


def tpu_commands(args, overrides: list[str]) -> list[list[str]]:
    if not _NAME_RE.match(args.name):
        raise UserError(f"--name={args.name!r}: a TPU name is lower-case letters, digits and "
                        "'-', starting with a letter (at most 40)")
    if not _ZONE_RE.match(args.zone):
        raise UserError(f"--zone={args.zone!r}: expected a zone like us-central2-b")
    train = ["python", "-m", "llmjax", "train",
             *train_args(args.config, args.workdir, args.point, overrides),
             "--config.distributed=true"]
    repo = args.repo_dir
    cd = f"cd {repo}" if repo.startswith("~/") and shlex.quote(repo[2:]) == repo[2:] \
        else f"cd {shlex.quote(repo)}"
    remote = (f"{cd} && PYTHONUNBUFFERED=1 .venv/bin/"
              + " ".join(shlex.quote(a) for a in train))
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    cmd += ["--worker=all", f"--command={remote}"]
    return [cmd]


def render_jobset(args, overrides: list[str]) -> str:
    if not _NAME_RE.match(args.name):
        raise UserError(f"--name={args.name!r}: a JobSet name is lower-case letters, digits "
                        "and '-', starting with a letter (at most 40)")
    if args.workers < 1:
        raise UserError(f"--workers={args.workers}: allowed values are integers >= 1")
    if args.chips_per_worker < 1:
        raise UserError(f"--chips_per_worker={args.chips_per_worker}: allowed values are >= 1")
    if not re.match(r"^\d+(x\d+){1,2}$", args.topology):
        raise UserError(f"--topology={args.topology!r}: expected e.g. 2x4 or 4x4x4")
    chips = 1
    for d in args.topology.split("x"):
        chips *= int(d)
    if chips != args.workers * args.chips_per_worker:
        raise UserError(f"inconsistent process counts: --topology={args.topology} has {chips} "
                        f"chips, --workers={args.workers} x --chips_per_worker="
                        f"{args.chips_per_worker} = {args.workers * args.chips_per_worker}")
    train = ["python", "-m", "llmjax", "train",
             *train_args(args.config, args.workdir, args.point, overrides),
             "--config.distributed=true"]
    with open(JOBSET_TEMPLATE) as f:
        template = string.Template(f.read())
    values = {"NAME": args.name, "NAMESPACE": args.namespace, "IMAGE": json.dumps(args.image),
              "WORKERS": str(args.workers), "TPU_TYPE": args.tpu_type,
              "TOPOLOGY": args.topology, "CHIPS": str(args.chips_per_worker),
              "PORT": str(COORDINATOR_PORT), "COMMAND": json.dumps(train)}
    try:
        return template.substitute(values)
    except (KeyError, ValueError) as e:
        raise UserError(f"{JOBSET_TEMPLATE}: bad placeholder {e}") from None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if argv else 2
    overrides = [a for a in argv if a.startswith("--config.")]
    args = _parser().parse_args([a for a in argv if not a.startswith("--config.")])
    if args.target == "tpu":
        commands = tpu_commands(args, overrides)
        for cmd in commands:
            print(" ".join(shlex.quote(c) for c in cmd))
        if args.dry_run:
            return 0
        if shutil.which("gcloud") is None:
            raise UserError("gcloud not found on PATH: install the Google Cloud CLI, or run the "
                            "printed command where it is (--dry_run prints only)")
        for cmd in commands:
            rc = subprocess.call(cmd)
            if rc:
                return rc
        return 0
    manifest = render_jobset(args, overrides)
    sys.stdout.write(manifest)
    if args.dry_run:
        return 0
    if shutil.which("kubectl") is None:
        raise UserError("kubectl not found on PATH: apply the printed manifest where it is "
                        "(kubectl apply -f FILE), or use --dry_run")
    return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True).returncode


__all__ = ["main", "render_jobset", "tpu_commands", "train_args"]
