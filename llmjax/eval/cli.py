"""`llmjax probe --workdir=RUN[,RUN2,...] [--step=S | --all_steps] [--tasks=a,b]`.

Runs the run's probe suite (`config.evals`, or the default suite) on its latest checkpoint, one
step, or every complete checkpoint; merges the records into RUN/probes.jsonl (re-running
replaces records, never duplicates them) and prints a compact table of the last step probed.
Several runs (a comma-separated list, or --workdir repeated) are probed one after the other in
one process, sharing imports, probe data and the compiled programs of equal model shapes.

--export_lm_eval=DIR probes nothing: it writes the listed multiple-choice probes (k = 0) as
lm-evaluation-harness tasks (llmjax.eval.lm_eval_task) and prints the lm_eval command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from llmjax.errors import UserError

USAGE = ("usage: llmjax probe --workdir=RUN[,RUN...] [--step=S | --all_steps] [--tasks=a,b] "
         "[--quiet] | --workdir=RUN --tasks=a,b --export_lm_eval=DIR")
_FLAGS = ("workdir", "step", "tasks", "export_lm_eval")
_SWITCHES = ("all_steps", "quiet")

# Columns of the few-shot table: (metric, header).
COLUMNS = (("exact_match", "em"), ("exact_match_hard", "em_hard"), ("acc", "acc"),
           ("acc_hard", "acc_hard"), ("baseline_freq", "freq"), ("baseline_chance", "chance"),
           ("target_cross_entropy", "ce"), ("chrf", "chrf"), ("k_effective", "k_eff"))


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """--name=value / --name value for workdir, step, tasks; --all_steps, --quiet switches."""
    out: dict[str, Any] = {"all_steps": False, "quiet": False}
    args = list(argv)
    while args:
        a = args.pop(0)
        if not a.startswith("--"):
            raise UserError(f"unexpected argument {a!r}; {USAGE}")
        name, eq, value = a[2:].partition("=")
        if name in _SWITCHES:
            if eq:
                raise UserError(f"--{name} takes no value")
            out[name] = True
        elif name in _FLAGS:
            if not eq:
                if not args:
                    raise UserError(f"--{name} needs a value")
                value = args.pop(0)
            if name == "workdir" and out.get("workdir"):
                value = out["workdir"] + "," + value  # --workdir repeated: every one
            out[name] = value
        else:
            raise UserError(f"unknown flag --{name}; allowed: "
                            + ", ".join(f"--{f}" for f in _FLAGS + _SWITCHES))
    if not out.get("workdir"):
        raise UserError(f"--workdir is required; {USAGE}")
    if out.get("step") is not None:
        if out["all_steps"]:
            raise UserError("give --step or --all_steps, not both")
        try:
            out["step"] = int(out["step"])
        except ValueError:
            raise UserError(f"--step={out['step']!r}: expected an integer step") from None
    if out.get("tasks") is not None:
        out["tasks"] = [t.strip() for t in out["tasks"].split(",") if t.strip()]
        if not out["tasks"]:
            raise UserError("--tasks: give a comma-separated list of probe names")
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.3g}"


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """The records of one step as text: few-shot tasks per (task, k), then the other probes."""
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in records:
        by.setdefault((r["task"], r["k"]), {})[r["metric"]] = r["value"]
    lines = []
    fewshot = [(t, k) for (t, k), m in by.items() if "exact_match" in m]
    if fewshot:
        head = f"{'task':<12} {'k':>3} " + " ".join(f"{h:>8}" for _, h in COLUMNS)
        lines += [head, "-" * len(head)]
        for t, k in sorted(fewshot):
            m = by[(t, k)]
            lines.append(f"{t:<12} {k:>3} " + " ".join(f"{_fmt(m.get(c)):>8}"
                                                       for c, _ in COLUMNS))
    for (t, _), m in sorted(by.items()):
        if "exact_match" in m:
            continue
        if "icl_score" in m:
            lines.append(f"{t}: icl_score {_fmt(m['icl_score'])} nats (loss "
                         f"{_fmt(m.get('loss_early'))} at token {int(m.get('position_early', 0))}"
                         f" -> {_fmt(m.get('loss_late'))} at token "
                         f"{int(m.get('position_late', 0))})")
        elif "prefix_matching_max" in m:
            lines.append(f"{t}: strongest head L{int(m['strongest_layer'])}"
                         f"H{int(m['strongest_head'])} prefix_matching "
                         f"{_fmt(m['prefix_matching_max'])} "
                         f"copying {_fmt(m.get('copying_of_max'))}")
        else:
            lines.append(f"{t}: " + " ".join(f"{name} {_fmt(v)}" for name, v in sorted(m.items())))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    args = parse_args(argv)
    from llmjax.eval.probe import run_probes

    if args.get("export_lm_eval"):
        return _export(args)
    steps: Any = "all" if args["all_steps"] else args.get("step")
    log = None if args["quiet"] else (lambda line: print(line, file=sys.stderr, flush=True))
    workdirs = [w for w in args["workdir"].split(",") if w]
    for workdir in workdirs:
        if len(workdirs) > 1:
            print(f"== {workdir}")
        _report(run_probes(workdir, steps, tasks=args.get("tasks"), log=log))
    return 0


def _export(args: dict[str, Any]) -> int:
    from llmjax.eval.lm_eval_task import export_task

    if "," in args["workdir"] or not args.get("tasks"):
        raise UserError("--export_lm_eval: give one --workdir and --tasks=a,b")
    out = args["export_lm_eval"]
    names = []
    for probe in args["tasks"]:
        written = export_task(args["workdir"], probe, out)
        names.append(written["task"])
        print(f"{written['task']}: {written['n']} items -> {written['yaml']}")
    print(f"lm_eval --model local-completions --include_path {out} --tasks {','.join(names)} "
          f"--model_args base_url=http://127.0.0.1:8000/v1/completions,model=NAME")
    return 0


def _report(records: Sequence[dict[str, Any]]) -> None:
    """Prints one run's summary: a line per earlier step, the table of the last one."""
    if not records:
        print("no records (every probe was skipped)")
        return
    last = max(r["step"] for r in records)
    for step in sorted({r["step"] for r in records}):
        if step == last:
            continue
        rs = [r for r in records if r["step"] == step]
        summary = {(r["task"], r["metric"]): r["value"] for r in rs}
        icl = next((v for (t, m), v in summary.items() if m == "icl_score"), None)
        pm = next((v for (t, m), v in summary.items() if m == "prefix_matching_max"), None)
        print(f"step {step}: {len(rs)} records, icl_score {_fmt(icl)}, "
              f"prefix_matching_max {_fmt(pm)}")
    tokens = next(r["tokens"] for r in records if r["step"] == last)
    print(f"step {last} ({tokens} training tokens):")
    print(format_table([r for r in records if r["step"] == last]))
