"""scaling_gpu: a compute-optimal ladder from 3M to 1.1B non-embedding parameters for GPUs/TPUs.

Every size follows from one knob, depth L (nanochat style):
  d_model = 64 L, head_dim 128 (n_heads = d_model / 128), SwiGLU, RMSNorm, RoPE, untied
  embeddings, seq_len 2048, BPE vocabulary 32768, bf16 compute with float32 parameters,
  scanned layers, remat 'dots', parameters sharded over all devices (mesh fsdp=-1).
  tokens  = TOKENS_PER_PARAM (20) x N, N = non-embedding parameters;  C = 6 N tokens
  batch   = DeepSeek LLM (2024) eq. 1, B_opt = 0.292 C^0.3271 tokens, as a power of two of
            2048-token sequences (at least 8)
  lr      = DeepSeek LLM eq. 1, eta_opt = 0.3118 C^-0.125; warmup min(2000, 10% of steps), cosine
            to 10%
Depths (4, 6, 8, 12, 16, 20, 24, 28): N = 3.2M, 10.7M, 25M, 85M, 201M, 393M, 679M, 1.08B
(total with embeddings 20M ... 1.2B).

    llmjax info  --config=experiments/configs/scaling_gpu.py:depth=28
    llmjax sweep --config=experiments/configs/scaling_gpu.py --workdir=gs://.../ladder --dry_run
    llmjax sweep --config=experiments/configs/scaling_gpu.py:depths=4+6+8 --workdir=ladder

Variants after the colon, comma-separated: depth=L (get_config: that size; default 12),
depths=A+B+... (get_sweep: these depths), tokens_per_param=R, dataset=NAME (default synthetic).
These shapes are checked by tests/test_scaling_configs.py with `llmjax info`; nothing here is
trained on CPU.
"""

import math

from llmjax.config import base_config

DEPTHS = (4, 6, 8, 12, 16, 20, 24, 28)
ASPECT = 64  # d_model per layer
HEAD_DIM = 128
SEQ_LEN = 2048
TOKENIZER = "bpe:32768"
TOKENS_PER_PARAM = 20.0
MIN_BATCH = 8


def _parse(arg):
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"scaling_gpu.py: variant {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    allowed = {"depth", "depths", "tokens_per_param", "dataset"}
    if set(out) - allowed:
        raise ValueError(f"scaling_gpu.py: unknown variant(s) {sorted(set(out) - allowed)}; "
                         f"allowed: {sorted(allowed)}")
    for d in [out.get("depth")] + out.get("depths", "").split("+"):
        if d and (not d.isdigit() or int(d) < 2 or int(d) % 2):
            raise ValueError(f"scaling_gpu.py: depth {d!r}; allowed: even integers >= 2 "
                             "(d_model = 64 x depth must split into 128-wide heads)")
    return out


def non_embedding_params(depth):
    """N of the depth rule: L x (attention 4d^2 + SwiGLU 3 d d_ff + 2 norms) + final norm."""
    d = ASPECT * depth
    d_ff = 32 * math.ceil(8 * d / 3 / 32)
    return depth * (4 * d * d + 3 * d * d_ff + 2 * d) + d


def size_overrides(depth, tokens_per_param=TOKENS_PER_PARAM):
    """Every per-size setting as dotted config overrides (plus 'name')."""
    d_model = ASPECT * depth
    n = non_embedding_params(depth)
    tokens = tokens_per_param * n
    compute = 6.0 * n * tokens
    batch_tokens = 0.292 * compute**0.3271
    batch = max(MIN_BATCH, 2 ** round(math.log2(batch_tokens / SEQ_LEN)))
    steps = math.ceil(tokens / (batch * SEQ_LEN))
    return {
        "name": f"L{depth}_d{d_model}",
        "model.d_model": d_model,
        "model.n_layers": depth,
        "model.n_heads": d_model // HEAD_DIM,
        "data.batch_size": batch,
        "steps": steps,
        "optimizer.lr": float(f"{0.3118 * compute**-0.125:.3g}"),
        "optimizer.warmup_steps": min(2000, max(1, steps // 10)),
        "eval_every": max(100, steps // 20),
        "checkpoint_every": max(200, steps // 10),
        "meta.tokens_per_param": tokens_per_param,
    }


def get_config(arg=None):
    args = _parse(arg)
    config = base_config()
    config.seed = 0
    m = config.model
    m.vocab_size = 0  # the tokenizer's: 32768
    m.max_seq_len = SEQ_LEN
    m.mlp = "swiglu"
    m.norm = "rmsnorm"
    m.positions = "rope"
    m.tie_embeddings = False
    m.param_dtype = "float32"
    m.compute_dtype = "bfloat16"
    m.scan_layers = True
    m.remat = "dots"
    d = config.data
    d.dataset = args.get("dataset", "synthetic")
    d.tokenizer = TOKENIZER
    d.seq_len = SEQ_LEN
    d.worker_count = 2
    o = config.optimizer
    o.schedule = "cosine"
    o.min_lr_ratio = 0.1
    o.weight_decay = 0.1
    o.grad_clip = 1.0
    o.b2 = 0.95
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.mesh.tensor = 1
    config.log_every = 10
    config.eval_batches = 16
    config.keep_checkpoints = 2
    tpp = float(args.get("tokens_per_param", TOKENS_PER_PARAM))
    for key, value in size_overrides(int(args.get("depth", 12)), tpp).items():
        if key == "name" or key.startswith("meta."):
            continue
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def get_sweep(arg=None):
    args = _parse(arg)
    depths = [int(x) for x in args.get("depths", "").split("+") if x] or list(DEPTHS)
    tpp = float(args.get("tokens_per_param", TOKENS_PER_PARAM))
    return [size_overrides(depth, tpp) for depth in depths]
