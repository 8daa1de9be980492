"""Does a larger pretrained model fine-tune better, and is LoRA close to full fine-tuning?

Fine-tunes every scaling-study run of a `make demo` directory (runs/s_*) on the embedded
sentiment task (llmjax.finetune.sentiment), three ways, with the real CLI:

  full     llmjax finetune, every parameter (experiments/configs/finetune_sentiment.py)
  lora     llmjax finetune, LoRA rank 8 on wq wv wo w_up w_down (`:lora`)
  scratch  llmjax train on the same task, same shape and tokenizer, random init: what the
           task costs without pretraining (the baseline each pretrained number stands beside)

    python experiments/finetune_sentiment.py --demo=demo [--parallel=2] [--steps=400]

Writes DEMO/finetune/: one run directory per (size, method), results.csv, results.md and
accuracy_vs_size.png (validation accuracy ± binomial SE against pretrained non-embedding
parameters; chance = the majority class). Reruns skip completed runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "finetune_sentiment.py")
METHODS = ("full", "lora", "scratch")
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _command(run: str, method: str, workdir: str, steps: int) -> list[str]:
    common = [f"--workdir={workdir}", f"--config.steps={steps}",
              f"--config.checkpoint_every={steps}"]
    if method in ("full", "lora"):
        return [sys.executable, "-m", "llmjax", "finetune", f"--config={CONFIG}:{method}",
                f"--init_from={run}", *common]
    saved = json.load(open(os.path.join(run, "config.json")))
    model = [f"--config.model.{k}={v}" for k, v in saved["model"].items()
             if v is not None and k != "vocab_size"]
    return [sys.executable, "-m", "llmjax", "train", f"--config={CONFIG}", *common, *model,
            f"--config.data.tokenizer=file:{os.path.join(run, 'tokenizer')}"]


def _last_eval(workdir: str) -> dict | None:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    evals = [json.loads(line) for line in open(path) if '"eval"' in line]
    return evals[-1] if evals else None


def _complete(workdir: str) -> bool:
    try:
        return json.load(open(os.path.join(workdir, "status.json")))["status"] == "complete"
    except (OSError, ValueError, KeyError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="demo", help="a `make demo` directory (its runs/s_*)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args(argv)
    runs_dir = os.path.join(args.demo, "runs")
    sizes = sorted((r for r in os.listdir(runs_dir) if r.startswith("s_")) if
                   os.path.isdir(runs_dir) else [], key=lambda r: int(r.split("_d")[1]))
    if not sizes:
        print(f"error: no scaling-study runs in {runs_dir}; run `make demo` first",
              file=sys.stderr)
        return 2
    out = os.path.join(args.demo, "finetune")
    os.makedirs(out, exist_ok=True)
    jobs = [(s, m) for s in sizes for m in METHODS]
    pending = [(s, m) for s, m in jobs if not _complete(os.path.join(out, f"{s}_{m}"))]
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD))
    start, running, done, finished = time.time(), [], len(jobs) - len(pending), 0
    while pending or running:
        while pending and len(running) < args.parallel:
            size, method = pending.pop(0)
            workdir = os.path.join(out, f"{size}_{method}")
            log = open(workdir + ".log", "a")
            cmd = _command(os.path.join(runs_dir, size), method, workdir, args.steps)
            running.append((size, method, subprocess.Popen(cmd, stdout=log, stderr=log,
                                                           env=env), time.time()))
        time.sleep(1)
        for job in list(running):
            size, method, proc, t0 = job
            if proc.poll() is None:
                continue
            running.remove(job)
            done, finished = done + 1, finished + 1
            ev = _last_eval(os.path.join(out, f"{size}_{method}")) or {}
            elapsed = time.time() - start
            left = elapsed / finished * (len(pending) + len(running))
            print(f"[{done}/{len(jobs)}] {size} {method}: exit {proc.returncode}, "
                  f"accuracy {ev.get('accuracy', float('nan')):.3f} in {time.time() - t0:.0f} s"
                  f" (elapsed {elapsed:.0f} s, ETA {left:.0f} s)", flush=True)
    rows = []
    for size, method in jobs:
        workdir = os.path.join(out, f"{size}_{method}")
        ev = _last_eval(workdir)
        point = json.load(open(os.path.join(runs_dir, size, "point.json"))) if os.path.exists(
            os.path.join(runs_dir, size, "point.json")) else {}
        n = (point.get("cost") or {}).get("n_non_embedding")
        if ev is None:
            continue
        rows.append({"size": size, "non_embedding_params": n, "method": method,
                     "accuracy": ev["accuracy"], "accuracy_se": ev["accuracy_se"],
                     "macro_f1": ev["macro_f1"], "heldout_accuracy": ev.get("heldout_accuracy"),
                     "seen_accuracy": ev.get("seen_accuracy"),
                     "majority_baseline": ev["majority_baseline"], "examples": ev["examples"]})
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| size | N (non-emb.) | method | accuracy ± SE | macro-F1 | held-out words | "
             "seen words |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['non_embedding_params']} | {r['method']} | "
                     f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {r['macro_f1']:.3f} | "
                     f"{r['heldout_accuracy']:.3f} | {r['seen_accuracy']:.3f} |")
    lines.append(f"\nchance (majority class): {rows[0]['majority_baseline']:.3f} on "
                 f"{rows[0]['examples']} validation reviews")
    open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, os.path.join(out, "accuracy_vs_size.png"))
    print(f"wrote {out}/results.csv, results.md, accuracy_vs_size.png")
    return 0


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "accuracy", "all validation reviews"),
                           (axes[1], "heldout_accuracy", "reviews with held-out words")):
        for method, marker in zip(METHODS, "osx", strict=True):
            pts = [r for r in rows if r["method"] == method and r[key] is not None]
            n = [r["non_embedding_params"] or i for i, r in enumerate(pts)]
            se = [r["accuracy_se"] for r in pts] if key == "accuracy" else None
            ax.errorbar(n, [r[key] for r in pts], yerr=se, marker=marker, label=method,
                        capsize=3)
        ax.axhline(rows[0]["majority_baseline"], color="gray", ls="--", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("pretrained non-embedding parameters")
        ax.set_title(title)
    axes[0].set_ylabel("validation accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
