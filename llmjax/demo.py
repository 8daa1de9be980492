"""`make demo`: the main job, end to end, on the embedded synthetic data.

    python -m llmjax.demo --workdir=demo [--config=FILE] [--parallel=2]

1. build the `synthetic` dataset (seconds; a no-op when already built);
2. run the model-size sweep of `--config` (default experiments/configs/scaling_demo.py; each
   point is its own `llmjax train` subprocess; finished points are skipped, so a rerun resumes);
3. probe every kept checkpoint of every finished run for zero-/few-shot and in-context
   abilities (`llmjax probe --all_steps`), so the report can follow them through training;
4. gather the runs into results.csv / curves.csv (`llmjax results`);
5. fit the scaling laws and write the report (`llmjax report`), then print where it is and its
   headline numbers.

Each step is the same command a researcher would type, run as a subprocess, so the demo is also
a worked example of the CLI. The data directory is $TFDS_DATA_DIR when set, else WORKDIR/data,
and the measured CPU peak is cached in $LLMJAX_CACHE_DIR, else WORKDIR/cache, so the demo never
writes outside its workdir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from llmjax.rundir import RunDir
from llmjax.sweep.runner import RUNS_DIR

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments", "configs", "scaling_demo.py",
)


def _step(title: str, argv: list[str], env: dict[str, str]) -> float:
    """Runs `llmjax <argv>` in a subprocess, streaming its output; exits on failure."""
    print(f"\n=== {title}: llmjax {' '.join(argv)}", flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "llmjax", *argv], env=env)
    if proc.returncode != 0:
        print(f"demo: step '{title}' failed (exit {proc.returncode}); rerun `make demo` to "
              "resume — finished runs are kept", file=sys.stderr)
        sys.exit(proc.returncode)
    return time.time() - start


def _finished_runs(workdir: str) -> list[str]:
    """Run directories under WORKDIR/runs that are complete, by name."""
    runs_dir = os.path.join(workdir, RUNS_DIR)
    names = sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []
    return [os.path.join(runs_dir, n) for n in names
            if RunDir(os.path.join(runs_dir, n)).is_complete()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmjax.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--skip_probes", action="store_true")
    args = parser.parse_args(argv)

    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TFDS_DATA_DIR", os.path.join(workdir, "data"))
    env.setdefault("LLMJAX_CACHE_DIR", os.path.join(workdir, "cache"))  # the CPU peak probe
    start = time.time()
    timings = {}

    timings["data"] = _step("1/5 data", ["data", "prepare", "--dataset=synthetic"], env)
    timings["sweep"] = _step(
        "2/5 sweep",
        ["sweep", f"--config={args.config}", f"--workdir={workdir}", f"--parallel={args.parallel}"],
        env,
    )
    if not args.skip_probes:
        runs = _finished_runs(workdir)
        if runs:  # one process for every run: imports, probe data and programs are shared
            timings["probes"] = _step(f"3/5 probes ({len(runs)} runs)",
                                      ["probe", f"--workdir={','.join(runs)}", "--all_steps",
                                       "--quiet"], env)
    timings["results"] = _step("4/5 results", ["results", f"--workdir={workdir}"], env)
    timings["report"] = _step("5/5 report", ["report", f"--workdir={workdir}"], env)

    total = time.time() - start
    print("\n=== demo finished in {:.1f} min ({})".format(
        total / 60, ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())))
    print(f"report: {os.path.join(workdir, 'report', 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
