"""scaling_demo: the CPU scaling-law demo — 7 byte-level models, 4K to 160K non-embedding params.

Each size trains for a fixed number of tokens per non-embedding parameter (default 20, the
Chinchilla ratio) on the default synthetic corpus, so the sweep spans 1.6 decades of N and 2.9
decades of compute. Sized so that `make demo` (sweep + fits + probes + report) fits in 20 minutes
on 2 CPU cores; the sweep prints its plan with the expected time before starting.

    llmjax sweep --config=experiments/configs/scaling_demo.py --workdir=demo --parallel=2
    llmjax sweep --config=experiments/configs/scaling_demo.py:tokens_per_param=10 --workdir=d10
    llmjax train --config=experiments/configs/scaling_demo.py:size=d32_l2 --workdir=runs/d32

Variants after the colon, comma-separated:
  tokens_per_param=R   train tokens = R x non-embedding params (default 20)
  sizes=A+B+...        only these sizes (names from SIZES), e.g. sizes=d16_l1+d32_l2
  size=NAME            (get_config only) the full config of one size, for a single run
  seeds=S              S replicates of every size (seeds 0..S-1), each size's trained as one
                       vmapped program; the report shows mean ± SE per size

Per-size rules (all written into each point's overrides, so runs/<name>/overrides.json is explicit):
  shape     d_model x n_layers from SIZES, head_dim 16
  batch     the power of two giving ~TARGET_STEPS steps, clipped to [8, 32] sequences of 128
  steps     ceil(R x N / (batch x 128))
  lr        LR_BASE x 64 / d_model: Adam's best lr falls as 1/width in SP (scanned x0.5/x1/x2 at
            d_model 16, 24, 48 with untied embeddings: 1/width fits all three, 1/sqrt does not)
  warmup    10% of steps; cosine decay to 10% of lr
  ckpt      5 checkpoints per run, all kept (every ~1/5 of training, the last at the end), so
            `llmjax probe --all_steps` can follow abilities through training
  eval      8 evaluations per run (curves for Chinchilla Approach 1) on the same EVAL_ROWS
            validation rows for every size (eval_batches x batch = EVAL_ROWS)
"""

import math

from llmjax.config import base_config

# name -> (d_model, n_layers); non-embedding params (byte vocab, SwiGLU, RMSNorm):
# 4.1K, 8.3K, 13.9K, 26.8K, 55.5K, 107K, 160K.
SIZES = {
    "d16_l1": (16, 1),
    "d16_l2": (16, 2),
    "d24_l2": (24, 2),
    "d32_l2": (32, 2),
    "d48_l2": (48, 2),
    "d64_l2": (64, 2),
    "d64_l3": (64, 3),
}
HEAD_DIM = 16
SEQ_LEN = 128
TARGET_STEPS = 250
MIN_BATCH, MAX_BATCH = 8, 32
LR_BASE = 5e-3  # at d_model 64; 2e-2 at d_model 16
EVAL_ROWS = 128  # validation sequences per evaluation, identical across sizes
EVALS_PER_RUN = 8
CHECKPOINTS_PER_RUN = 5  # kept; 5 is the fewest the report's phase-change test fits
TOKENS_PER_PARAM = 20.0


def _parse(arg):
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"scaling_demo.py: variant {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    allowed = {"tokens_per_param", "sizes", "size", "seeds"}
    if set(out) - allowed:
        raise ValueError(f"scaling_demo.py: unknown variant(s) {sorted(set(out) - allowed)}; "
                         f"allowed: {sorted(allowed)}")
    for name in [out.get("size")] + out.get("sizes", "").split("+"):
        if name and name not in SIZES:
            raise ValueError(f"scaling_demo.py: size {name!r}; allowed: {', '.join(SIZES)}")
    return out


def _base():
    config = base_config()
    config.seed = 0
    config.tensorboard = False
    m = config.model
    m.vocab_size = 0  # the tokenizer's: byte = 259
    m.max_seq_len = SEQ_LEN
    m.mlp = "swiglu"
    m.positions = "rope"
    m.scan_layers = True
    # Untied: the unembedding alone can learn bigram statistics, so even the smallest models
    # leave the unigram plateau (~3.1 nats/byte) in their few hundred steps; tied, models below
    # ~25K parameters stayed on it. (An untied unembedding counts as embedding: N is unchanged.)
    m.tie_embeddings = False
    d = config.data
    d.dataset = "synthetic"  # the default corpus: 30k train documents (~6.6M bytes)
    d.tokenizer = "byte"
    d.seq_len = SEQ_LEN
    d.seed = 0
    d.worker_count = 0
    o = config.optimizer
    o.schedule = "cosine"
    o.min_lr_ratio = 0.1
    o.weight_decay = 0.1
    o.grad_clip = 1.0
    config.mesh.data = -1
    config.keep_checkpoints = 1
    return config


def size_overrides(name, tokens_per_param=TOKENS_PER_PARAM):
    """Every setting that depends on the size, as dotted config overrides (plus 'name')."""
    from llmjax.sweep.spec import apply_overrides, count_params

    d_model, n_layers = SIZES[name]
    shape = {"model.d_model": d_model, "model.n_layers": n_layers,
             "model.n_heads": d_model // HEAD_DIM}
    n = count_params(apply_overrides(_base(), shape)).non_embedding
    tokens = tokens_per_param * n
    batch = 2 ** round(math.log2(max(1.0, tokens / (SEQ_LEN * TARGET_STEPS))))
    batch = min(MAX_BATCH, max(MIN_BATCH, batch))
    steps = math.ceil(tokens / (batch * SEQ_LEN))
    return {
        "name": name,
        **shape,
        "data.batch_size": batch,
        "steps": steps,
        "optimizer.lr": round(LR_BASE * 64 / d_model, 6),
        "optimizer.warmup_steps": max(1, steps // 10),
        "eval_every": max(1, steps // EVALS_PER_RUN),
        "eval_batches": max(1, EVAL_ROWS // batch),
        "log_every": max(1, steps // 25),
        "checkpoint_every": math.ceil(steps / CHECKPOINTS_PER_RUN),
        "keep_every": math.ceil(steps / CHECKPOINTS_PER_RUN),
        "meta.tokens_per_param": tokens_per_param,
    }


def get_config(arg=None):
    args = _parse(arg)
    config = _base()
    from llmjax.sweep.spec import apply_overrides, is_config_key

    overrides = size_overrides(args.get("size", "d32_l2"),
                               float(args.get("tokens_per_param", TOKENS_PER_PARAM)))
    return apply_overrides(config, {k: v for k, v in overrides.items() if is_config_key(k)})


def get_sweep(arg=None):
    args = _parse(arg)
    names = [n for n in args.get("sizes", "").split("+") if n] or list(SIZES)
    tpp = float(args.get("tokens_per_param", TOKENS_PER_PARAM))
    seeds = int(args.get("seeds", 1))
    if seeds < 1:
        raise ValueError(f"scaling_demo.py: seeds={seeds}; allowed: an integer >= 1")
    points = [size_overrides(name, tpp) for name in names]
    return points if seeds == 1 else [{**p, "seeds": seeds} for p in points]
