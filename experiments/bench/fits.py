"""Time the scaling-law fits a researcher reruns interactively.

    .venv/bin/python experiments/bench/fits.py [--points 300] [--n_boot 1000] [--csv FILE] [--json]

1. Approach 3 (`fit_chinchilla`) with the paper's full grid of 4,500 L-BFGS starts on ~300 points
   drawn from L = 1.8 + 400/N^0.34 + 2000/D^0.37 with 0.3% log-normal noise (15 model sizes x 20
   token counts); first call (includes compiling) and a second call (compiled).
2. 1,000 bootstrap refits (`bootstrap_chinchilla`, 4 starts each) on the same points.
With --csv (Chinchilla's extracted points, e.g. ../shared/data/chinchilla_fig4_epoch_extract.csv),
the fit and bootstrap also run on the replication's 240 points. Wall-clock and process CPU seconds
are printed; the target is a default fit under 10 s and 1,000 refits under a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from llmjax.scaling import bootstrap_chinchilla, fit_chinchilla  # noqa: E402


def synthetic_points(n_points: int, seed: int = 0):
    """~n_points (N, D, L) on a grid of model sizes x token counts; L from a Chinchilla-like law."""
    n_sizes = max(2, int(round(np.sqrt(n_points * 15 / 20))))
    n_tokens = max(2, n_points // n_sizes)
    N = np.repeat(np.logspace(7.5, 10.5, n_sizes), n_tokens)
    D = np.tile(np.logspace(9, 12, n_tokens), n_sizes)
    L = 1.8 + 400 / N**0.34 + 2000 / D**0.37
    return N, D, L * np.exp(0.003 * np.random.default_rng(seed).standard_normal(len(N)))


def chinchilla_points(path: str):
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(L, kind="stable")[:-5]  # the replication drops the 5 highest losses
    return N[keep], C[keep] / (6 * N[keep]), L[keep]


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, N, D, L, n_boot: int) -> dict:
    fit, cold_s, cold_cpu = timed(fit_chinchilla, N, D, L)
    fit, warm_s, warm_cpu = timed(fit_chinchilla, N, D, L)
    boot, boot_s, boot_cpu = timed(bootstrap_chinchilla, N, D, L, fit=fit, n_boot=n_boot, seed=0)
    boot2, boot2_s, boot2_cpu = timed(bootstrap_chinchilla, N, D, L, fit=fit, n_boot=n_boot, seed=1)
    row = {
        "data": name,
        "points": len(N),
        "fit_first_call_s": round(cold_s, 2),
        "fit_first_call_cpu_s": round(cold_cpu, 2),
        "fit_compiled_s": round(warm_s, 2),
        "fit_compiled_cpu_s": round(warm_cpu, 2),
        "starts": fit.n_starts,
        "converged_starts": fit.n_converged,
        "starts_at_optimum": fit.n_at_optimum,
        "bootstrap_refits": n_boot,
        "bootstrap_first_call_s": round(boot_s, 2),
        "bootstrap_compiled_s": round(boot2_s, 2),
        "bootstrap_compiled_cpu_s": round(boot2_cpu, 2),
        "fit": {k: fit.to_dict()[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b")},
        "se": boot.se,
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--n_boot", type=int, default=1000)
    parser.add_argument("--csv", default=None, help="Chinchilla extract to fit as well")
    parser.add_argument("--json", action="store_true", help="print one JSON line per data set")
    args = parser.parse_args()
    runs = [("synthetic", *synthetic_points(args.points))]
    if args.csv:
        runs.append(("chinchilla_240", *chinchilla_points(args.csv)))
    print(f"cpu cores available: {len(os.sched_getaffinity(0))}; load average: {os.getloadavg()}")
    for name, N, D, L in runs:
        row = bench(name, N, D, L, args.n_boot)
        if args.json:
            print(json.dumps(row))
            continue
        print(
            f"[{name}] {row['points']} points, Approach 3 with {row['starts']} starts: "
            f"first call {row['fit_first_call_s']} s (cpu {row['fit_first_call_cpu_s']} s, "
            f"incl. compile), compiled {row['fit_compiled_s']} s (cpu {row['fit_compiled_cpu_s']} "
            f"s); {row['converged_starts']} starts converged, {row['starts_at_optimum']} at optimum"
        )
        print(
            f"[{name}] {row['bootstrap_refits']} bootstrap refits: first call "
            f"{row['bootstrap_first_call_s']} s, compiled {row['bootstrap_compiled_s']} s "
            f"(cpu {row['bootstrap_compiled_cpu_s']} s)"
        )
        fit = ", ".join(f"{k}={v:.4g}" for k, v in row["fit"].items())
        se = ", ".join(f"{k}={v:.3g}" for k, v in row["se"].items())
        print(f"[{name}] fit: {fit}\n[{name}] bootstrap se: {se}")


if __name__ == "__main__":
    main()
