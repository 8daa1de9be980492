"""ModelConfig: every knob of the decoder-only transformer, validated once; the parametrization.

The parametrization section at the bottom is the ONE place that decides init scales, the attention
logit scale and the output logit multiplier; the forward pass only calls those functions, so a
later parametrization (muP) is added here without touching `transformer.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from llmjax.errors import UserError

POSITIONS = ("rope", "learned")
NORMS = ("rmsnorm", "layernorm")
MLPS = ("gelu", "swiglu", "none")
REMATS = ("none", "full", "dots")
ATTENTIONS = ("fused", "reference")
PARAMETRIZATIONS = ("sp",)
DTYPES = ("float32", "bfloat16", "float16")

# Default SwiGLU hidden width is rounded up to this multiple (keeps matmuls and sharding even).
SWIGLU_MULTIPLE = 32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer hyper-parameters (sizes in elements, not bytes).

    n_kv_heads=None means n_kv_heads = n_heads (plain multi-head attention); fewer kv heads give
    grouped-query attention. d_ff=None means 4*d_model for gelu, and 8/3*d_model rounded up to a
    multiple of 32 for swiglu (same parameter count as gelu's 4*d_model); ignored for mlp='none'.
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
    rope_theta: float = 10000.0

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
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in fields:
                raise UserError(
                    f"{prefix}.{key}: unknown model field (allowed: {', '.join(sorted(fields))})"
                )
        kwargs = {}
        for key, value in d.items():
            kwargs[key] = _check_type(f"{prefix}.{key}", value, fields[key].type)
        try:
            return cls(**kwargs)
        except UserError as e:
            if prefix == "model":
                raise
            raise UserError(str(e).replace("model.", f"{prefix}.")) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(name: str, value: Any, annotation: str) -> Any:
    """Check a raw value against a field annotation string ('int', 'int | None', ...)."""
    allowed = [t.strip() for t in str(annotation).split("|")]
    if value is None:
        if "None" in allowed:
            return None
        raise UserError(f"{name}: must not be None (expected {allowed[0]})")
    if "bool" in allowed:
        if isinstance(value, bool):
            return value
        raise UserError(f"{name}: expected true/false, got {value!r}")
    if "int" in allowed:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{name}: expected an integer, got {value!r}")
    if "float" in allowed:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{name}: expected a number, got {value!r}")
    if "str" in allowed:
        if isinstance(value, str):
            return value
        raise UserError(f"{name}: expected a string, got {value!r}")
    return value


def _validate(c: ModelConfig) -> None:
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"model.{name}: must be a positive integer, got {value!r}")
    for name in ("n_kv_heads", "d_ff"):
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
    for name in ("tie_embeddings", "scan_layers"):
        if not isinstance(getattr(c, name), bool):
            raise UserError(f"model.{name}: expected true/false, got {getattr(c, name)!r}")
    if c.d_model % c.n_heads:
        raise UserError(f"model.d_model: {c.d_model} is not divisible by model.n_heads={c.n_heads}")
    if c.n_heads % c.kv_heads:
        raise UserError(
            f"model.n_kv_heads: model.n_heads={c.n_heads} is not divisible by "
            f"n_kv_heads={c.kv_heads}"
        )
    if c.positions == "rope" and c.head_dim % 2:
        raise UserError(
            f"model.positions: rope needs an even head_dim, got d_model/n_heads={c.head_dim}"
        )
    if not 0.0 <= c.dropout < 1.0:
        raise UserError(f"model.dropout: must be in [0, 1), got {c.dropout!r}")
    for name in ("init_std", "rope_theta", "norm_eps"):
        value = getattr(c, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise UserError(f"model.{name}: must be a positive number, got {value!r}")


# ---- parametrization: the ONE place for init scales and logit multipliers ---------------------

PARAM_ROLES = ("embed", "pos_embed", "in", "out", "unembed", "norm")


def init_std(cfg: ModelConfig, role: str) -> float:
    """Standard deviation of the normal init for a parameter with this role.

    Roles: 'embed' token embedding [vocab, d_model]; 'pos_embed' learned positions;
    'in' matrices reading the residual stream (q, k, v, MLP up/gate); 'out' matrices writing to it
    (attention output, MLP down); 'unembed' untied output matrix [d_model, vocab].
    'sp' (GPT-2): everything N(0, init_std); 'out' shrunk by 1/sqrt(number of residual branches)
    = 1/sqrt(2*n_layers) (1/sqrt(n_layers) when mlp='none'), so the residual stream's variance
    at init does not grow with depth. 'norm' is not random (scales are ones, biases zeros).
    """
    if role not in PARAM_ROLES:
        raise ValueError(f"unknown parameter role {role!r}")
    if cfg.parametrization == "sp":
        if role == "out":
            branches = cfg.n_layers * (1 if cfg.mlp == "none" else 2)
            return cfg.init_std / math.sqrt(branches)
        return cfg.init_std
    raise ValueError(f"unknown parametrization {cfg.parametrization!r}")


def attention_scale(cfg: ModelConfig) -> float:
    """Multiplier on q.k logits: 1/sqrt(head_dim) in 'sp' (muP would use 1/head_dim)."""
    if cfg.parametrization == "sp":
        return 1.0 / math.sqrt(cfg.head_dim)
    raise ValueError(f"unknown parametrization {cfg.parametrization!r}")


def logit_multiplier(cfg: ModelConfig) -> float:
    """Multiplier on the output logits: 1 in 'sp' (muP would use base_width/d_model)."""
    if cfg.parametrization == "sp":
        return 1.0
    raise ValueError(f"unknown parametrization {cfg.parametrization!r}")
