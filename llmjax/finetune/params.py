"""The parameters of a fine-tuning run: the model's, a classification head, LoRA adapters.

Layout of `TrainState.params` (the one place that decides it):
- plain (no head, no LoRA: pretraining, or full causal-LM fine-tuning): the model's pure dict;
- wrapped: {"model": the model's dict, "head": {"w": [d_model, num_labels], "b": [num_labels]}
  (classification), "lora": {"blocks/attn/wq": {"a": [..., d_in, r], "b": [..., r, d_out]}, ...}}.

LoRA (Hu et al. 2021): a target weight W, viewed as a matrix [d_in, d_out] (wq [d, heads,
head_dim] is [d, heads*head_dim]; wo [heads, head_dim, d] is [heads*head_dim, d]; a leading layer
axis under scan_layers stays leading), is used as W + (alpha / r) * A @ B, with A ~ N(0, 1/d_in)
and B = 0, so training starts at the init run's function. Under LoRA only "lora" and "head"
train; "model" is frozen (its gradient is stopped, and the optimizer never sees it: no Adam
moments for it). `model_params` merges the adapters into the weights: what inference, probes,
generation and export use, so a LoRA run is served like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Target name -> number of leading *input* axes of the weight after any layer axis.
_IN_AXES = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_up": 1, "w_gate": 1, "w_down": 1}
# Number of axes of each weight without the layer axis.
_NDIM = {"wq": 3, "wk": 3, "wv": 3, "wo": 3, "w_up": 2, "w_gate": 2, "w_down": 2}
HEAD_INIT_STD = 0.02


def wrapped(ft: Any) -> bool:
    """True when the params carry more than the model (a head or LoRA adapters)."""
    return ft.task == "classification" or ft.lora_rank > 0


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def lora_targets(model_params: Any, targets: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """'path/of/weight' -> shape, for every model weight whose name is in `targets`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(model_params)[0]:
        names = [_key_name(k) for k in path]
        if names[-1] in targets:
            out["/".join(names)] = tuple(leaf.shape)
    return out


def _matrix_dims(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int]:
    """(leading layer dims, d_in, d_out) of a target weight of this shape."""
    lead = shape[:len(shape) - _NDIM[name]]
    rest = shape[len(lead):]
    n_in = _IN_AXES[name]
    return lead, math.prod(rest[:n_in]), math.prod(rest[n_in:])


def init_extras(ft: Any, model_params: Any, d_model: int, key: jax.Array) -> dict[str, Any]:
    """The head and adapters of a wrapped run at init (float32), from `key`."""
    out: dict[str, Any] = {}
    head_key, lora_key = jax.random.split(key)
    if ft.task == "classification":
        out["head"] = {"w": HEAD_INIT_STD * jax.random.normal(head_key, (d_model, ft.num_labels)),
                       "b": jnp.zeros((ft.num_labels,), jnp.float32)}
    if ft.lora_rank > 0:
        adapters = {}
        targets = lora_targets(model_params, ft.lora_target_names)
        for i, (path, shape) in enumerate(sorted(targets.items())):
            lead, d_in, d_out = _matrix_dims(path.rsplit("/", 1)[-1], shape)
            a = jax.random.normal(jax.random.fold_in(lora_key, i), (*lead, d_in, ft.lora_rank))
            adapters[path] = {"a": a / jnp.sqrt(d_in),
                              "b": jnp.zeros((*lead, ft.lora_rank, d_out), jnp.float32)}
        out["lora"] = adapters
    return out


def model_params(params: Any, ft: Any, *, frozen_gradient: bool = False) -> Any:
    """The model's pure dict with LoRA merged (W + alpha/r * A @ B in W's dtype); `params`
    itself when it is plain. frozen_gradient: stop the gradient into the base weights."""
    if not wrapped(ft):
        return params
    base = params["model"]
    adapters = params.get("lora")
    if ft.lora_rank > 0 and frozen_gradient:
        base = jax.lax.stop_gradient(base)
    if not adapters:
        return base
    scale = ft.lora_alpha / ft.lora_rank

    def merge(path: tuple, w: jax.Array) -> jax.Array:
        name = "/".join(_key_name(k) for k in path)
        if name not in adapters:
            return w
        a, b = adapters[name]["a"], adapters[name]["b"]
        delta = jnp.einsum("...ir,...ro->...io", a, b) * scale
        return w + delta.reshape(w.shape).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(merge, base)


def trainable(ft: Any) -> Callable[[Any], Any]:
    """params -> the subtree the optimizer updates (all of it, or everything but "model")."""
    if ft.lora_rank > 0:
        return lambda p: {k: v for k, v in p.items() if k != "model"}
    return lambda p: p


def only_trainable(tx: optax.GradientTransformation, ft: Any) -> optax.GradientTransformation:
    """`tx` applied to the trainable subtree; the frozen model's updates are zeros, and its
    optimizer state is not allocated."""
    if ft.lora_rank == 0:
        return tx
    select = trainable(ft)

    def init(params: Any) -> Any:
        return tx.init(select(params))

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates, state = tx.update(select(grads), state,
                                   None if params is None else select(params))
        return {"model": jax.tree.map(jnp.zeros_like, grads["model"]), **updates}, state

    return optax.GradientTransformation(init, update)


def extras_decay_mask(extras: Any) -> Any:
    """Weight decay on the head's matrix only (never on biases or LoRA factors)."""
    out = {}
    if "head" in extras:
        out["head"] = {"w": True, "b": False}
    if "lora" in extras:
        out["lora"] = jax.tree.map(lambda _: False, extras["lora"])
    return out
