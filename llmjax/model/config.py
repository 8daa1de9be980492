"""ModelConfig: every knob of the decoder-only transformer, validated once; the parametrization.

The parametrization section at the bottom is the ONE place that decides init scales, the attention
logit scale, the output logit multiplier and the per-parameter Adam learning-rate multipliers; the
forward pass and the optimizer only call those functions. 'sp' is GPT-2's standard
parametrization, 'mup' the maximal update parametrization (Yang et al. 2022, Tensor Programs V).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from llmjax import fields
from llmjax.errors import UserError

POSITIONS = ("rope", "learned")
NORMS = ("rmsnorm", "layernorm")
MLPS = ("gelu", "swiglu", "none")
REMATS = ("none", "full", "dots")
# fused: jax.nn.dot_product_attention, the implementation XLA picks (on the CPU backend the
#   written-out attention, which measured faster there); cudnn: the same call with
#   implementation='cudnn' (cuDNN's flash attention on NVIDIA GPUs; an error elsewhere);
# reference: the written-out softmax(QK^T)V everywhere.
ATTENTIONS = ("fused", "cudnn", "reference")
PARAMETRIZATIONS = ("sp", "mup")
DTYPES = ("float32", "bfloat16", "float16")

# Default SwiGLU hidden width is rounded up to this multiple (keeps matmuls and sharding even).
SWIGLU_MULTIPLE = 32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (sizes in elements, not bytes).

    n_kv_heads=None means n_kv_heads = n_heads (plain multi-head attention); fewer kv heads give
    grouped-query attention. d_ff=None means 4*d_model for gelu, and 8/3*d_model rounded up to a
    multiple of 32 for swiglu (same parameter count as gelu's 4*d_model); ignored for mlp='none'.

    muP fields (used only with parametrization='mup'; see the parametrization section):
    mup_base_d_model and mup_base_d_head are the base model's d_model and head_dim, at which
    muP equals 'sp' (both required for 'mup'; the same values, e.g. the sweep's smallest model,
    in every run of a sweep). mup_base_d_head = head_dim when the sweep keeps head_dim fixed
    (and scales n_heads); = mup_base_d_model / n_heads when it keeps n_heads fixed.
    mup_zero_init zero-initialises the query projection and the untied readout (TP5's advice;
    off keeps muP identical to 'sp' at the base width).

    use_bias adds bias vectors (zero-initialised) to the attention projections (q, k, v, out) and
    the MLP's (up, gate, down), as GPT-2 has; LayerNorm's bias exists either way.
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    positions: str = "rope"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"
    tie_embeddings: bool = True
    dropout: float = 0.0
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"
    attention: str = "fused"
    parametrization: str = "sp"
    init_std: float = 0.02
    mup_base_d_model: int | None = None
    mup_base_d_head: int | None = None
    mup_zero_init: bool = False
    rope_theta: float = 10000.0
    use_bias: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    # ---- derived sizes --------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads after resolving the None default."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ff_dim(self) -> int:
        """MLP hidden width after resolving the None default; 0 for mlp='none'."""
        if self.mlp == "none":
            return 0
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        return SWIGLU_MULTIPLE * math.ceil(8 * self.d_model / 3 / SWIGLU_MULTIPLE)

    @property
    def param_jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def compute_jnp_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)

    # ---- (de)serialisation ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "model") -> ModelConfig:
        """Build from a plain dict or ml_collections ConfigDict; UserError names the bad field.

        Example message: "model.d_model: 100 is not divisible by model.n_heads=3".
        """
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        if not isinstance(d, Mapping):
            raise UserError(f"{prefix}: expected a mapping of model fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise UserError(
                    f"{prefix}.{key}: unknown model field (allowed: {', '.join(sorted(known))})"
                )
        hints = fields.hints(cls)
        kwargs = {key: fields.check_value(f"{prefix}.{key}", value, hints[key])
                  for key, value in d.items()}
        try:
            return cls(**kwargs)
        except UserError as e:
            if prefix == "model":
                raise
            raise UserError(str(e).replace("model.", f"{prefix}.")) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate(c: ModelConfig) -> None:
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"model.{name}: must be a positive integer, got {value!r}")
    for name in ("n_kv_heads", "d_ff", "mup_base_d_model", "mup_base_d_head"):
        value = getattr(c, name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise UserError(f"model.{name}: must be a positive integer or None, got {value!r}")
    enums = {
        "positions": POSITIONS,
        "norm": NORMS,
        "mlp": MLPS,
        "remat": REMATS,
        "attention": ATTENTIONS,
        "parametrization": PARAMETRIZATIONS,
        "param_dtype": DTYPES,
        "compute_dtype": DTYPES,
    }
    for name, allowed in enums.items():
        value = getattr(c, name)
        if value not in allowed:
            raise UserError(f"model.{name}: {value!r} is not one of {', '.join(allowed)}")
    for name in ("tie_embeddings", "scan_layers", "mup_zero_init", "use_bias"):
        if not isinstance(getattr(c, name), bool):
            raise UserError(f"model.{name}: expected true/false, got {getattr(c, name)!r}")
    if c.d_model % c.n_heads:
        divisors = [h for h in range(1, c.d_model + 1) if c.d_model % h == 0]
        shown = str(divisors) if len(divisors) <= 12 else str(divisors[:12])[:-1] + ", ...]"
        raise UserError(f"model.d_model={c.d_model} is not divisible by model.n_heads="
                        f"{c.n_heads}; allowed n_heads: divisors of {c.d_model} ({shown})")
    if c.n_heads % c.kv_heads:
        divisors = [h for h in range(1, c.n_heads + 1) if c.n_heads % h == 0]
        raise UserError(f"model.n_kv_heads={c.kv_heads}: model.n_heads={c.n_heads} must be "
                        f"divisible by it; allowed n_kv_heads: {divisors} (or None = n_heads)")
    if c.positions == "rope" and c.head_dim % 2:
        raise UserError(
            f"model.positions: rope needs an even head_dim, got d_model/n_heads={c.head_dim}"
        )
    if not 0.0 <= c.dropout < 1.0:
        raise UserError(f"model.dropout: must be in [0, 1), got {c.dropout!r}")
    if c.parametrization == "mup" and c.mup_base_d_model is None:
        raise UserError(
            "model.mup_base_d_model: required when model.parametrization='mup' (the width at "
            "which muP equals sp, e.g. the smallest d_model of the sweep)"
        )
    if c.parametrization == "mup" and c.mup_base_d_head is None:
        raise UserError(
            "model.mup_base_d_head: required when model.parametrization='mup' (the base model's "
            "head_dim; = head_dim if the sweep keeps head_dim fixed)"
        )
    for name in ("init_std", "rope_theta", "norm_eps"):
        value = getattr(c, name)
        if (not isinstance(value, int | float) or isinstance(value, bool) or not value > 0
                or not math.isfinite(value)):
            raise UserError(f"model.{name}: must be a positive finite number, got {value!r}")


# ---- parametrization: the ONE place for init scales, logit multipliers and lr multipliers -------
#
# 'mup' (Tensor Programs V, Table 3 for Adam, in the form "relative to a base width"): with width
# ratio m = d_model / mup_base_d_model,
#   input-like  (embed, pos_embed, norm scales/biases)     init as sp      Adam lr  eta
#   hidden      (wq wk wv wo, w_up w_gate w_down)          std / sqrt(m)   Adam lr  eta / m
#   readout     (unembed, or the tied embedding)           init as sp      Adam lr  eta, logits / m
#   attention   q.k * sqrt(mup_base_d_head) / head_dim  (1/head_dim scaling, = sp at the base)
# The readout uses the "output multiplier" form (width-independent init, logits times 1/m, lr eta),
# which is equivalent to 1/fan_in^2 init with lr eta/m, and agrees with the input-like rule, so a
# tied embedding is both at once (mup's MuSharedReadout). Every hidden dimension (d_ff,
# n_heads * head_dim) is taken to grow in proportion to d_model, so one ratio m serves all
# hidden matrices. At the base shape (d_model = mup_base_d_model, head_dim = mup_base_d_head,
# mup_zero_init off) 'mup' is exactly 'sp'. Not scaled: Adam's eps (fine while gradients stay far
# above it) and depth (muP transfers across width at fixed n_layers).

PARAM_ROLES = ("embed", "pos_embed", "query", "in", "out", "unembed", "norm", "bias")

# The bias vectors of use_bias (zeros at init, Adam lr eta, no weight decay: vector-like).
BIAS_NAMES = ("bq", "bk", "bv", "bo", "b_up", "b_gate", "b_down")

# Parameter name (last path component in transformer.py) -> role.
PARAM_ROLE_BY_NAME = {
    "embed": "embed",
    "pos_embed": "pos_embed",
    "unembed": "unembed",
    "wq": "query",
    "wk": "in",
    "wv": "in",
    "w_gate": "in",
    "w_up": "in",
    "wo": "out",
    "w_down": "out",
    "scale": "norm",
    "bias": "norm",
    **{name: "bias" for name in BIAS_NAMES},
}


def param_role(path: Sequence[Any]) -> str:
    """The role of a model parameter from its path, e.g. ('blocks', 0, 'attn', 'wq') -> 'query'."""
    name = str(path[-1]) if path else ""
    if name not in PARAM_ROLE_BY_NAME:
        raise ValueError(f"parameter {'/'.join(map(str, path))!r} has no parametrization role")
    return PARAM_ROLE_BY_NAME[name]


def width_multiplier(cfg: ModelConfig) -> float:
    """m = d_model / mup_base_d_model under 'mup' (1 under 'sp')."""
    if cfg.parametrization == "sp":
        return 1.0
    if cfg.parametrization == "mup":
        return cfg.d_model / cfg.mup_base_d_model
    raise ValueError(f"unknown parametrization {cfg.parametrization!r}")


def init_std(cfg: ModelConfig, role: str) -> float:
    """Standard deviation of the normal init for a parameter with this role (0 = zeros).

    Roles: 'embed' token embedding [vocab, d_model]; 'pos_embed' learned positions;
    'query' the query projection; 'in' other matrices reading the residual stream (k, v, MLP
    up/gate); 'out' matrices writing to it (attention output, MLP down); 'unembed' untied output
    matrix [d_model, vocab]. 'norm' and 'bias' are not random (scales are ones, biases zeros).
    'sp' (GPT-2): everything N(0, init_std); 'out' shrunk by 1/sqrt(number of residual branches)
    = 1/sqrt(2*n_layers) (1/sqrt(n_layers) when mlp='none'), so the residual stream's variance
    at init does not grow with depth.
    'mup': as 'sp', with hidden matrices ('query', 'in', 'out') shrunk by 1/sqrt(m) (variance
    proportional to 1/fan_in); with mup_zero_init, 'query' and 'unembed' are 0.
    """
    if role not in PARAM_ROLES:
        raise ValueError(f"unknown parameter role {role!r}")
    m = width_multiplier(cfg)
    if cfg.parametrization == "mup" and cfg.mup_zero_init and role in ("query", "unembed"):
        return 0.0
    if role in ("query", "in", "out"):
        std = cfg.init_std / math.sqrt(m)
        if role == "out":
            branches = cfg.n_layers * (1 if cfg.mlp == "none" else 2)
            std /= math.sqrt(branches)
        return std
    return cfg.init_std


def attention_scale(cfg: ModelConfig) -> float:
    """Multiplier on q.k logits: 1/sqrt(head_dim) in 'sp'; sqrt(mup_base_d_head)/head_dim in 'mup'.

    muP's 1/head_dim scaling, with the constant chosen so it equals 'sp' at the base head_dim
    (written as sp's scale times sqrt(base/head_dim), so that it is bitwise sp's there).
    """
    if cfg.parametrization == "sp":
        return 1.0 / math.sqrt(cfg.head_dim)
    if cfg.parametrization == "mup":
        return 1.0 / math.sqrt(cfg.head_dim) * math.sqrt(cfg.mup_base_d_head / cfg.head_dim)
    raise ValueError(f"unknown parametrization {cfg.parametrization!r}")


def logit_multiplier(cfg: ModelConfig) -> float:
    """Multiplier on the output logits: 1 in 'sp'; 1/m = mup_base_d_model/d_model in 'mup'."""
    return 1.0 / width_multiplier(cfg)


def lr_multiplier(cfg: ModelConfig, role: str) -> float:
    """Factor on the Adam learning rate of a parameter with this role.

    'sp': 1 everywhere. 'mup': 1/m for hidden matrices ('query', 'in', 'out'); 1 for input-like
    parameters and the readout (output multiplier form).
    """
    if role not in PARAM_ROLES:
        raise ValueError(f"unknown parameter role {role!r}")
    if role in ("query", "in", "out"):
        return 1.0 / width_multiplier(cfg)
    return 1.0
