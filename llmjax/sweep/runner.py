"""Runs a sweep: every point in its own `llmjax train` subprocess, resumable, K at a time.

Layout of `DIR` (the sweep's --workdir):
  sweep.json               the config spec, the sha256 of the config file's content, sweep-wide
                           overrides and the point names, in order
  run.lock                 held while a sweep runs here (llmjax.rundir.hold): one sweep per DIR
  runs/<name>/overrides.json  the point's override dict, exactly as get_sweep returned it
  runs/<name>/point.json   the plan: spec, overrides, flags, config, parameter counts, tokens, FLOPs
  runs/<name>/status.json  pending | running | complete | failed | interrupted, with pid, return
                           code, error (one line) and error_tail, wall_time_s / cpu_time_s summed
                           over attempts, attempts
  runs/<name>/train.log    the child's stdout+stderr (appended per attempt)
  runs/<name>/...          what `llmjax train` writes (config.json, metrics.jsonl, checkpoints/)

A point is complete when its run directory says so (`RunDir.is_complete`: the training loop
writes `complete` after the last step's checkpoint). Anything else is rerun with the same
command, which resumes from the run's latest checkpoint (exact resume is the trainer's job). A
point whose run directory holds a config other than the point's exits 2 naming the changed
fields, before anything runs, unless they are listed in --allow_changes. A failed point is
recorded and the sweep carries on; the exit status is 1 if any point failed. SIGINT/SIGTERM are
forwarded as SIGTERM to the children (they save a checkpoint and exit 0) and the points stay
resumable; children also get SIGTERM if the sweep process dies (Linux PR_SET_PDEATHSIG), so a
killed sweep leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import heapq
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from llmjax import rundir
from llmjax.config import saved_source
from llmjax.errors import UserError
from llmjax.rundir import RunDir, Status
from llmjax.rundir import atomic_write_json as write_json
from llmjax.sweep.spec import Point, Sweep, canonical
from llmjax.train.checkpoint import complete_steps

RUNS_DIR = rundir.RUNS
SWEEP_FILE = rundir.SWEEP
CPU_SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"

# Throughput model for the time estimate: seconds = startup_s + steps * step_s
#   + FLOPs / (peak / K * mfu), the peak shared by the K runs in parallel.
# cpu: calibrated on the 2-core development box (AMD EPYC, 214 GFLOP/s measured matmul peak)
#   from the CPU seconds of each scaling_demo run at --parallel=2 (one thread per run): ~9 s
#   start-up (imports, compile, first checkpoint), ~15 ms per step of host work and evals, and
#   13-14% of a core's share of the peak for the larger sizes (d64: 15-16 GFLOP/s per core).
# accelerator: a guess (compile-heavy start-up, typical MFU of a well-sharded step); not measured.
ESTIMATE = {
    "cpu": {"startup_s": 9.0, "step_s": 0.015, "mfu": 0.13},
    "accelerator": {"startup_s": 60.0, "step_s": 0.0, "mfu": 0.35},
}


# --------------------------------------------------------------------------- small files


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, RUNS_DIR, name)


def _file_sha256(path: str) -> str | None:
    """sha256 of a config file's content (what the sweep's points were made from)."""
    import hashlib

    try:
        with open(path.partition(":")[0], "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _pid_alive(pid: Any, path: str) -> bool:
    """Whether process `pid` exists and is a training run of `path` (guards against pid reuse)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.abspath(path).encode() in f.read()
    except OSError:
        return True  # no /proc (macOS): trust the pid


# --------------------------------------------------------------------------- devices, estimate


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the children will train on."""

    platform: str  # 'cpu' | 'gpu' | 'tpu' ...
    kind: str
    count: int


_PROBE = ("import json, jax; d = jax.devices(); "
          "print(json.dumps({'platform': d[0].platform, 'kind': d[0].device_kind, "
          "'count': len(d)}))")


def probe_devices(env: dict[str, str] | None = None) -> DeviceInfo:
    """Platform, kind and number of the devices a child process sees.

    Run in a subprocess with the children's environment, so this process never opens an
    accelerator (a TPU admits one process; a GPU would lose memory to us); in-process when the
    children are CPU-only anyway.
    """
    env = dict(os.environ if env is None else env)
    if env.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        import jax

        devices = jax.devices("cpu")
        return DeviceInfo("cpu", devices[0].device_kind, len(devices))
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout
        d = json.loads(out.strip().splitlines()[-1])
        return DeviceInfo(str(d["platform"]), str(d["kind"]), int(d["count"]))
    except (subprocess.SubprocessError, OSError, ValueError, IndexError, KeyError) as e:
        raise UserError(f"cannot list the devices for the runs (python -c 'import jax; "
                        f"jax.devices()' failed: {' '.join(str(e).split())[:200]})") from None


def peak_flops(device: DeviceInfo) -> tuple[float, str]:
    """(peak FLOP/s of all the devices, label): datasheet for accelerators, measured for CPUs."""
    from llmjax.train import mfu

    if device.platform == "cpu":
        return mfu.cpu_peak(), "measured CPU matmul peak"
    per = mfu.lookup_peak(device.kind)
    if per is None:
        return float("nan"), f"{device.kind}: unknown peak"
    return per * device.count, f"{device.kind} x{device.count} datasheet"


def estimate_seconds(point: Point, peak: float, platform: str, parallel: int = 1) -> float:
    """Expected wall seconds of one point when `parallel` points share the machine."""
    c = ESTIMATE["cpu" if platform == "cpu" else "accelerator"]
    share = peak / max(1, parallel)
    compute = point.cost.flops / (share * c["mfu"]) if share > 0 else float("nan")
    return c["startup_s"] + point.cost.steps * c["step_s"] + compute


def makespan(seconds: Sequence[float], parallel: int) -> float:
    """Wall time of running jobs of these durations in order on `parallel` workers."""
    workers = [0.0] * max(1, parallel)
    for s in seconds:
        t = heapq.heappop(workers)
        heapq.heappush(workers, t + s)
    return max(workers)


# --------------------------------------------------------------------------- formatting


def human(x: float, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "?"
    for factor, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                           (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_plan(sweep: Sweep, statuses: dict[str, str], estimates: dict[str, float]) -> str:
    """The table printed before a sweep starts: one line per point, then totals."""
    rows = [("name", "N (non-emb)", "N (total)", "tokens", "tok/N", "steps", "FLOPs",
             "est. time", "status")]
    for p in sweep.points:
        c = p.cost
        rows.append((p.name, human(c.n_non_embedding), human(c.n_params), human(c.tokens),
                     f"{c.tokens / max(c.n_non_embedding, 1):.3g}", str(c.steps),
                     f"{c.flops:.3g}", duration(estimates[p.name]), statuses[p.name]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                     for r in rows)


# --------------------------------------------------------------------------- children


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn giving the child SIGTERM when this process dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded now: nothing heavy runs after fork
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def child_env(device: DeviceInfo, parallel: int, base: dict[str, str] | None = None
              ) -> dict[str, str]:
    """The children's environment: unbuffered output; with K>1 runs on a CPU, one compute thread
    per run (K multi-threaded runs on K cores only fight over them)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    if device.platform == "cpu" and parallel > 1:
        flags = env.get("XLA_FLAGS", "")
        if CPU_SINGLE_THREAD_FLAG not in flags:
            env["XLA_FLAGS"] = f"{flags} {CPU_SINGLE_THREAD_FLAG}".strip()
    return env


def train_command(sweep: Sweep, points: Point | Sequence[Point], workdir: str) -> list[str]:
    """`llmjax train` of one point, or of a point's replicates (members of one group, differing
    only in seed) as one program: `--seeds=a,b,.. --workdir=runs/<group>_s{seed}`."""
    points = [points] if isinstance(points, Point) else list(points)
    first = points[0]
    if len(points) == 1:
        return [sys.executable, "-m", "llmjax", "train", f"--config={sweep.spec}",
                f"--workdir={os.path.abspath(run_dir(workdir, first.name))}", *first.flags(),
                *sweep.extra]
    seeds = [p.experiment.train.seed for p in points]
    template = os.path.abspath(run_dir(workdir, f"{first.group}_s{{seed}}"))
    return [sys.executable, "-m", "llmjax", "train", f"--config={sweep.spec}",
            f"--workdir={template}", f"--seeds={','.join(map(str, seeds))}", *first.flags(),
            *sweep.extra]


def together(point: Point, queue: list[Point]) -> list[Point]:
    """`point` and the replicates of its group waiting in `queue` (taken out of it): they train
    as one program."""
    if point.group is None:
        return [point]
    mates = [q for q in queue if q.group == point.group]
    for q in mates:
        queue.remove(q)
    return [point, *mates]


def _checkpoint_steps(path: str) -> list[int]:
    return complete_steps(RunDir(path).checkpoints_dir)


def _error_of(log_path: str, tail_lines: int = 25) -> tuple[str, str]:
    """(one-line error, last lines) of a failed run's log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 32768))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "no log", ""
    lines = [ln for ln in lines if ln.strip()]
    tail = "\n".join(lines[-tail_lines:])
    for line in reversed(lines):
        if line.startswith("error:") or line.startswith("llmjax.") or (
                line and not line[0].isspace() and ("Error" in line.split(":")[0]
                                                    or "Exception" in line.split(":")[0])):
            return line.strip()[:400], tail
    return (lines[-1].strip()[:400] if lines else "no output"), tail


@dataclasses.dataclass
class _Child:
    points: list[Point]  # one point, or the replicates trained as one program
    proc: subprocess.Popen
    start: float
    status: dict[str, dict[str, Any]]  # by point name
    log: Any


class SweepRunner:
    """Runs the not-yet-complete points of `sweep` under `workdir`, `parallel` at a time."""

    def __init__(self, sweep: Sweep, workdir: str, *, parallel: int = 1,
                 device: DeviceInfo | None = None, env: dict[str, str] | None = None,
                 out: TextIO | None = None, progress: bool | None = None,
                 report_every: float = 30.0, poll_s: float = 0.5,
                 allow_changes: Sequence[str] = ()):
        if parallel < 1:
            raise UserError(f"--parallel={parallel}: allowed values are integers >= 1")
        self.sweep, self.workdir, self.parallel = sweep, os.path.abspath(workdir), parallel
        self.device = device if device is not None else probe_devices(env)
        self.env = child_env(self.device, parallel, env)
        self.out = out or sys.stdout
        self.tty = (sys.stderr.isatty() if progress is None else progress)
        self.report_every, self.poll_s = report_every, poll_s
        self.stop_signal: int | None = None
        self.allow_changes = list(allow_changes)
        self.changed = self.check_configs(sweep.points)
        self.children: dict[str, _Child] = {}
        self.peak, self.peak_label = peak_flops(self.device)
        self.estimates = {p.name: estimate_seconds(p, self.peak, self.device.platform, parallel)
                          for p in sweep.points}

    # ---- reporting ------------------------------------------------------------------------
    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def statuses(self) -> dict[str, str]:
        out = {}
        for p in self.sweep.points:
            path = run_dir(self.workdir, p.name)
            status = RunDir(path).read_status()
            if status["status"] == Status.RUNNING and not _pid_alive(status.get("pid"), path):
                out[p.name] = Status.INTERRUPTED.value  # its sweep (or its child) was killed
            elif status["status"] == Status.COMPLETE and p.name in self.changed:
                out[p.name] = Status.PENDING.value  # complete under its old config: run again
            else:
                out[p.name] = status["status"]
        return out

    def plan(self) -> str:
        """The plan: the table, total compute and the expected time (printed before starting)."""
        statuses = self.statuses()
        todo = [p for p in self.sweep.points if statuses[p.name] != Status.COMPLETE]
        order = self.order(todo)
        total = sum(p.cost.flops for p in self.sweep.points)
        total_6nd = sum(p.cost.flops_6nd for p in self.sweep.points)
        left = sum(p.cost.flops for p in todo)
        wall = makespan([self.estimates[p.name] for p in order], self.parallel)
        c = ESTIMATE["cpu" if self.device.platform == "cpu" else "accelerator"]
        lines = [
            f"sweep {self.sweep.spec} -> {self.workdir}",
            f"{len(self.sweep.points)} points, {len(todo)} to run, {self.parallel} at a time on "
            f"{self.device.count} {self.device.platform} device(s) ({self.device.kind})",
            format_plan(self.sweep, statuses, self.estimates),
            f"total compute {total:.3g} FLOPs (6ND {total_6nd:.3g}); "
            f"left to run {left:.3g} FLOPs",
            f"expected time {duration(wall)} (model: {c['startup_s']:.0f}s start-up + "
            f"{1000 * c['step_s']:.0f}ms/step + FLOPs at {100 * c['mfu']:.0f}% MFU of "
            f"{human(self.peak, 'FLOP/s')}, {self.peak_label}, shared by {self.parallel} run(s))",
        ]
        return "\n".join(lines)

    def order(self, todo: list[Point]) -> list[Point]:
        """Sweep order with one worker; longest first with several (shortest overall wall time)."""
        if self.parallel == 1:
            return list(todo)
        return sorted(todo, key=lambda p: -self.estimates[p.name])

    # ---- bookkeeping -----------------------------------------------------------------------
    def check_configs(self, points: list[Point]) -> set[str]:
        """Refuse a point whose run directory was trained with another config (the same check
        as `llmjax train`'s resume, point by point), before anything runs. Returns the names of
        points whose config changed in allowed fields: they run again (and resume)."""
        changed = set()
        for p in points:
            run = RunDir(run_dir(self.workdir, p.name))
            saved = run.saved_config()
            if saved is not None and rundir.check_config_unchanged(
                    saved_source(saved, run.config_path), p.experiment.source,
                    self.allow_changes, where=f"sweep point {p.name!r}"):
                changed.add(p.name)
        return changed

    def _check_and_record(self, points: list[Point]) -> None:
        """Check every point's config against its run again (under the lock); write the plan
        files."""
        self.changed = self.check_configs(points)
        os.makedirs(os.path.join(self.workdir, RUNS_DIR), exist_ok=True)
        write_json(os.path.join(self.workdir, SWEEP_FILE),
                   {"spec": self.sweep.spec, "config_sha256": _file_sha256(self.sweep.spec),
                    "extra": self.sweep.extra, "points": [p.name for p in self.sweep.points]})
        for p in points:
            path = run_dir(self.workdir, p.name)
            os.makedirs(path, exist_ok=True)
            write_json(os.path.join(path, rundir.OVERRIDES), canonical(p.overrides))
            write_json(os.path.join(path, rundir.POINT), {
                "name": p.name, "group": p.group, "spec": self.sweep.spec,
                "overrides": canonical(p.overrides),
                "extra": self.sweep.extra, "flags": p.flags(), "budget": p.budget,
                "cost": dataclasses.asdict(p.cost), "config": canonical(p.config.to_dict()),
            })
            run = RunDir(path)
            if not os.path.exists(run.status_path):
                run.write_status(Status.PENDING, name=p.name, attempts=0, wall_time_s=0.0,
                                 cpu_time_s=0.0)

    def _wait_for_stale(self, points: list[Point], timeout: float = 180.0) -> None:
        """A point 'running' from a killed sweep: wait until its child has saved and exited."""
        for p in points:
            path = run_dir(self.workdir, p.name)
            status = RunDir(path).read_status()
            pid = status.get("pid")
            if status["status"] != Status.RUNNING or not _pid_alive(pid, path):
                continue
            self.say(f"waiting for the previous run of {p.name} (pid {pid}) to exit")
            deadline = time.monotonic() + timeout
            while _pid_alive(pid, path):
                if time.monotonic() > deadline:
                    raise UserError(f"sweep point {p.name!r}: an earlier run (pid {pid}) is still "
                                    f"training in {path}; stop it first")
                time.sleep(0.5)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handle(signum: int, frame: Any) -> None:
            second = self.stop_signal is not None
            self.stop_signal = signum
            for child in self.children.values():
                # First signal: SIGTERM = checkpoint and exit 0; a second Ctrl-C stops them now.
                sig = signal.SIGINT if second and signum == signal.SIGINT else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, sig)

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ---- children ---------------------------------------------------------------------------
    def _start(self, points: list[Point]) -> _Child:
        runs = [RunDir(run_dir(self.workdir, p.name)) for p in points]
        before = [run.read_status() for run in runs]
        cmd = train_command(self.sweep, points, self.workdir)
        if self.allow_changes:
            cmd.append(f"--allow_changes={','.join(self.allow_changes)}")
        attempt = int(before[0].get("attempts", 0)) + 1
        header = f"\n# llmjax sweep: attempt {attempt} at {_now()}\n# {' '.join(cmd)}\n"
        names = ", ".join(p.name for p in points)
        for run in runs[1:]:  # one program, one log: the first member's
            with open(run.log_path, "a") as f:
                f.write(f"{header}# trained as one program with {names}; its output is in "
                        f"{runs[0].log_path}\n")
        log = open(runs[0].log_path, "ab")
        log.write(header.encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
                                preexec_fn=_pdeathsig())
        status = {}
        for point, run, old in zip(points, runs, before, strict=True):
            status[point.name] = run.write_status(
                Status.RUNNING, name=point.name, pid=proc.pid, attempts=attempt, started=_now(),
                command=cmd, steps=point.cost.steps, returncode=None,
                wall_time_s=float(old.get("wall_time_s") or 0.0),
                cpu_time_s=float(old.get("cpu_time_s") or 0.0))
        return _Child(points, proc, time.monotonic(), status, log)

    def _finish(self, child: _Child, wait_status: int, rusage: Any) -> dict[str, str]:
        """Each point's status after its process ended (the training loop wrote how the run
        ended; the runner only adds what it saw). Time is the program's, for every member."""
        child.log.close()
        rc = os.waitstatus_to_exitcode(wait_status)
        child.proc.returncode = rc  # reaped by os.wait4: tell Popen
        first_log = RunDir(run_dir(self.workdir, child.points[0].name)).log_path
        out = {}
        for point in child.points:
            run = RunDir(run_dir(self.workdir, point.name))
            old = child.status[point.name]
            s = {"returncode": rc, "pid": None, "finished": _now(),
                 "wall_time_s": float(old.get("wall_time_s") or 0.0)
                 + time.monotonic() - child.start,
                 "cpu_time_s": float(old.get("cpu_time_s") or 0.0)
                 + rusage.ru_utime + rusage.ru_stime,
                 }
            step = run.last_train_record()[0]
            if step is not None:
                s["step"] = step
            self.changed.discard(point.name)  # it ran under the new config now
            if run.is_complete():  # even if the process then died in teardown: the run is done
                status = Status.COMPLETE
                s.update(error=None, error_tail=None)
            elif rc == 0 or (rc < 0 and self.stop_signal is not None):
                status = Status.INTERRUPTED  # saved a checkpoint on our signal: resumable
                saved = _checkpoint_steps(run.path)
                s["error"] = (f"stopped at step {saved[-1] if saved else 0} of "
                              f"{point.cost.steps} (latest checkpoint)")
            else:
                status = Status.FAILED
                s["error"], s["error_tail"] = _error_of(first_log)
            child.status[point.name] = run.write_status(status, **s)
            out[point.name] = status.value
        return out

    def _running_flops(self) -> float:
        done = 0.0
        for child in self.children.values():
            for point in child.points:
                _, tokens = RunDir(run_dir(self.workdir, point.name)).last_train_record()
                if tokens:
                    done += min(tokens, point.cost.tokens) * point.cost.flops_per_token
        return done

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, dry_run: bool = False) -> int:
        """Prints the plan; unless `dry_run`, runs what is left. Returns the exit status."""
        self.say(self.plan())
        if dry_run:
            self.say("dry run: nothing started")
            return 0
        statuses = self.statuses()
        todo = self.order([p for p in self.sweep.points if statuses[p.name] != Status.COMPLETE])
        if not todo:
            self.say(f"sweep complete: nothing to do ({len(self.sweep.points)} points already "
                     f"complete in {self.workdir})")
            return 0
        with rundir.hold(self.workdir, say=self.say):
            self._check_and_record(self.sweep.points)
            self._wait_for_stale(todo)
            with self._signals():
                results = self._loop(todo)
        return self._summary(results)

    def _loop(self, todo: list[Point]) -> dict[str, str]:
        queue = list(todo)
        results: dict[str, str] = {}
        total_flops = sum(p.cost.flops for p in self.sweep.points)
        done_flops = sum(p.cost.flops for p in self.sweep.points if p not in todo)
        start_done, t0 = done_flops, time.monotonic()
        plan_left = makespan([self.estimates[p.name] for p in todo], self.parallel)
        n_total, n_done = len(self.sweep.points), len(self.sweep.points) - len(todo)
        bar = None
        if self.tty:
            from tqdm import tqdm

            bar = tqdm(total=total_flops, initial=done_flops, unit="FLOP", unit_scale=True,
                       dynamic_ncols=True, file=sys.stderr, desc="sweep")
        log = (bar.write if bar is not None else self.say)
        last_report = time.monotonic()

        def eta(now_done: float) -> float:
            elapsed = time.monotonic() - t0
            progress = now_done - start_done
            if progress <= 0 or elapsed < 20:
                return max(0.0, plan_left - elapsed)
            return elapsed / progress * (total_flops - now_done)

        try:
            while queue or self.children:
                while queue and len(self.children) < self.parallel and self.stop_signal is None:
                    point = queue.pop(0)
                    points = together(point, queue)
                    self.children[point.name] = self._start(points)
                    names = ", ".join(p.name for p in points)
                    what = f"{len(points)} seeds as one program: {names}" if len(points) > 1 \
                        else point.name
                    log(f"[{n_done + 1}/{n_total}] started {what} "
                        f"({human(point.cost.n_non_embedding)} params, "
                        f"{human(point.cost.tokens)} tokens, est. "
                        f"{duration(self.estimates[point.name])})")
                if self.stop_signal is not None:
                    queue.clear()
                for name, child in list(self.children.items()):
                    try:
                        pid, wait_status, rusage = os.wait4(child.proc.pid, os.WNOHANG)
                    except ChildProcessError:
                        continue
                    if pid == 0:
                        continue
                    del self.children[name]
                    finished = self._finish(child, wait_status, rusage)
                    results.update(finished)
                    for point in child.points:
                        status, s = finished[point.name], child.status[point.name]
                        if status == Status.COMPLETE:
                            n_done += 1
                            done_flops += point.cost.flops
                            log(f"[{n_done}/{n_total}] {point.name} complete in "
                                f"{duration(s['wall_time_s'])} (cpu {duration(s['cpu_time_s'])})")
                        elif status == Status.FAILED:
                            log(f"[{n_done}/{n_total}] {point.name} FAILED (exit "
                                f"{s['returncode']}): {s['error']}")
                        else:
                            log(f"[{n_done}/{n_total}] {point.name} interrupted: {s['error']}; "
                                "resumable")
                now_done = done_flops + self._running_flops()
                if bar is not None:
                    bar.n = min(now_done, total_flops)
                    bar.set_postfix_str(f"{n_done}/{n_total} runs, ETA {duration(eta(now_done))}",
                                        refresh=False)
                    bar.refresh()
                elif time.monotonic() - last_report >= self.report_every and self.children:
                    last_report = time.monotonic()
                    self.say(f"progress: {100 * now_done / max(total_flops, 1):.0f}% of FLOPs, "
                             f"{n_done}/{n_total} runs complete, running "
                             f"{', '.join(self.children)}, elapsed "
                             f"{duration(time.monotonic() - t0)}, ETA {duration(eta(now_done))}")
                if self.children:
                    time.sleep(self.poll_s)
        finally:
            if bar is not None:
                bar.close()
        return results

    def _summary(self, results: dict[str, str]) -> int:
        statuses = self.statuses()
        failed = [n for n, s in statuses.items() if s == "failed"]
        complete = [n for n, s in statuses.items() if s == Status.COMPLETE]
        pending = [n for n, s in statuses.items() if s not in (Status.FAILED, Status.COMPLETE)]
        try:
            from llmjax.sweep.results import write_results

            paths = write_results(self.workdir)
            self.say(f"results: {', '.join(paths)}")
        except Exception as e:  # noqa: BLE001 - results are re-gathered by `llmjax results`
            self.say(f"could not gather results ({type(e).__name__}: {e}); "
                     f"run `llmjax results --workdir={self.workdir}`")
        self.say(f"{len(complete)}/{len(statuses)} points complete"
                 + (f"; failed: {', '.join(failed)}" if failed else "")
                 + (f"; not finished: {', '.join(pending)}" if pending else ""))
        for name in failed:
            path = run_dir(self.workdir, name)
            run = RunDir(path)
            err = run.read_status().get("error")
            self.say(f"  {name}: {err}  (log: {run.log_path})")
        if self.stop_signal is not None:
            self.say("sweep interrupted: rerun the same command to resume")
            return 128 + int(self.stop_signal)
        return 1 if failed else 0


__all__ = ["DeviceInfo", "SweepRunner", "child_env", "estimate_seconds",
           "makespan", "probe_devices", "run_dir",
           "train_command"]
