"""`llmjax sweep --backend=slurm`: the points not yet complete as ONE SLURM job array.

Array index i trains one point (or one group of seed replicates, as one program, as the local
backend does) with `srun` over the job's N nodes x T tasks per node: each task is one JAX process
(jax.distributed reads SLURM's variables; llmjax.distributed). The generated batch script is kept
beside the sweep, `DIR/slurm/array-<job id>.sbatch`, with `DIR/slurm/jobs.json` recording which
point each index of each submitted array trains; SLURM's own output is `DIR/slurm/<job>_<i>.out`,
the training output is appended to `DIR/runs/<name>/train.log` as with the local backend.

Status comes from the run directories, as with the local backend (`RunDir.is_complete` decides;
the trainer writes running / complete / interrupted / failed), plus `squeue` for points whose
array task is still queued or running. Rerunning submits only the points that are neither
complete nor in a live job; `--status` prints the table and submits nothing.

Preemption (`--requeue`): `#SBATCH --signal=B:TERM@S` asks SLURM to signal the batch script S
seconds before the time limit; its trap forwards SIGTERM to srun, which forwards it to the
tasks: `llmjax train` saves a checkpoint and exits 0. A run that exited 0 without being complete
was stopped early (by that signal, or by `scancel --signal=TERM` to its steps), so the script
ends with `scontrol requeue $SLURM_JOB_ID`: the same array task starts again and resumes from the
checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import shutil
import subprocess
import sys
from typing import Any

from llmjax import rundir
from llmjax.errors import UserError
from llmjax.rundir import RunDir, Status
from llmjax.sweep.spec import Point, Sweep

SLURM_DIR = "slurm"
JOBS_FILE = "jobs.json"
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
               "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT")


@dataclasses.dataclass
class SlurmOptions:
    nodes: int = 1
    tasks_per_node: int | None = None  # default: gpus_per_node, or 1 without GPUs
    gpus_per_node: int = 0
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    max_concurrent: int | None = None
    requeue: bool = False
    signal_seconds: int = 300  # SIGTERM this long before the time limit
    sbatch_args: tuple[str, ...] = ()

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node or 1

    @property
    def ntasks(self) -> int:
        return self.nodes * self.ntasks_per_node

    def check(self) -> None:
        for name in ("nodes", "tasks_per_node", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name}={value}: allowed values are integers >= 1")
        if self.gpus_per_node < 0:
            raise UserError(f"--gpus_per_node={self.gpus_per_node}: allowed values are >= 0")
        if self.signal_seconds < 1:
            raise UserError(f"--signal_before={self.signal_seconds}: allowed values are >= 1")
        if (self.gpus_per_node and self.tasks_per_node is not None
                and self.gpus_per_node % self.tasks_per_node):
            raise UserError(f"inconsistent process counts: --gpus_per_node={self.gpus_per_node} "
                            f"does not split over --tasks_per_node={self.tasks_per_node}")
        for name in ("partition", "time", "account"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or any(c.isspace() for c in value)):
                raise UserError(f"--{name}={value!r}: must be one word")


def check_points(sweep: Sweep, options: SlurmOptions) -> None:
    """Every point's global batch must split over the job's processes."""
    for p in sweep.points:
        b = p.experiment.data.batch_size
        if b % options.ntasks:
            raise UserError(f"inconsistent process counts: sweep point {p.name!r} has "
                            f"data.batch_size={b}, not divisible by the {options.ntasks} processes "
                            f"(--nodes={options.nodes} x {options.ntasks_per_node} tasks per node)")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"{tool} not found on PATH: --backend=slurm needs SLURM's commands "
                        "(run on a login node), or use --backend=local")
    return path


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return " ".join(lines)[:400] or "no message"


# --------------------------------------------------------------------------- the script


def render_script(sweep: Sweep, groups: list[list[Point]], workdir: str, options: SlurmOptions,
                  commands: list[list[str]], chdir: str) -> str:
    """The batch script of one job array: index i trains `groups[i]` with `commands[i]`."""
    workdir = os.path.abspath(workdir)
    out_dir = os.path.join(workdir, SLURM_DIR)
    n = len(groups)
    array = f"0-{n - 1}" + (f"%{options.max_concurrent}" if options.max_concurrent else "")
    lines = [
        "#!/usr/bin/env bash",
        f"# Generated by `llmjax sweep --backend=slurm` for {sweep.spec}",
        f"# sweep directory {workdir}; {n} array task(s), one per point (or group of seeds).",
        f"#SBATCH --job-name=llmjax-{os.path.basename(workdir.rstrip('/')) or 'sweep'}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={options.nodes}",
        f"#SBATCH --ntasks-per-node={options.ntasks_per_node}",
        f"#SBATCH --chdir={chdir}",
        f"#SBATCH --output={out_dir}/%A_%a.out",
        "#SBATCH --open-mode=append",
    ]
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    for name in ("partition", "time", "account"):
        value = getattr(options, name)
        if value:
            lines.append(f"#SBATCH --{name}={value}")
    if options.requeue:
        lines.append("#SBATCH --requeue")
        lines.append(f"#SBATCH --signal=B:TERM@{options.signal_seconds}")
    else:
        lines.append("#SBATCH --no-requeue")
    lines += [f"#SBATCH {a}" for a in options.sbatch_args]
    requeue = "1" if options.requeue else "0"
    lines += [
        "set -uo pipefail",
        "export PYTHONUNBUFFERED=1",
        f"py={shlex.quote(sys.executable)}",
        'case "${SLURM_ARRAY_TASK_ID:?not an array task}" in',
    ]
    for i, (group, cmd) in enumerate(zip(groups, commands, strict=True)):
        run = os.path.join(workdir, rundir.RUNS, group[0].name)
        runs = " ".join(shlex.quote(os.path.join(workdir, rundir.RUNS, p.name)) for p in group)
        lines += [f"  {i}) runs=({runs})",
                  f"     cmd=({' '.join(shlex.quote(c) for c in cmd)})",
                  f"     log={shlex.quote(os.path.join(run, rundir.LOG))} ;;"]
    lines += [
        '  *) echo "llmjax: no point for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        'mkdir -p "$(dirname "$log")"',
        'printf "\\n# llmjax sweep (slurm): job %s (array %s_%s), restart %s, %s x %s tasks at '
        '%s on %s\\n# %s\\n" "$SLURM_JOB_ID" "${SLURM_ARRAY_JOB_ID:-}" "$SLURM_ARRAY_TASK_ID" '
        '"${SLURM_RESTART_COUNT:-0}" "$SLURM_JOB_NUM_NODES" '
        f'"{options.ntasks_per_node}" "$(date -u +%FT%TZ)" "$(hostname -s)" "${{cmd[*]}}" '
        '>> "$log"',
        f"srun --kill-on-bad-exit=1 --nodes={options.nodes} --ntasks={options.ntasks} "
        f"--ntasks-per-node={options.ntasks_per_node} "
        '"${cmd[@]}" >> "$log" 2>&1 &',
        "child=$!",
        "# SIGTERM to this script (SLURM's --signal=B:TERM before the time limit, or scancel",
        "# --batch) goes on to the tasks of the job's steps (srun itself would kill them on a",
        "# SIGTERM): they checkpoint and exit 0, then srun returns.",
        'forward() { echo "llmjax: batch script got a signal, sending SIGTERM to the training '
        'tasks" >&2; scancel --signal=TERM "$SLURM_JOB_ID"; }',
        "trap forward TERM USR1",
        'rc=0; wait "$child" || rc=$?',
        'while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done',
        "complete=1",
        'for run in "${runs[@]}"; do',
        '  "$py" -c "import sys; from llmjax.rundir import RunDir; '
        'sys.exit(0 if RunDir(sys.argv[1]).is_complete() else 1)" "$run" || complete=0',
        "done",
        'echo "llmjax: training exited $rc; complete=$complete" >&2',
        f'if [ "$rc" = 0 ] && [ "$complete" = 0 ] && [ "{requeue}" = 1 ]; then',
        '  echo "llmjax: stopped before the end with a checkpoint: requeueing job $SLURM_JOB_ID" '
        '>&2',
        '  scontrol requeue "$SLURM_JOB_ID"  # ends this script; the task restarts and resumes',
        "  sleep 60",
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- jobs and status


def jobs_path(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), SLURM_DIR, JOBS_FILE)


def read_jobs(workdir: str) -> list[dict[str, Any]]:
    jobs = rundir.read_json(jobs_path(workdir))
    return jobs if isinstance(jobs, list) else []


def live_tasks(workdir: str) -> dict[str, tuple[str, str]]:
    """point name -> (SLURM task id 'job_index', state) for points in a job still queued or
    running, from squeue; {} when no job of this sweep is alive (or squeue is missing)."""
    jobs = read_jobs(workdir)
    if not jobs or shutil.which("squeue") is None:
        return {}
    ids = ",".join(str(j["job_id"]) for j in jobs)
    proc = subprocess.run(["squeue", "-h", "-r", "-j", ids, "-o", "%A|%F|%K|%T"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:  # every job has left the queue (squeue: invalid job id)
        return {}
    by_job = {str(j["job_id"]): j for j in jobs}
    out: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or parts[3] not in LIVE_STATES:
            continue
        job = by_job.get(parts[1])
        if job is None or not parts[2].isdigit():
            continue
        for name in job["tasks"].get(parts[2], []):
            out[name] = (f"{parts[1]}_{parts[2]}", parts[3].lower())
    return out


def statuses(sweep: Sweep, workdir: str, changed: set[str]) -> dict[str, str]:
    """Each point's status: the run directory's, 'queued (job)' / 'running (job)' from squeue."""
    live = live_tasks(workdir)
    out = {}
    for p in sweep.points:
        run = RunDir(os.path.join(workdir, rundir.RUNS, p.name))
        status = run.read_status()["status"]
        if status == Status.COMPLETE and p.name in changed:
            status = Status.PENDING.value
        if status != Status.COMPLETE and p.name in live:
            task, state = live[p.name]
            status = f"{'queued' if state == 'pending' else state} ({task})"
        elif status == Status.RUNNING:
            status = Status.INTERRUPTED.value  # no live job holds it: it was killed
        out[p.name] = status
    return out


def _submit(script_path: str) -> str:
    sbatch = _require("sbatch")
    proc = subprocess.run([sbatch, "--parsable", script_path], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise UserError(f"sbatch refused the job array: {_one_line(proc.stderr or proc.stdout)}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise UserError(f"sbatch printed no job id: {_one_line(proc.stdout)}")
    return job_id


def run(runner: Any, options: SlurmOptions, *, dry_run: bool = False,
        status_only: bool = False) -> int:
    """Submits the sweep's pending points as one job array (see the module doc)."""
    from llmjax.sweep.runner import format_plan, together, train_command

    options.check()
    sweep, workdir = runner.sweep, runner.workdir
    check_points(sweep, options)
    current = statuses(sweep, workdir, runner.changed)
    runner.say(f"sweep {sweep.spec} -> {workdir} (backend slurm: {options.nodes} node(s) x "
               f"{options.ntasks_per_node} task(s) per point)")
    runner.say(format_plan(sweep, current, runner.estimates))
    if status_only:
        done = sum(s == Status.COMPLETE for s in current.values())
        runner.say(f"{done}/{len(current)} points complete")
        return 0
    todo = [p for p in sweep.points if current[p.name] in (Status.PENDING, Status.FAILED,
                                                           Status.INTERRUPTED)]
    busy = [n for n, s in current.items() if s not in (Status.PENDING, Status.FAILED,
                                                        Status.INTERRUPTED, Status.COMPLETE)]
    if not todo:
        runner.say("nothing to submit: " + (f"{len(busy)} point(s) in live jobs ("
                                             f"{', '.join(busy)})" if busy else
                                             f"all {len(sweep.points)} points complete"))
        return 0
    queue, groups = list(todo), []
    while queue:
        groups.append(together(queue.pop(0), queue))
    commands = []
    for group in groups:
        cmd = train_command(sweep, group if len(group) > 1 else group[0], workdir)
        if runner.allow_changes:
            cmd.append(f"--allow_changes={','.join(runner.allow_changes)}")
        commands.append(cmd)
    script = render_script(sweep, groups, workdir, options, commands, os.getcwd())
    if dry_run:
        runner.say(f"dry run: would submit {len(groups)} array task(s) with this script; nothing "
                   "submitted")
        runner.say(script)
        return 0
    _require("sbatch")
    _require("srun")
    slurm_dir = os.path.join(workdir, SLURM_DIR)
    with rundir.hold(workdir, say=runner.say):
        runner._check_and_record(sweep.points)
        os.makedirs(slurm_dir, exist_ok=True)
        pending = os.path.join(slurm_dir, "array-pending.sbatch")
        rundir.atomic_write(pending, script)
        try:
            job_id = _submit(pending)
        except UserError:
            os.remove(pending)  # nothing was submitted: keep no script that claims otherwise
            raise
        script_path = os.path.join(slurm_dir, f"array-{job_id}.sbatch")
        os.replace(pending, script_path)
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        jobs = read_jobs(workdir)
        jobs.append({"job_id": int(job_id), "script": script_path, "submitted": now,
                     "options": dataclasses.asdict(options),
                     "tasks": {str(i): [p.name for p in g] for i, g in enumerate(groups)}})
        rundir.atomic_write_json(jobs_path(workdir), jobs)
    runner.say(f"submitted job array {job_id} ({len(groups)} task(s)); script {script_path}; "
               f"check with `llmjax sweep --config={sweep.spec} --workdir={workdir} --status`")
    return 0


__all__ = ["SlurmOptions", "check_points", "live_tasks", "read_jobs", "render_script", "run",
           "statuses"]
