"""`llmjax train --config=FILE[:arg] --workdir=DIR [--config.key=value ...]`.

Order matters: flags and config are parsed and fully validated (keys, types, model shape, mesh
vs devices, batch split) before the workdir is created, so a bad config writes nothing and exits
2 with one line naming the field. Running again on a workdir with a complete checkpoint resumes.
SIGTERM/SIGINT save a checkpoint and exit 0. NaN/Inf (on_nan='stop') exits 1.
"""

from __future__ import annotations

import sys

from llmjax import config as config_lib
from llmjax.errors import UserError

USAGE = ("usage: llmjax train --config=experiments/configs/tiny.py[:arg] --workdir=DIR "
         "[--config.key=value ...]")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    config, extras = config_lib.parse_flags(argv, {"workdir": "run directory (created)"})
    workdir = extras["workdir"]
    if not workdir:
        raise UserError("--workdir is required (the run directory; rerun on it to resume)")

    from llmjax.train.loop import TrainingDiverged, train

    try:  # train() starts jax.distributed and validates the config before writing anything
        result = train(config, workdir, argv=["llmjax", "train", *argv])
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return TrainingDiverged.exit_code
    if result.preempted:
        print(f"stopped by signal at step {result.step}/{result.total_steps}; "
              f"checkpoint saved in {result.workdir}; run the same command to resume")
    return 0
