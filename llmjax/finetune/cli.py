"""`llmjax finetune --config=FILE[:arg] --init_from=RUN[:STEP] --workdir=NEW [--config.k=v ...]`.

A fine-tuning run is a training run (the same loop, checkpoints, resume, metrics, probes) whose
parameters start from RUN's checkpoint at STEP (default: its latest) and whose config says what
to learn in its `finetune` section (`llmjax.config.FinetuneConfig`): `task=lm` (next-token loss
on `data.dataset`) or `task=classification` (a head on the features, `finetune.dataset`), full
fine-tuning or LoRA (`finetune.lora_rank` > 0).

From the init run it takes, so the parameters mean what they meant there:
- the model section, field for field (`--config.model.dropout=...` and the other fields in
  `llmjax.finetune.init.FREE_FIELDS` may still be set on the command line);
- the tokenizer (`data.tokenizer=file:RUN/tokenizer`). A config naming another tokenizer
  exits 2: a vocabulary cannot change under trained embeddings.
Everything is checked before --workdir is created; rerunning the command resumes.
"""

from __future__ import annotations

import os

from llmjax import config as config_lib
from llmjax import rundir
from llmjax.errors import UserError
from llmjax.finetune.init import FREE_FIELDS, parse_init_from

USAGE = ("usage: llmjax finetune --config=experiments/configs/finetune_sentiment.py[:arg] "
         "--init_from=RUN[:STEP] --workdir=NEW [--config.key=value ...] "
         "[--allow_changes=FIELD,...]")


def finetune_config(config: config_lib.ConfigDict, init_from: str, argv: list[str]
                    ) -> config_lib.ConfigDict:
    """`config` with the init run's model and tokenizer and `finetune.init_from` filled in."""
    from llmjax.eval.probe import load_run

    path, step = parse_init_from(init_from)
    if not os.path.isdir(path):
        raise UserError(f"--init_from={init_from}: no such run directory")
    try:
        run = load_run(path)
    except UserError as e:
        raise UserError(f"--init_from={init_from}: {e}") from None
    wanted = config.data.tokenizer
    theirs = run.exp.data.tokenizer
    if wanted not in (theirs, config_lib.base_config().data.tokenizer) and not (
            wanted.startswith("file:")
            and os.path.abspath(wanted[5:]) == os.path.abspath(run.workdir + "/tokenizer")):
        raise UserError(f"data.tokenizer={wanted!r}: --init_from={init_from} has vocabulary "
                        f"{theirs!r} ({run.tokenizer.vocab_size} tokens); a fine-tuning run "
                        "keeps its init run's tokenizer (leave data.tokenizer unset)")
    model = dict(run.model_cfg.to_dict())
    # Fields the command line sets explicitly and that may differ from the init run's.
    for arg in argv:
        key = arg.split("=", 1)[0].removeprefix("--config.model.")
        if arg.startswith("--config.model.") and key in FREE_FIELDS:
            model[key] = config.model[key]
    with config.unlocked():
        config.model = config_lib.ConfigDict(model)
        config.data.tokenizer = "file:" + os.path.join(os.path.abspath(run.workdir), "tokenizer")
        config.finetune.init_from = os.path.abspath(path) + ("" if step is None else f":{step}")
    return config


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    config, extras = config_lib.parse_flags(argv, {
        "workdir": "the new run directory (created; rerun on it to resume)",
        "init_from": "RUN[:STEP]: the run whose checkpoint the model starts from",
        "allow_changes": "comma-separated config fields that may differ on resume"})
    workdir, init_from = extras["workdir"], extras["init_from"] or config.finetune.init_from
    if not workdir:
        raise UserError("--workdir is required (the new run directory)")
    if not init_from:
        raise UserError("--init_from=RUN[:STEP] is required (the run to fine-tune)")
    rundir.check_dir_path(workdir)
    path, _ = parse_init_from(init_from)
    if os.path.abspath(path) == os.path.abspath(workdir):
        raise UserError(f"--workdir={workdir}: must differ from --init_from")
    exp = config_lib.parse_experiment(finetune_config(config, init_from, list(argv)))

    from llmjax.run import train
    from llmjax.train.cli import print_if_preempted

    result = train(exp, workdir, argv=["llmjax", "finetune", *argv],
                   allow_changes=rundir.parse_allow_changes(extras["allow_changes"]))
    if not print_if_preempted(result) and result.last_eval:
        ev = result.last_eval
        if "accuracy" in ev:
            print(f"validation accuracy {ev['accuracy']:.4f} ± {ev['accuracy_se']:.4f}, "
                  f"macro-F1 {ev['macro_f1']:.4f} (majority baseline "
                  f"{ev['majority_baseline']:.4f}) -> {result.workdir}")
        else:
            print(f"validation loss {ev['loss']:.4f} -> {result.workdir}")
    return 0
