"""`make demo`: the main job, end to end, on the embedded synthetic data.

    python -m llmjax.demo --workdir=demo [--config=FILE] [--parallel=2]

1. build the default `synthetic` dataset (seconds; a no-op when already built; each study's own
   corpus is built by its first run, with the entropy its generator computes);
2. run the sweep of `--config` (default experiments/configs/demo.py: a scaling study, an
   associative-recall emergence study and an induction study; each point is its own `llmjax
   train` subprocess; finished points are skipped, so a rerun resumes);
3. probe every kept checkpoint of the emergence and induction runs (`llmjax probe --all_steps`,
   each study's runs split over --parallel processes), so the report can follow abilities across
   scale and through training;
4. gather the runs into results.csv / curves.csv / probes.csv (`llmjax results`);
5. fit the scaling laws, test the probes for emergence and write the report (`llmjax report`),
   then print where it is and its headline: the law, its error on the held-out model, E against
   the corpus's entropy, the abilities that emerged where, the phase changes.

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

from llmjax.rundir import OVERRIDES, RunDir, read_json
from llmjax.sweep.runner import RUNS_DIR

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments", "configs", "demo.py",
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


def _parallel_steps(title: str, jobs: list[tuple[str, list[str]]], env: dict[str, str],
                    parallel: int) -> None:
    """Runs the `llmjax <argv>` jobs `parallel` at a time, printing each one's output when it
    ends (so two never interleave); exits on the first failure."""
    import concurrent.futures

    def run(job: tuple[str, list[str]]) -> tuple[str, list[str], subprocess.CompletedProcess]:
        name, argv = job
        proc = subprocess.run([sys.executable, "-m", "llmjax", *argv], env=env,
                              capture_output=True, text=True)
        return name, argv, proc

    if parallel > 1:  # as the sweep runner does: one XLA CPU thread per process
        from llmjax.sweep.runner import CPU_SINGLE_THREAD_FLAG

        env = {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {CPU_SINGLE_THREAD_FLAG}".strip()}
    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        for name, argv, proc in pool.map(run, jobs):
            print(f"\n=== {title} ({name}): llmjax {' '.join(argv)}", flush=True)
            print(proc.stdout + proc.stderr, end="", flush=True)
            if proc.returncode != 0:
                print(f"demo: step '{title}' failed (exit {proc.returncode}); rerun `make demo` "
                      "to resume — finished runs are kept", file=sys.stderr)
                sys.exit(proc.returncode)


def _finished_runs(workdir: str) -> dict[str, list[str]]:
    """Complete run directories under WORKDIR/runs by study (a point's `meta.study`), by name."""
    runs_dir = os.path.join(workdir, RUNS_DIR)
    names = sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []
    out: dict[str, list[str]] = {}
    for n in names:
        path = os.path.join(runs_dir, n)
        if RunDir(path).is_complete():
            overrides = read_json(os.path.join(path, OVERRIDES))
            study = (overrides or {}).get("meta.study", "") if isinstance(overrides, dict) else ""
            out.setdefault(study, []).append(path)
    return out


# What the probe step runs per study: None = the run's whole suite (config.evals), a list = those
# tasks only, absent = not probed. The scaling study's runs are fitted on their eval loss alone;
# the induction runs are probed for induction heads and the ICL score.
PROBES_BY_STUDY: dict[str, list[str] | None] = {"": None, "emergence": None,
                                                "induction": ["induction", "icl"]}


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
        start_probes = time.time()
        jobs = []
        for study, runs in _finished_runs(workdir).items():
            if study not in PROBES_BY_STUDY:
                continue
            tasks = PROBES_BY_STUDY[study]
            # A study's runs in --parallel processes (each shares imports, probe data and
            # compiled programs among its runs), every other run to each.
            for chunk in (runs[i::args.parallel] for i in range(args.parallel)):
                if chunk:
                    jobs.append((f"{len(chunk)} {study or 'unlabelled'} runs",
                                 ["probe", f"--workdir={','.join(chunk)}", "--all_steps",
                                  "--quiet", *([f"--tasks={','.join(tasks)}"] if tasks else [])]))
        _parallel_steps("3/5 probes", jobs, env, args.parallel)
        timings["probes"] = time.time() - start_probes
    timings["results"] = _step("4/5 results", ["results", f"--workdir={workdir}"], env)
    timings["report"] = _step("5/5 report", ["report", f"--workdir={workdir}"], env)

    total = time.time() - start
    print("\n=== demo finished in {:.1f} min ({})".format(
        total / 60, ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())))
    print(f"report: {os.path.join(workdir, 'report', 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
