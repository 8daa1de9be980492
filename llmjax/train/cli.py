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
"""

from __future__ import annotations

import sys

from llmjax import config as config_lib
from llmjax import rundir
from llmjax.errors import UserError

USAGE = ("usage: llmjax train --config=experiments/configs/tiny.py[:arg] --workdir=DIR "
         "[--config.key=value ...] [--allow_changes=FIELD,...]")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    config, extras = config_lib.parse_flags(argv, {
        "workdir": "run directory (created)",
        "allow_changes": "comma-separated config fields that may differ from the run's saved "
                         "config on resume (e.g. steps)"})
    workdir = extras["workdir"]
    if not workdir:
        raise UserError("--workdir is required (the run directory; rerun on it to resume)")
    exp = config_lib.parse_experiment(config)
    rundir.check_dir_path(workdir)

    from llmjax.run import train
    from llmjax.train.loop import TrainingDiverged

    try:  # train() starts jax.distributed and checks the devices before writing anything
        result = train(exp, workdir, argv=["llmjax", "train", *argv],
                       allow_changes=rundir.parse_allow_changes(extras["allow_changes"]))
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return TrainingDiverged.exit_code
    if result.preempted:
        print(f"stopped by signal at step {result.step}/{result.total_steps}; "
              f"checkpoint saved in {result.workdir}; run the same command to resume")
    return 0
