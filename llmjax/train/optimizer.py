"""AdamW: warmup + cosine/linear/constant decay, global-norm clipping, a weight-decay mask, and
per-parameter learning-rate multipliers (muP: hidden matrices get eta * base_width / width)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from llmjax.model.config import BIAS_NAMES, ModelConfig, lr_multiplier, param_role
from llmjax.sharding import variable_logical_axes

# Path components that mark an embedding table (token / position embeddings, untied unembedding).
EMBEDDING_NAMES = ("embed", "wte", "wpe", "lm_head", "unembed", "embedding")


def learning_rate_schedule(opt: Any, total_steps: int) -> optax.Schedule:
    """lr(step) for optimizer step `step` (0-based count of updates already applied).

    Linear warmup to `lr` over `warmup_steps` (first update uses lr/warmup_steps, never 0), then
    `schedule` decays from `lr` to `lr*min_lr_ratio` at `total_steps`: 'cosine' (half cosine),
    'linear', or 'constant' (stays at `lr`).
    """
    peak = float(opt.lr)
    warmup = int(opt.warmup_steps)
    final = peak * float(opt.min_lr_ratio)
    kind = opt.schedule
    decay_len = max(total_steps - warmup, 1)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
        progress = jnp.clip((step - warmup) / decay_len, 0.0, 1.0)
        if kind == "cosine":
            decayed = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif kind == "linear":
            decayed = peak + (final - peak) * progress
        elif kind == "constant":
            decayed = jnp.asarray(peak, jnp.float32)
        else:
            raise ValueError(f"optimizer.schedule={kind!r}: allowed 'cosine', 'linear', 'constant'")
        return jnp.where(step < warmup, warm, decayed)

    return schedule


def _path_names(path: tuple) -> list[str]:
    names = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
    return names


def is_embedding(path: tuple) -> bool:
    """True for an embedding/unembedding table, judged by its parameter path names."""
    return any(any(e in name.lower() for e in EMBEDDING_NAMES) for name in _path_names(path))


def _logical_axes(leaf: Any) -> tuple | None:
    """Logical axis names of an nnx Variable, else None (a plain array has none)."""
    return variable_logical_axes(leaf) if hasattr(leaf, "get_metadata") else None


def weight_decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
    """Pytree of bools like `params` (nnx Variables -> bools): True = apply weight decay.

    Decay weight matrices only, never norm scales or biases: a parameter decays when it has >= 2
    axes besides the stacked 'layers' axis (scan_layers) and none named 'norm'. Embedding
    tables decay only when `decay_embeddings`. With nnx Variables the logical axis names decide;
    plain arrays fall back to ndim >= 2.
    """

    def decide(path: tuple, leaf: Any) -> bool:
        if _path_names(path)[-1] in BIAS_NAMES:
            return False
        axes = _logical_axes(leaf)
        if axes is not None:
            if "norm" in axes or len([a for a in axes if a != "layers"]) < 2:
                return False
        elif jnp.ndim(getattr(leaf, "value", leaf)) < 2:
            return False
        return decay_embeddings or not is_embedding(path)

    is_var = lambda x: hasattr(x, "get_metadata")
    return jax.tree_util.tree_map_with_path(decide, params, is_leaf=is_var)


def lr_multiplier_tree(params: Any, model_cfg: ModelConfig) -> Any:
    """Pytree of floats like `params` (nnx Variables or arrays -> floats): each parameter's factor
    on the learning rate, `llmjax.model.config.lr_multiplier` of the role its path name gives.

    All 1.0 under parametrization 'sp'; under 'mup' base_d_model/d_model for hidden matrices.
    """

    def decide(path: tuple, leaf: Any) -> float:
        return lr_multiplier(model_cfg, param_role(_path_names(path)))

    is_var = lambda x: hasattr(x, "get_metadata")
    return jax.tree_util.tree_map_with_path(decide, params, is_leaf=is_var)


def scale_by_lr_multipliers(multipliers: Any) -> optax.GradientTransformation:
    """Multiply each parameter's update by its entry of `multipliers` (a float pytree like the
    params); stateless, so the optimizer state has the same arrays with or without it."""

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, Any]:
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(init, update)


def make_optimizer(opt: Any, total_steps: int, decay_mask: Any = None,
                   lr_multipliers: Any = None
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
    """(optax AdamW chain, lr schedule) from the `optimizer` config section.

    Chain: clip_by_global_norm(grad_clip) (if > 0) -> adam moments -> per-parameter lr
    multipliers (`lr_multipliers`, a float pytree like the params, e.g. `lr_multiplier_tree`;
    skipped when None or all 1, so 'sp' runs are unchanged) -> decoupled weight decay on
    `decay_mask` (a bool pytree like the params; default: `weight_decay_mask` of the params,
    judged by ndim) -> scale by -lr(step).

    The multipliers scale the Adam step only, not the decay: a parameter shrinks by
    lr(step) * weight_decay per step whatever its multiplier, so the decay's relative pull (and
    its timescale) is the same at every width. This is the mup library's MuAdamW convention
    (it multiplies weight_decay by width/base_width when it divides lr by it).
    """
    schedule = learning_rate_schedule(opt, total_steps)
    parts = []
    if float(opt.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip)))
    parts.append(optax.scale_by_adam(b1=float(opt.b1), b2=float(opt.b2),
                                     eps=float(opt.eps)))
    if lr_multipliers is not None and any(m != 1.0 for m in jax.tree.leaves(lr_multipliers)):
        parts.append(scale_by_lr_multipliers(lr_multipliers))
    if float(opt.weight_decay) > 0:
        if decay_mask is None:
            decay_embeddings = bool(opt.decay_embeddings)
            decay_mask = lambda p: weight_decay_mask(p, decay_embeddings)  # noqa: E731
        parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule
