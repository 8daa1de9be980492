"""A run's multiple-choice probe as an lm-evaluation-harness task: the same items, scored there.

    paths = export_task("runs/tiny", "facts", "lm_eval_tasks")    # or: llmjax probe --export ...
    lm_eval --model local-completions --include_path lm_eval_tasks --tasks llmjax_facts \\
        --model_args base_url=http://127.0.0.1:8000/v1/completions,model=tiny

Writes `<out>/llmjax_<probe>[_k<K>].jsonl` (one item per line: context, choices, gold) and a task
config `<out>/llmjax_<probe>[_k<K>].yaml` (JSON, which YAML reads) for lm-eval's
`output_type: multiple_choice`: context + choice with an empty target delimiter (each choice
already holds its leading space, as the probe scores it), metrics acc and acc_norm. The items are
the ones `llmjax probe` builds for the run (held-out rules, the run's world and window), so
lm-eval's accuracy on them equals the probe's `acc` record (lm-eval's is over the same
log-likelihoods, from whatever model or server it talks to). Only tasks with an answer set can
be exported: facts, and episode kinds whose answers come from a finite set.
"""

from __future__ import annotations

import json
import os
from typing import Any

from llmjax.errors import UserError
from llmjax.eval.probe import (
    _synthetic_overrides,
    _task_items,
    _tokenizer_key,
    _world_key,
    load_run,
)
from llmjax.eval.suite import resolve_evals
from llmjax.rundir import atomic_write


def task_name(probe: str, k: int) -> str:
    return f"llmjax_{probe}" + (f"_k{k}" if k else "")


def export_task(workdir: str, probe: str, out_dir: str, k: int = 0) -> dict[str, Any]:
    """Writes the task of probe `probe` of run `workdir` at `k` shots (module doc); returns
    {"task", "yaml", "jsonl", "n"}. UserError for a probe without multiple-choice items."""
    run = load_run(workdir)
    suite = resolve_evals(run.exp.evals, [probe], tasks_field="--tasks", max_len=run.max_len)
    spec = suite[probe]
    if spec["type"] not in ("episode", "facts"):
        raise UserError(f"--tasks={probe}: probe type {spec['type']!r} has no multiple-choice "
                        f"items (export facts or episode probes)")
    task, items = _task_items(probe, json.dumps(spec, sort_keys=True),
                              _world_key(_synthetic_overrides(run.exp)),
                              _tokenizer_key(run.tokenizer), run.max_len)
    if k not in items:
        raise UserError(f"--k={k}: probe {probe!r} has k in {sorted(items)}")
    rows = [{"context": it.context, "choices": list(it.choices),
             "gold": it.choices.index(it.target)}
            for it in items[k] if it.choices and it.target in it.choices]
    if not rows:
        raise UserError(f"--tasks={probe}: its items have no answer set to choose from")
    name = task_name(probe, k)
    os.makedirs(out_dir, exist_ok=True)
    jsonl = os.path.abspath(os.path.join(out_dir, name + ".jsonl"))
    yaml = os.path.join(out_dir, name + ".yaml")
    atomic_write(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": jsonl}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean",
                         "higher_is_better": True}],
        "metadata": {"version": 1.0, "run": os.path.abspath(workdir), "probe": probe, "k": k},
    }
    atomic_write(yaml, json.dumps(config, indent=2) + "\n")
    return {"task": name, "yaml": yaml, "jsonl": jsonl, "n": len(rows)}
