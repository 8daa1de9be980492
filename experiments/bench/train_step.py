"""Benchmark the compiled train step: step time, tokens/s, achieved GFLOP/s and MFU for 3 sizes.

    .venv/bin/python experiments/bench/train_step.py [--steps 10] [--batch 8] [--seq 128] [--json]

Sizes (experiments/configs/lm.py family, byte vocabulary, SwiGLU, RoPE):
  0.5M: depth 2 (d_model 128), 4M: d_model 256 x 5 layers, 12M: d_model 384 x 7 layers.
The step is exactly what `llmjax train` runs (same build, AOT-compiled, donated state); batches are
random tokens already on device, so this times the step alone. Timing: after 2 warm-up steps,
`--steps` steps are dispatched back to back with one block_until_ready at the end (as in training,
where the host only syncs at log steps). FLOPs/token = llmjax.model.flops training count
(6N + causal attention). MFU is against the device's peak: a datasheet number on GPU/TPU, a
measured matmul peak on CPU (labelled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llmjax.config import load_config, parse_experiment  # noqa: E402
from llmjax.model.flops import flops_per_token, param_counts  # noqa: E402
from llmjax.train import mfu as mfu_lib  # noqa: E402
from llmjax.train.info import SizeOnlyTokenizer  # noqa: E402
from llmjax.train.loop import abstract_batch, build, compile_train_step  # noqa: E402

LM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "lm.py")
SIZES = {  # name -> (lm.py variant, overrides)
    "0.5M": ("depth=2", []),
    "4M": ("depth=4", ["model.n_layers=5"]),
    "12M": ("depth=6", ["model.n_layers=7"]),
}


def bench_one(name: str, steps: int, batch: int, seq: int, peak: mfu_lib.Peak,
              dtype: str = "float32") -> dict:
    variant, overrides = SIZES[name]
    config = load_config(f"{LM}:{variant}", [*overrides, f"data.batch_size={batch}",
                                             f"data.seq_len={seq}", f"model.max_seq_len={seq}",
                                             "optimizer.warmup_steps=1", "mesh.data=-1",
                                             f"model.compute_dtype={dtype}"])
    config = parse_experiment(config, jax.device_count())
    setup = build(config, SizeOnlyTokenizer(259))
    t0 = time.perf_counter()
    compiled = compile_train_step(setup, config)
    compile_s = time.perf_counter() - t0
    state = setup.init_fn()
    shapes = abstract_batch(config, setup.batch_sharding)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(batch, seq + 1), dtype=np.int32)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": np.ones((batch, seq), np.float32)}
    data = {k: jax.device_put(jnp.asarray(v), shapes[k].sharding) for k, v in host.items()}
    for _ in range(2):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
    tok_s = batch * seq / step_s
    fpt = flops_per_token(setup.model_cfg, seq).training
    achieved, util = mfu_lib.mfu(fpt, tok_s, peak)
    return {"size": name, "params": param_counts(setup.model_cfg).total,
            "d_model": setup.model_cfg.d_model, "n_layers": setup.model_cfg.n_layers,
            "batch": batch, "seq": seq, "compile_s": compile_s, "step_ms": 1e3 * step_s,
            "tokens_per_s": tok_s, "gflops_per_s": achieved / 1e9, "mfu": util,
            "loss": float(metrics["loss"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per size")
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=128, help="sequence length (128-256)")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma list of " + ",".join(SIZES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="model.compute_dtype (bfloat16 for GPU/TPU comparisons)")
    ap.add_argument("--json", action="store_true", help="one JSON object per size")
    args = ap.parse_args()
    peak = mfu_lib.device_peak()
    dev = jax.devices()[0]
    if not args.json:
        print(f"devices: {jax.device_count()} x {dev.device_kind} ({dev.platform}); "
              f"peak {peak.flops / 1e9:.1f} GFLOP/s {peak.label}")
        print(f"{'size':>5} {'params':>10} {'batch x seq':>11} {'compile s':>9} {'step ms':>9} "
              f"{'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>7}")
    for name in args.sizes.split(","):
        r = bench_one(name.strip(), args.steps, args.batch, args.seq, peak, args.dtype)
        if args.json:
            print(json.dumps({**r, "peak_flops": peak.flops, "peak_label": peak.label}))
        else:
            print(f"{r['size']:>5} {r['params']:>10,} {r['batch']:>5} x {r['seq']:<4} "
                  f"{r['compile_s']:>9.1f} {r['step_ms']:>9.1f} {r['tokens_per_s']:>10,.0f} "
                  f"{r['gflops_per_s']:>9.2f} {100 * r['mfu']:>6.1f}%", flush=True)


if __name__ == "__main__":
    main()
