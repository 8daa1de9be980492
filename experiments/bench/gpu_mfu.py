"""GPU benchmark of the real train step for the scaling_gpu ladder: step time, tokens/s, MFU,
compile time and compiled memory, at about 125M, 350M and 1B non-embedding parameters.

    bash experiments/bench/gpu.sh [--sizes 14,20,28] [--steps 10] [--batch 14=32,20=32,28=16]
    bash experiments/bench/gpu.sh --smoke       # the same code path on CPU at toy sizes (< 60 s)

Sizes are depths L of experiments/configs/scaling_gpu.py (d_model = 64 L, head_dim 128, SwiGLU,
RMSNorm, RoPE, seq 2048, vocab 32768, bf16 compute / f32 params, scanned layers, remat 'dots'):
L14 ~135M, L20 ~393M, L28 ~1.08B non-embedding parameters (N printed from the real model).
The step is `llmjax.train.loop.build`'s jitted step (AdamW, clipping, the non-finite check,
donated state), compiled ahead of time; batches are random tokens already on the device, so no
dataset is read and nothing imports grain, tensorflow or tensorflow_datasets (they are blocked).

Attention: model.attention='cudnn' (jax.nn.dot_product_attention with implementation='cudnn',
cuDNN's flash attention) when a probe shows cuDNN works on this device (forward and gradient,
checked against XLA), else 'fused' (XLA's choice); the choice and whether a cuDNN fMHA call is
in the compiled program are printed.

Timing: `--warmup` untimed steps, then `--steps` steps each timed to completion
(block_until_ready); the median is reported with min and max. tokens/s = batch x seq / median.
FLOPs per token from llmjax.model.flops: `training` = 6 x matmul params + causal attention
(3 x 2 x layers x (seq+1) x d_attn) and `dense_6n` without attention; MFU is printed for both,
against the datasheet dense bf16 peak in llmjax.train.mfu (989 TFLOP/s for H100/H200 SXM). The
remat recomputation is not counted (model FLOPs, not hardware FLOPs). A bf16 8192^3 matmul is
timed as the measured ceiling. Memory: `compiled.memory_analysis()` (argument + output - alias
+ temp = the step's peak estimate), checked against the device's bytes_limit before running;
a batch that does not fit is halved. Compile time is measured at two depths of one width
(scan keeps it flat). Results: a markdown table on stdout and JSON at --json (default
$OUT/gpu_bench.json, else ./gpu_bench.json).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.abc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
SCALING_GPU = os.path.join(REPO, "experiments", "configs", "scaling_gpu.py")

BLOCKED = ("grain", "tensorflow", "tensorflow_datasets", "array_record")
DEFAULT_SIZES = (14, 20, 28)
DEFAULT_BATCH = {14: 32, 20: 32, 28: 16}  # sequences of 2048 tokens; all fit in ~75 GB
TARGET_MFU, TARGET_MIN_N = 0.55, 300e6  # ">= 55% MFU at >= 350M" (L20 has N = 393M)
FIT_FRACTION = 0.95  # of the device's bytes_limit a compiled step may use before it runs
JAX_TESTED = ((0, 7), (0, 11))  # inclusive major.minor range this script was written for
SMOKE = {"sizes": "2", "seq": 128, "vocab": 512, "batch": "2", "steps": 2, "warmup": 1}
VERSION_PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
                    "orbax-checkpoint", "ml-collections", "numpy")

_stage = "start"
_blocked_attempts: list[str] = []


class _BlockHeavyImports(importlib.abc.MetaPathFinder):
    """Refuse the data-pipeline stack: the benchmark must run without it (the GPU image lacks
    it). Attempts are recorded, so an optional import that was tried shows in the JSON."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            _blocked_attempts.append(name)
            raise ImportError(f"{name} is blocked by gpu_mfu.py (the benchmark must not need it)")
        return None


def stage(name: str) -> None:
    global _stage
    _stage = name
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None,
                    help="comma list of scaling_gpu depths (even); default 14,20,28")
    ap.add_argument("--batch", default=None,
                    help="sequences per step: one number for all, or DEPTH=B,...; default "
                         "14=32,20=32,28=16 (halved automatically when it does not fit)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per size (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 2048)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 32768)")
    ap.add_argument("--remat", default="dots", choices=["none", "dots", "full"],
                    help="model.remat (the ladder trains with 'dots')")
    ap.add_argument("--attention", default="auto", choices=["auto", "cudnn", "xla"],
                    help="jax.nn.dot_product_attention implementation; auto = cudnn if it works")
    ap.add_argument("--compile-depth", type=int, default=None,
                    help="measure compile time at this size's width with 2x its layers too "
                         "(default: the middle size; 0 = skip)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip remaining work that would end after this many seconds")
    ap.add_argument("--json", default=None, help="output path (default $OUT/gpu_bench.json)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check of the same code path: depth 2, seq 128, vocab 512, 2 steps")
    ap.add_argument("--no-block", action="store_true",
                    help="do not block grain/tensorflow/tensorflow_datasets imports")
    args = ap.parse_args(argv)
    preset = SMOKE if args.smoke else {"sizes": ",".join(map(str, DEFAULT_SIZES)), "seq": 2048,
                                       "vocab": 32768, "batch": None, "steps": 10, "warmup": 2}
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    for d in args.sizes:
        if d < 2 or d % 2:
            ap.error(f"--sizes: depth {d} must be an even integer >= 2 (d_model = 64 x depth "
                     "splits into 128-wide heads)")
    args.batches = _parse_batches(ap, args.batch, args.sizes)
    if args.compile_depth is None:
        args.compile_depth = args.sizes[len(args.sizes) // 2]
    if args.json is None:
        args.json = os.path.join(os.environ.get("OUT") or ".", "gpu_bench.json")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def _parse_batches(ap: argparse.ArgumentParser, text: str | None, sizes: list[int]
                   ) -> dict[int, int]:
    out = {d: DEFAULT_BATCH.get(d, 32 if d <= 24 else 16) for d in sizes}
    if not text:
        return out
    for item in str(text).split(","):
        key, eq, value = item.partition("=")
        try:
            if eq:
                out[int(key)] = int(value)
            else:
                out = dict.fromkeys(sizes, int(key))
        except ValueError:
            ap.error(f"--batch: {item!r} is not B or DEPTH=B")
    if min(out.values()) < 1:
        ap.error("--batch: sizes must be >= 1")
    return out


# --------------------------------------------------------------------------- environment


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def module_paths() -> dict[str, str | None]:
    """Where jax, flax, optax, orbax and ml_collections were imported from (image or wheel)."""
    out = {}
    for name in ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections"):
        try:
            module = importlib.import_module(name)
            out[name] = f"{getattr(module, '__version__', '?')} {module.__file__}"
        except Exception as e:  # reported, not fatal here: the import below fails clearly
            out[name] = f"not importable: {type(e).__name__}: {_one_line(e)}"
    return out


def check_versions(versions: dict[str, str | None]) -> list[str]:
    """Warnings (printed, kept in the JSON) for versions outside what this was written for."""
    notes = []
    try:
        jax_mm = tuple(int(p) for p in (versions["jax"] or "0.0").split(".")[:2])
    except ValueError:
        jax_mm = (0, 0)
    if not JAX_TESTED[0] <= jax_mm <= JAX_TESTED[1]:
        notes.append(f"jax {versions['jax']} is outside {JAX_TESTED[0]}..{JAX_TESTED[1]}: "
                     "trying anyway")
    elif jax_mm >= (0, 11):
        notes.append(f"jax {versions['jax']} is above pyproject's cap (<0.11); this script "
                     "uses only APIs stable across 0.7-0.11 (jit/lower/compile, "
                     "memory_analysis, dot_product_attention)")
    if versions["jaxlib"] and versions["jax"] and versions["jaxlib"] != versions["jax"]:
        notes.append(f"jax {versions['jax']} != jaxlib {versions['jaxlib']}")
    return notes


def cudnn_version() -> str | None:
    try:
        from jax._src.lib import cuda_versions  # private; absent on CPU-only jaxlib

        return None if cuda_versions is None else str(cuda_versions.cudnn_get_version())
    except Exception:  # informational only
        return None


def probe_attention(original, candidate: str) -> tuple[bool, str, dict]:
    """Does `candidate` compute causal attention and its gradient right, here?

    Small random bf16 inputs in the model's [batch, seq, heads, head_dim] layout; outputs and
    gradients of sum(out^2) compared, by relative L2 error, with XLA's on float32 inputs. Pass:
    finite, and within max(2e-2, 2 x the error of XLA's own bf16 version).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    shape = (2, 512, 4, 128)
    q, k, v = (jax.random.normal(kk, shape, jnp.float32) for kk in keys)

    def run(impl, dtype):
        def loss(q, k, v):
            out = original(q, k, v, scale=shape[-1] ** -0.5, is_causal=True, implementation=impl)
            return jnp.sum(out.astype(jnp.float32) ** 2), out

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, out), grads = fn(*(x.astype(dtype) for x in (q, k, v)))
        return [np.asarray(jax.device_get(x)).astype(np.float32) for x in (out, *grads)]

    def rel(got, want):
        return max(float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))
                   for a, b in zip(got, want, strict=True))

    ref = run("xla", jnp.float32)
    errors = {"xla_bf16": rel(run("xla", jnp.bfloat16), ref),
              candidate: rel(run(candidate, jnp.bfloat16), ref)}
    bound = max(2e-2, 2 * errors["xla_bf16"])
    ok = math.isfinite(errors[candidate]) and errors[candidate] <= bound
    message = (f"{candidate} {'ok' if ok else 'wrong'}: rel. error vs f32 {errors[candidate]:.1e}"
               f" (xla bf16 {errors['xla_bf16']:.1e}; bound {bound:.1e}), fwd + grad")
    return ok, message, errors


def choose_attention(requested: str, on_gpu: bool) -> dict:
    """The model's attention for this device: model.attention='cudnn' (jax.nn.
    dot_product_attention with implementation='cudnn') when `probe_attention` passes, else
    'fused' (the implementation XLA picks)."""
    import jax

    info: dict = {"requested": requested, "used": "xla", "probe": None}
    if requested == "xla":
        info["probe"] = "not run (--attention xla)"
    elif not on_gpu:
        info["probe"] = "not run (no GPU: cudnn needs one)"
    else:
        try:
            ok, info["probe"], info["probe_errors"] = probe_attention(
                jax.nn.dot_product_attention, "cudnn")
            info["used"] = "cudnn" if ok else "xla"
        except Exception as e:  # any failure means: fall back to XLA
            info["probe"] = f"cudnn failed: {type(e).__name__}: {_one_line(e)}"
    if requested == "cudnn" and info["used"] != "cudnn":
        raise RuntimeError(f"--attention cudnn: {info['probe']}")
    info["model_attention"] = "cudnn" if info["used"] == "cudnn" else "fused"
    return info


def measured_matmul_tflops(on_gpu: bool) -> float | None:
    """Median TFLOP/s of a bf16 8192^3 matmul on random data (the practical ceiling)."""
    if not on_gpu:
        return None
    import jax
    import jax.numpy as jnp

    n = 8192
    ka, kb = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    mm = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        mm(a, b).block_until_ready()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def device_bytes_limit(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # CPU devices may not implement it
        return None
    return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def device_memory_stats(device) -> dict:
    try:
        stats = device.memory_stats() or {}
    except Exception:
        stats = {}
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
            if k in stats}


# --------------------------------------------------------------------------- one size


def make_experiment(depth: int, batch: int, args: argparse.Namespace,
                    n_layers: int | None = None):
    import jax

    from llmjax.config import load_config, parse_experiment

    overrides = [f"data.batch_size={batch}", f"data.seq_len={args.seq}",
                 f"model.max_seq_len={args.seq}", f"model.remat={args.remat}",
                 f"model.attention={getattr(args, 'model_attention', 'fused')}", "steps=1000",
                 "optimizer.warmup_steps=10"]
    if n_layers is not None:
        overrides.append(f"model.n_layers={n_layers}")
    config = load_config(f"{SCALING_GPU}:depth={depth}", overrides)
    return parse_experiment(config, jax.device_count())


def compile_step(depth: int, batch: int, args: argparse.Namespace, n_layers: int | None = None
                 ) -> dict:
    """Build and AOT-compile the train step; no device memory beyond the compiler's."""
    import jax

    exp = make_experiment(depth, batch, args, n_layers)
    from llmjax.train.info import SizeOnlyTokenizer
    from llmjax.train.loop import abstract_batch, build

    t0 = time.perf_counter()
    setup = build(exp, SizeOnlyTokenizer(args.vocab))
    with jax.set_mesh(setup.mesh):
        t1 = time.perf_counter()
        lowered = setup.train_step.lower(setup.abstract_state,
                                         abstract_batch(exp, setup.batch_sharding))
        t2 = time.perf_counter()
        compiled = lowered.compile()
        t3 = time.perf_counter()
    mem = compiled.memory_analysis()
    memory = {name: int(getattr(mem, f"{name}_size_in_bytes", 0) or 0)
              for name in ("argument", "output", "alias", "temp", "generated_code")}
    peak = getattr(mem, "peak_memory_in_bytes", None)
    memory["peak_estimate"] = (memory["argument"] + memory["output"] - memory["alias"]
                               + memory["temp"])
    memory["xla_peak"] = int(peak) if peak else None
    hlo_flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        hlo_flops = float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:  # informational only
        pass
    attention_calls = None
    try:
        text = compiled.as_text()
        attention_calls = {"cudnn_fmha": text.count("cudnn$fmha")}
    except Exception:
        pass
    return {"exp": exp, "setup": setup, "compiled": compiled, "build_s": t1 - t0,
            "lower_s": t2 - t1, "compile_s": t3 - t2, "memory": memory,
            "hlo_flops_per_step": hlo_flops, "hlo_attention_calls": attention_calls}


def load_scaling_gpu():
    """experiments/configs/scaling_gpu.py as a module (for its own N formula)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling_gpu_config", SCALING_GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fits(memory: dict, limit: int | None) -> bool:
    return limit is None or memory["peak_estimate"] <= FIT_FRACTION * limit


def largest_fitting_batch(memory: dict, batch: int, limit: int | None) -> int | None:
    """Largest power-of-two batch whose estimate (temp grows linearly with batch) fits."""
    if limit is None or memory["temp"] <= 0:
        return None
    fixed = memory["argument"] + memory["output"] - memory["alias"]
    per_seq = memory["temp"] / batch
    most = (FIT_FRACTION * limit - fixed) / per_seq
    return 2 ** int(math.floor(math.log2(most))) if most >= 1 else 0


def random_batches(exp, sharding, vocab: int, count: int = 2) -> list[dict]:
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    b, s = exp.data.batch_size, exp.data.seq_len
    out = []
    for _ in range(count):
        tokens = rng.integers(0, vocab, size=(b, s + 1), dtype=np.int32)
        host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                "loss_mask": np.ones((b, s), np.float32)}
        out.append({k: jax.device_put(v, sharding) for k, v in host.items()})
    return out


def time_steps(compiled, state, batches: list[dict], warmup: int, steps: int,
               max_timed_s: float) -> dict:
    import jax

    losses = []
    t0 = time.perf_counter()
    for i in range(warmup):
        state, metrics = compiled(state, batches[i % len(batches)])
        jax.block_until_ready((state, metrics))
        losses.append(float(metrics["loss"]))
    warmup_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batches[i % len(batches)])
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
        losses.append(float(metrics["loss"]))
        if time.perf_counter() - start > max_timed_s:
            break
    finite = bool(metrics["finite"])
    del state
    return {"times": times, "warmup_s": warmup_s, "losses": losses, "finite": finite}


def bench_size(depth: int, args: argparse.Namespace, ctx: dict) -> dict:
    from llmjax.model.flops import flops_per_token, param_counts
    from llmjax.train import mfu as mfu_lib

    scaling_gpu = load_scaling_gpu()
    n_dev = ctx["device_count"]
    batch = n_dev * math.ceil(args.batches[depth] / n_dev)  # the batch splits over devices
    limit = ctx["bytes_limit"]
    tried = []
    while True:
        stage(f"L{depth}: build + compile at batch {batch} x {args.seq}")
        c = compile_step(depth, batch, args)
        mem = c["memory"]
        tried.append({"batch": batch, "peak_estimate_gib": mem["peak_estimate"] / 2**30,
                      "fits": fits(mem, limit)})
        print(f"    lower {c['lower_s']:.1f} s, compile {c['compile_s']:.1f} s; memory "
              f"temp {mem['temp'] / 2**30:.2f} + args {mem['argument'] / 2**30:.2f} + out "
              f"{mem['output'] / 2**30:.2f} - alias {mem['alias'] / 2**30:.2f} GiB "
              f"(limit {'n/a' if limit is None else f'{limit / 2**30:.1f} GiB'})", flush=True)
        if fits(mem, limit) or batch // 2 < n_dev or batch % 2:
            break
        print(f"    batch {batch} does not fit: halving", flush=True)
        del c
        gc.collect()
        batch //= 2
    cfg, exp, setup = c["setup"].model_cfg, c["exp"], c["setup"]
    counts = param_counts(cfg)
    fpt = flops_per_token(cfg, args.seq)
    row = {"depth": depth, "d_model": cfg.d_model, "n_layers": cfg.n_layers,
           "n_heads": cfg.n_heads, "head_dim": cfg.head_dim, "d_ff": cfg.ff_dim,
           "vocab": cfg.vocab_size, "seq": args.seq, "batch": batch,
           "tokens_per_step": batch * args.seq, "remat": cfg.remat,
           "compute_dtype": cfg.compute_dtype, "param_dtype": cfg.param_dtype,
           "scan_layers": cfg.scan_layers, "attention": ctx["attention"]["used"],
           "n_non_embedding": counts.non_embedding, "n_total": counts.total,
           "n_formula_scaling_gpu": scaling_gpu.non_embedding_params(depth),
           "flops_per_token_with_attention": fpt.training,
           "flops_per_token_without_attention": fpt.dense_6n,
           "attention_flops_per_token": fpt.attention, "build_s": c["build_s"],
           "lower_s": c["lower_s"], "compile_s": c["compile_s"],
           "memory_bytes": mem, "batches_tried": tried,
           "hlo_flops_per_step": c["hlo_flops_per_step"],
           "hlo_attention_calls": c["hlo_attention_calls"],
           "batch_fit_estimate": largest_fitting_batch(mem, batch, limit)}
    calls = (c["hlo_attention_calls"] or {}).get("cudnn_fmha")
    if row["attention"] == "cudnn" and calls == 0:
        row["warning"] = "cudnn chosen but no cudnn$fmha call in the compiled step"
    if not fits(mem, limit):
        row["error"] = (f"does not fit (batch {batch}, estimate "
                        f"{mem['peak_estimate'] / 2**30:.1f} GiB)")
        return row
    stage(f"L{depth}: init + {args.warmup} warm-up + {args.steps} timed steps")
    state = setup.init_fn()
    batches = random_batches(exp, setup.batch_sharding, cfg.vocab_size)
    timing = time_steps(c["compiled"], state, batches, args.warmup, args.steps,
                        max_timed_s=max(30.0, 0.2 * args.budget_s))
    del state, batches, c
    times = timing["times"]
    median = statistics.median(times)
    tok_s = batch * args.seq / median
    peak = ctx["peak"]
    achieved, mfu = mfu_lib.mfu(fpt.training, tok_s, peak)
    achieved_dense, mfu_dense = mfu_lib.mfu(fpt.dense_6n, tok_s, peak)
    ceiling = ctx["matmul_tflops"]
    row.update({
        "steps_timed": len(times), "warmup_steps": args.warmup, "warmup_s": timing["warmup_s"],
        "step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
        "step_s_all": times, "tokens_per_s": tok_s,
        "tflops_per_s_with_attention": achieved / 1e12,
        "tflops_per_s_without_attention": achieved_dense / 1e12,
        "mfu_with_attention": mfu, "mfu_without_attention": mfu_dense,
        "fraction_of_measured_matmul": None if not ceiling else achieved / 1e12 / ceiling,
        "hlo_tflops_per_s": (row["hlo_flops_per_step"] / median / 1e12
                             if row["hlo_flops_per_step"] else None),
        "loss_first": timing["losses"][0], "loss_last": timing["losses"][-1],
        "finite": timing["finite"], "device_memory_after": device_memory_stats(ctx["device"]),
    })
    if counts.non_embedding >= TARGET_MIN_N:
        row["target"] = "PASS" if mfu >= TARGET_MFU else "MISS"
    gc.collect()
    return row


def compile_vs_depth(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """Compile time at the width of --compile-depth with its own and twice its layers."""
    depth = args.compile_depth
    base = next((r for r in rows if r["depth"] == depth and "compile_s" in r), None)
    batch = base["batch"] if base else args.batches.get(depth, 8)
    out = []
    if base:
        out.append({"d_model": base["d_model"], "n_layers": base["n_layers"], "batch": batch,
                    "lower_s": base["lower_s"], "compile_s": base["compile_s"],
                    "temp_gib": base["memory_bytes"]["temp"] / 2**30, "from": "size run"})
    for n_layers in ([depth, 2 * depth] if base is None else [2 * depth]):
        stage(f"compile time: d_model {64 * depth}, {n_layers} layers (compile only)")
        c = compile_step(depth, batch, args, n_layers=n_layers)
        out.append({"d_model": 64 * depth, "n_layers": n_layers, "batch": batch,
                    "lower_s": c["lower_s"], "compile_s": c["compile_s"],
                    "temp_gib": c["memory"]["temp"] / 2**30, "from": "compile only"})
        del c
        gc.collect()
    return out


# --------------------------------------------------------------------------- report


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:300]


def _pct(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"### llmjax train step on {meta['device_kind']} x{meta['device_count']} "
        f"({meta['platform']}), jax {meta['versions']['jax']}, flax {meta['versions']['flax']}",
        "",
        f"peak {meta['peak_tflops']:.1f} TFLOP/s: {meta['peak_label']} ({meta['peak_source']});"
        f" measured bf16 matmul {meta['matmul_tflops_measured'] or '-'} TFLOP/s; attention "
        f"{meta['attention']['used']} ({meta['attention']['probe']})",
        "",
        "| L | d_model | N non-emb | N total | batch x seq | remat | attn | compile s | "
        "mem GiB (temp+arg+out-alias) | fits up to | step ms (min-max) | tokens/s | TFLOP/s | "
        "MFU w/ attn | MFU w/o attn | target >=55% @ >=350M |",
        "|" + "---|" * 16,
    ]
    for r in result["sizes"]:
        if "step_s_median" not in r:
            lines.append(f"| {r.get('depth')} | {r.get('d_model', '-')} | "
                         f"{r.get('n_non_embedding', 0) / 1e6:.0f}M | - | - | - | - | "
                         f"{r.get('compile_s', 0):.1f} | - | - | "
                         f"ERROR: {r.get('error', '?')} | - | - | - | - | - |")
            continue
        m = r["memory_bytes"]
        lines.append(
            f"| {r['depth']} | {r['d_model']} | {r['n_non_embedding'] / 1e6:.1f}M | "
            f"{r['n_total'] / 1e6:.1f}M | {r['batch']} x {r['seq']} | {r['remat']} | "
            f"{r['attention']} | {r['lower_s'] + r['compile_s']:.1f} | "
            f"{m['peak_estimate'] / 2**30:.2f} ({m['temp'] / 2**30:.2f}+"
            f"{m['argument'] / 2**30:.2f}+{m['output'] / 2**30:.2f}-{m['alias'] / 2**30:.2f}) | "
            f"{r['batch_fit_estimate'] if r['batch_fit_estimate'] is not None else '-'} | "
            f"{1e3 * r['step_s_median']:.1f} ({1e3 * r['step_s_min']:.1f}-"
            f"{1e3 * r['step_s_max']:.1f}) | {r['tokens_per_s']:,.0f} | "
            f"{r['tflops_per_s_with_attention']:.1f} | {_pct(r['mfu_with_attention'])} | "
            f"{_pct(r['mfu_without_attention'])} | {r.get('target', 'n/a (N < 300M)')} |")
    if result["compile_vs_depth"]:
        lines += ["", "compile time vs depth at one width (scanned layers: should be flat)", "",
                  "| d_model | layers | batch | lower s | compile s | temp GiB | from |",
                  "|---|---|---|---|---|---|---|"]
        for c in result["compile_vs_depth"]:
            lines.append(f"| {c['d_model']} | {c['n_layers']} | {c['batch']} | "
                         f"{c['lower_s']:.1f} | {c['compile_s']:.1f} | {c['temp_gib']:.2f} | "
                         f"{c['from']} |")
    lines += ["", "FLOPs/token: 'w/ attn' = llmjax.model.flops training (6 x matmul params incl. "
              "unembedding + causal attention); 'w/o attn' = dense_6n. Remat recompute not "
              "counted. Step time: median of timed steps, each synced."]
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, result: dict) -> None:
    t_start = time.perf_counter()
    stage("import jax")
    import jax

    versions = package_versions()
    result["meta"]["versions"] = versions
    result["meta"]["module_paths"] = module_paths()
    result["notes"] += check_versions(versions)
    stage("import llmjax (config, model, train.step, train.optimizer, train.mfu)")
    import llmjax.config  # noqa: F401 - fail here, clearly, if it cannot import
    import llmjax.train.step  # noqa: F401
    from llmjax.train import loop  # noqa: F401 - fail here, clearly (orbax; no data pipeline)
    from llmjax.train import mfu as mfu_lib

    result["meta"]["build"] = "llmjax.train.loop.build"
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    peak = mfu_lib.device_peak()
    result["meta"].update({
        "platform": device.platform, "device_kind": device.device_kind,
        "device_count": jax.device_count(), "cudnn_version": cudnn_version(),
        "peak_tflops": peak.flops / 1e12, "peak_label": peak.label,
        "peak_source": ("measured float32 CPU matmul (llmjax.train.mfu.cpu_peak)" if peak.measured
                        else "vendor datasheet dense bf16 without sparsity, per device "
                             "(llmjax.train.mfu.PEAK_FLOPS; H100/H200 SXM: 989 TFLOP/s)"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        "compilation_cache_dir": getattr(jax.config, "jax_compilation_cache_dir", None),
    })
    print(f"versions: {json.dumps(versions)}", flush=True)
    for name, where in result["meta"]["module_paths"].items():
        print(f"    {name}: {where}", flush=True)
    print(f"device: {device.device_kind} x{jax.device_count()} ({device.platform}); cudnn "
          f"{result['meta']['cudnn_version']}; peak {peak.flops / 1e12:.1f} TFLOP/s "
          f"[{peak.label}]", flush=True)
    for note in result["notes"]:
        print(f"note: {note}", flush=True)
    stage("attention implementation probe")
    attention = choose_attention(args.attention, on_gpu)
    args.model_attention = attention["model_attention"]
    result["meta"]["attention"] = attention
    print(f"    attention: {attention['used']} ({attention['probe']})", flush=True)
    stage("bf16 matmul ceiling (8192^3)" if on_gpu else "matmul ceiling: skipped on CPU")
    ceiling = measured_matmul_tflops(on_gpu)
    result["meta"]["matmul_tflops_measured"] = None if ceiling is None else round(ceiling, 1)
    if ceiling:
        print(f"    {ceiling:.1f} TFLOP/s", flush=True)
    ctx = {"device": device, "device_count": jax.device_count(),
           "bytes_limit": device_bytes_limit(device), "peak": peak,
           "attention": attention, "matmul_tflops": ceiling}
    result["meta"]["bytes_limit"] = ctx["bytes_limit"]
    longest = 0.0
    for depth in args.sizes:
        elapsed = time.perf_counter() - t_start
        guess = 1.5 * longest if longest else 0.0
        if elapsed + guess > args.budget_s:
            result["sizes"].append({"depth": depth, "error": f"skipped: time budget "
                                    f"({elapsed:.0f} s + ~{guess:.0f} s > {args.budget_s:.0f})"})
            continue
        t0 = time.perf_counter()
        try:
            row = bench_size(depth, args, ctx)
        except Exception as e:  # one size failing must not lose the others
            traceback.print_exc()
            row = {"depth": depth, "error": f"{_stage}: {type(e).__name__}: {_one_line(e)}"}
        gc.collect()
        longest = max(longest, time.perf_counter() - t0)
        result["sizes"].append(row)
        write_json(args.json, result)  # partial results survive a later kill
        if "step_s_median" in row:
            print(f"    L{depth}: {1e3 * row['step_s_median']:.1f} ms/step, "
                  f"{row['tokens_per_s']:,.0f} tok/s, MFU {_pct(row['mfu_with_attention'])} "
                  f"(w/o attn {_pct(row['mfu_without_attention'])})", flush=True)
    if args.compile_depth:
        elapsed = time.perf_counter() - t_start
        same = [r for r in result["sizes"] if r["depth"] == args.compile_depth] or result["sizes"]
        compile_guess = 1.3 * max([r.get("compile_s", 0) + r.get("lower_s", 0) + r.get(
            "build_s", 0) for r in same] + [0])
        if elapsed + compile_guess > args.budget_s:
            result["notes"].append(f"compile-vs-depth skipped: time budget ({elapsed:.0f} s)")
        else:
            try:
                result["compile_vs_depth"] = compile_vs_depth(args, result["sizes"])
            except Exception as e:
                traceback.print_exc()
                result["notes"].append(f"compile-vs-depth failed: {type(e).__name__}: "
                                       f"{_one_line(e)}")
    result["forbidden_modules_loaded"] = sorted(
        m for m in sys.modules if m.split(".")[0] in BLOCKED)
    result["blocked_import_attempts"] = sorted(set(_blocked_attempts))
    result["total_s"] = time.perf_counter() - t_start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if not args.no_block:
        sys.meta_path.insert(0, _BlockHeavyImports())
    result: dict = {"schema": 1, "argv": sys.argv[1:] if argv is None else argv,
                    "smoke": args.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "meta": {"attention": {"used": "-", "probe": "-"}}, "sizes": [],
                    "compile_vs_depth": [], "notes": [],
                    "target": {"mfu": TARGET_MFU, "min_non_embedding": TARGET_MIN_N}}
    try:
        run(args, result)
    except Exception as e:  # the one clear line below is the point
        traceback.print_exc()
        result["error"] = f"{_stage}: {type(e).__name__}: {_one_line(e)}"
        write_json(args.json, result)
        versions = result["meta"].get("versions", {})
        print(f"gpu_mfu: FAILED at '{_stage}': {type(e).__name__}: {_one_line(e)} "
              f"(jax {versions.get('jax')}, flax {versions.get('flax')})", flush=True)
        return 1
    write_json(args.json, result)
    table = markdown(result)
    md_path = os.path.splitext(args.json)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(table + "\n")
    print()
    print(table)
    print(f"\nwrote {args.json} and {md_path} ({result['total_s']:.0f} s)", flush=True)
    bad = [r for r in result["sizes"] if "step_s_median" not in r]
    return 2 if bad and len(bad) == len(result["sizes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
