"""Wall-time cost of S seeds trained as one vmapped program against one seed, at the demo's sizes.

    .venv/bin/python experiments/bench/seeds.py [--seeds 4] [--sizes d16_l1+d64_l3] [--steps 30]
        [--end_to_end d32_l2] [--json]

Per size of experiments/configs/scaling_demo.py: the real compiled train step of `llmjax train`
(llmjax.train.loop.build, with `seeds=` for the program of S members) on the size's own batch,
timed over `--steps` steps after a warm-up, alternating the two programs for `--rounds` rounds
(median). Prints ms/step for 1 seed and for S, their ratio (the cost of S replicates relative to
one run; S separate runs would cost S x), and the compile times.

`--end_to_end NAME` also times `llmjax train` on that size as subprocesses, one seed against
`--seeds=S` (start-up, evals, checkpoints included), from launch to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from llmjax.config import load_config, parse_experiment  # noqa: E402
from llmjax.data.tokenizer import ByteTokenizer  # noqa: E402
from llmjax.train.loop import abstract_batch, build, compile_train_step  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "scaling_demo.py")


class Program:
    def __init__(self, exp, seeds):
        self.setup = build(exp, ByteTokenizer(), seeds=seeds)
        t0 = time.perf_counter()
        self.step = compile_train_step(self.setup, exp)
        self.compile_s = time.perf_counter() - t0
        self.state = self.setup.init_fn()
        shapes = abstract_batch(exp, self.setup.batch_sharding)
        rng = np.random.default_rng(0)
        self.batch = {k: jax.device_put(
            rng.integers(0, 256, v.shape).astype(v.dtype) if v.dtype != np.float32
            else np.ones(v.shape, np.float32), v.sharding) for k, v in shapes.items()}

    def run(self, steps):
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - t0) / steps


def bench_size(name, seeds, steps, rounds):
    exp = parse_experiment(load_config(f"{DEMO}:size={name}"))
    progs = {1: Program(exp, None), seeds: Program(exp, list(range(seeds)))}
    for p in progs.values():
        p.run(2)
    times = {k: [] for k in progs}
    for _ in range(rounds):
        for k, p in progs.items():
            times[k].append(p.run(steps))
    one, many = statistics.median(times[1]), statistics.median(times[seeds])
    return {"size": name, "batch": exp.data.batch_size, "seeds": seeds,
            "ms_per_step_1": 1e3 * one, f"ms_per_step_{seeds}": 1e3 * many,
            "ratio": many / one, "compile_s_1": progs[1].compile_s,
            f"compile_s_{seeds}": progs[seeds].compile_s}


def end_to_end(name, seeds):
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TFDS_DATA_DIR": os.environ.get("TFDS_DATA_DIR",
                                                              os.path.join(tmp, "data"))}
        base = [sys.executable, "-m", "llmjax", "train", f"--config={DEMO}:size={name}"]
        subprocess.run([sys.executable, "-m", "llmjax", "data", "prepare",
                        "--dataset=synthetic"], env=env, check=True, capture_output=True)
        for label, extra in (("1", [f"--workdir={tmp}/one"]),
                             (str(seeds), [f"--workdir={tmp}/many_s{{seed}}",
                                           f"--seeds={seeds}"])):
            t0 = time.perf_counter()
            subprocess.run(base + extra, env=env, check=True, capture_output=True)
            out[f"wall_s_{label}"] = time.perf_counter() - t0
    out["ratio"] = out[f"wall_s_{seeds}"] / out["wall_s_1"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--sizes", default="d16_l1+d16_l2+d24_l2+d32_l2+d48_l2+d64_l2+d64_l3")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--end_to_end", default="", help="a size to time through `llmjax train`")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    s = args.seeds
    if not args.json:
        print(f"jax {jax.__version__} ({jax.devices()[0].platform}); {s} seeds as one vmapped "
              f"program vs 1; median of {args.rounds} rounds of {args.steps} steps")
        print(f"{'size':>8} {'batch':>5} {'ms/step 1':>10} {f'ms/step {s}':>10} {'ratio':>6} "
              f"{'compile 1':>10} {f'compile {s}':>10}")
    for name in args.sizes.split("+"):
        r = bench_size(name, s, args.steps, args.rounds)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{name:>8} {r['batch']:>5} {r['ms_per_step_1']:>10.2f} "
                  f"{r[f'ms_per_step_{s}']:>10.2f} {r['ratio']:>5.2f}x {r['compile_s_1']:>9.2f}s "
                  f"{r[f'compile_s_{s}']:>9.2f}s", flush=True)
    if args.end_to_end:
        r = end_to_end(args.end_to_end, s)
        print(json.dumps(r) if args.json else
              f"end to end `llmjax train` {args.end_to_end}: 1 seed {r['wall_s_1']:.1f}s, {s} "
              f"seeds {r[f'wall_s_{s}']:.1f}s ({r['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
