"""lm: a family of decoder-only LMs from one depth knob (nanochat style), on the synthetic corpus.

    llmjax train --config=experiments/configs/lm.py:size=S --workdir=runs/lm_s
    llmjax info  --config=experiments/configs/lm.py:depth=6,tokenizer=bpe:4096

Variants after the colon, comma-separated:
  size=XS|S|M|L|XL    named depths 2, 4, 6, 8, 12
  depth=N             any depth: n_layers = N, d_model = 64*N, head_dim 64 (n_heads = N)
  tokenizer=SPEC      'byte' (default) or 'bpe:<vocab>'
  tokens_per_param=R  train tokens = R x non-embedding params (default 20, Chinchilla)
Everything else follows from depth: width, heads, a learning rate that shrinks as 1/sqrt(width),
and the step count (from the token budget at 32 x 256 tokens per step).

Approximate non-embedding sizes (SwiGLU): XS 0.4M, S 3.2M, M 10.7M, L 25M, XL 85M.
"""

import math

from llmjax.config import base_config

SIZES = {"XS": 2, "S": 4, "M": 6, "L": 8, "XL": 12}
HEAD_DIM = 64
ASPECT = 64  # d_model per layer of depth


def _parse(arg: str | None) -> dict[str, str]:
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"lm.py: variant {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    allowed = {"size", "depth", "tokenizer", "tokens_per_param"}
    if set(out) - allowed:
        raise ValueError(f"lm.py: unknown variant key(s) {sorted(set(out) - allowed)}; "
                         f"allowed: {sorted(allowed)}")
    return out


def get_config(arg: str | None = None):
    args = _parse(arg)
    if "depth" in args:
        depth = int(args["depth"])
    else:
        size = args.get("size", "S").upper()
        if size not in SIZES:
            raise ValueError(f"lm.py: size={size!r}; allowed: {', '.join(SIZES)}")
        depth = SIZES[size]
    d_model = ASPECT * depth

    config = base_config()
    m = config.model
    m.vocab_size = 0  # from the tokenizer
    m.d_model = d_model
    m.n_layers = depth
    m.n_heads = max(1, d_model // HEAD_DIM)
    m.max_seq_len = 256
    m.mlp = "swiglu"
    m.positions = "rope"
    m.scan_layers = True

    d = config.data
    d.dataset = "synthetic"
    d.tokenizer = args.get("tokenizer", "byte")
    d.seq_len = 256
    d.batch_size = 32

    # ~12 * depth * d_model^2 non-embedding parameters; Chinchilla-style token budget.
    approx_params = 12 * depth * d_model**2
    tokens = float(args.get("tokens_per_param", 20)) * approx_params
    config.steps = max(100, math.ceil(tokens / (d.batch_size * d.seq_len)))

    o = config.optimizer
    o.lr = 3e-3 * math.sqrt(256 / d_model)
    o.warmup_steps = min(200, config.steps // 10)
    o.schedule = "cosine"

    config.log_every = 25
    config.eval_every = max(50, config.steps // 10)
    config.eval_batches = 8
    config.checkpoint_every = max(100, config.steps // 5)
    return config
