"""`llmjax train --config=FILE[:arg] --workdir=DIR [--config.key=value ...] [--allow_changes=F,..]`.

Order matters: flags and config are parsed and fully checked (keys, types, finite values, model
shape, mesh vs devices, batch split, probe suite) before the workdir is created, so a bad config
writes nothing and exits 2 with one line naming the field. Running again on a workdir resumes
from its newest checkpoint that restores — if the config is the run's saved one: a changed field
exits 2 naming it unless listed in --allow_changes. Extending `steps` (or `tokens`) is the common
case: the schedule is recomputed for the new total, so a cosine or linear decay is stretched from
the resumed step on (the learning rate jumps from the old curve to the new one there); with a
constant schedule the run continues exactly as if it had been asked for the longer run.
A second process on the same workdir exits 2 naming the holder of its lock.
SIGTERM/SIGINT save a checkpoint and exit 0. A non-finite loss, gradient or update exits 1.

`--seeds=S` (or a list, `--seeds=0,3,7`) trains S runs that differ only in `seed` (seed,
seed+1, ... for a count) as one vmapped program; `--workdir` must then contain `{seed}`, and
each member is an ordinary run directory (`--workdir=runs/d32_s{seed}` -> runs/d32_s0, ...).
"""

from __future__ import annotations

from typing import Any

from llmjax import config as config_lib
from llmjax import rundir
from llmjax.errors import UserError

USAGE = ("usage: llmjax train --config=experiments/configs/tiny.py[:arg] --workdir=DIR "
         "[--config.key=value ...] [--allow_changes=FIELD,...] [--seeds=S|A,B,...]")


def parse_seeds(text: str, first: int) -> list[int] | None:
    """--seeds: a count S (seeds first..first+S-1) or a comma-separated list; None when empty."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds={text!r}: allowed: a count (e.g. 4) or integers like 0,1,2"
                        ) from None
    if len(values) == 1:
        if values[0] < 1:
            raise UserError(f"--seeds={text!r}: a count must be >= 1")
        return [first + i for i in range(values[0])]
    if len(set(values)) != len(values) or min(values) < 0:
        raise UserError(f"--seeds={text!r}: seeds must be distinct integers >= 0")
    return values


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    config, extras = config_lib.parse_flags(argv, {
        "workdir": "run directory (created)",
        "allow_changes": "comma-separated config fields that may differ from the run's saved "
                         "config on resume (e.g. steps)",
        "seeds": "train several seeds as one program: a count or a list; --workdir must "
                 "contain {seed}"})
    workdir = extras["workdir"]
    if not workdir:
        raise UserError("--workdir is required (the run directory; rerun on it to resume)")
    exp = config_lib.parse_experiment(config)
    seeds = parse_seeds(extras["seeds"], exp.train.seed)
    if seeds is not None and "{seed}" not in workdir:
        raise UserError(f"--workdir={workdir}: with --seeds it must contain {{seed}} (one run "
                        "directory per member)")
    workdirs = [workdir] if seeds is None else [workdir.replace("{seed}", str(s)) for s in seeds]
    for w in workdirs:
        rundir.check_dir_path(w)

    from llmjax.run import train_members

    # train() starts jax.distributed and checks the devices before writing anything; a diverged
    # run or a dead peer is one line and exit 1 (llmjax.cli.main)
    results = train_members(exp, workdirs, seeds=seeds, argv=["llmjax", "train", *argv],
                            allow_changes=rundir.parse_allow_changes(extras["allow_changes"]))
    print_if_preempted(results[0])
    return 0


def print_if_preempted(result: Any) -> bool:
    """Says how to resume a run stopped by a signal (process 0 only); whether it was."""
    import jax

    if result.preempted and jax.process_index() == 0:  # only process 0 writes the run's output
        print(f"stopped by signal at step {result.step}/{result.total_steps}; "
              f"checkpoint saved in {result.workdir}; run the same command to resume")
    return result.preempted
