"""`llmjax sweep --config=FILE[:arg] --workdir=DIR [--parallel=K] [--dry_run] [--config.k=v ...]`.

`--backend=slurm [--nodes=N --gpus_per_node=G --tasks_per_node=T --partition=P --time=T
--account=A --max_concurrent=K --requeue --signal_before=S]` submits the points not yet complete
as one SLURM job array instead (llmjax.sweep.slurm); `--status` prints the points' status and
starts nothing (either backend).

Loads `get_sweep(arg)` from FILE, validates every point (a bad one is a one-line error naming the
point and field; nothing is started), prints the plan with parameters, tokens, FLOPs and the
expected time, then runs each point not yet complete as `llmjax train` in `DIR/runs/<name>/`,
K at a time. `--config.k=v` flags apply to every point (after its own overrides). Rerunning
resumes interrupted points and retries failed ones; a finished sweep does nothing and says so.
Exit status: 0 all complete, 1 some point failed, 2 bad input, 128+N stopped by signal N.
"""

from __future__ import annotations

import os

from llmjax import rundir
from llmjax.errors import UserError

USAGE = ("usage: llmjax sweep --config=FILE[:arg] --workdir=DIR [--parallel=K] [--dry_run] "
         "[--status] [--allow_changes=FIELD,...] [--config.key=value ...] [--backend=local|slurm "
         "--nodes=N --gpus_per_node=G --tasks_per_node=T --partition=P --time=T --account=A "
         "--max_concurrent=K --requeue --signal_before=S]")
SLURM_INTS = ("nodes", "gpus_per_node", "tasks_per_node", "max_concurrent", "signal_before")
SLURM_STRS = ("partition", "time", "account")


def parse_args(argv: list[str]) -> dict:
    """Flags -> {"config", "workdir", "parallel", "dry_run", "overrides"}; UserError if bad."""
    out: dict = {"config": None, "workdir": None, "parallel": 1, "dry_run": False,
                 "overrides": [], "allow_changes": "", "status": False, "backend": "local",
                 "requeue": False, "slurm": {}}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; {USAGE}")
        key, eq, value = arg[2:].partition("=")
        if key.startswith("config."):
            if not eq:
                raise UserError(f"--{key}: give a value as --{key}=VALUE")
            out["overrides"].append(arg)
        elif key in ("dry_run", "dry-run", "status", "requeue"):
            out[key.replace("-", "_")] = value.lower() not in ("false", "0", "no") if eq else True
        elif key in ("config", "workdir", "parallel", "allow_changes", "backend", *SLURM_INTS,
                     *SLURM_STRS):
            if not eq:
                if i + 1 >= len(args):
                    raise UserError(f"--{key} needs a value")
                i += 1
                value = args[i]
            if key in SLURM_INTS:
                try:
                    out["slurm"][key] = int(value)
                except ValueError:
                    raise UserError(f"--{key}={value}: allowed values are integers") from None
            elif key in SLURM_STRS:
                out["slurm"][key] = value
            else:
                out[key] = value
        else:
            raise UserError(f"unknown flag --{key}; allowed: --config, --workdir, --parallel, "
                            "--dry_run, --status, --allow_changes, --config.<key>=<value>, "
                            "--backend, --nodes, --gpus_per_node, --tasks_per_node, --partition, "
                            "--time, --account, --max_concurrent, --requeue, --signal_before")
        i += 1
    if not out["config"]:
        raise UserError(f"--config is required; {USAGE}")
    if not out["workdir"]:
        raise UserError(f"--workdir is required (the sweep directory); {USAGE}")
    try:
        out["parallel"] = int(out["parallel"])
    except ValueError:
        raise UserError(f"--parallel={out['parallel']}: allowed values are integers >= 1") from None
    if out["parallel"] < 1:
        raise UserError(f"--parallel={out['parallel']}: allowed values are integers >= 1")
    if out["backend"] not in ("local", "slurm"):
        raise UserError(f"--backend={out['backend']}: allowed values are local, slurm")
    if out["backend"] == "local" and (out["slurm"] or out["requeue"]):
        flags = ", ".join(f"--{k}" for k in [*out["slurm"], *(["requeue"] * out["requeue"])])
        raise UserError(f"{flags}: only with --backend=slurm")
    return out


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        print(__doc__.split("\n\n", 1)[1])
        return 0
    args = parse_args(argv)
    # The children get the environment as it is; this process only plans, on the CPU, so it never
    # holds an accelerator the runs need.
    env = dict(os.environ)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    from llmjax.sweep.runner import SweepRunner, probe_devices
    from llmjax.sweep.spec import load_sweep

    device = probe_devices(env)
    sweep = load_sweep(args["config"], args["overrides"], num_devices=device.count)
    rundir.check_dir_path(args["workdir"])
    runner = SweepRunner(sweep, args["workdir"], parallel=args["parallel"], device=device,
                         env=env, allow_changes=rundir.parse_allow_changes(args["allow_changes"]))
    if args["status"] and os.path.exists(os.path.join(args["workdir"], "slurm", "jobs.json")):
        args["backend"] = "slurm"  # submitted to SLURM: its queue says what is still running
    if args["backend"] == "slurm":
        from llmjax.sweep import slurm

        opts = dict(args["slurm"])
        if "signal_before" in opts:
            opts["signal_seconds"] = opts.pop("signal_before")
        options = slurm.SlurmOptions(requeue=args["requeue"], **opts)
        return slurm.run(runner, options, dry_run=args["dry_run"], status_only=args["status"])
    if args["status"]:
        runner.say(runner.plan())
        return 0
    return runner.run(dry_run=args["dry_run"])


__all__ = ["main", "parse_args"]
