"""The classification task's pieces for the training loop: loss, eval step, metrics.

The head reads the model's final-normed features (`Transformer.features`) at the last non-pad
token of each row (pooling 'last'; causal attention makes it the one position that saw the
whole text) or their mean over the non-pad tokens ('mean'), in float32: logits = h W + b. The
loss is the cross-entropy summed over the global batch and divided by its rows, like the LM
loss over tokens, so sharding and microbatching do not change it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmjax.finetune.params import model_params


def class_logits(graphdef: Any, params: Any, ft: Any, batch: dict[str, jax.Array], *,
                 key: jax.Array | None = None, dropout: bool = False, training: bool = False
                 ) -> jax.Array:
    """float32 [batch, num_labels] for batch {inputs [b, s], lengths [b]}."""
    model = nnx.merge(graphdef, model_params(params, ft, frozen_gradient=training))
    h = model.features(batch["inputs"], deterministic=not dropout, rngs=key,
                       training=training).astype(jnp.float32)
    lengths = batch["lengths"]
    if ft.pooling == "mean":
        mask = (jnp.arange(h.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
        pooled = (h * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    else:
        pooled = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
    head = params["head"]
    return pooled @ head["w"].astype(jnp.float32) + head["b"].astype(jnp.float32)


def _nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, labels[:, None], axis=-1)[:, 0]


def classification_loss(graphdef: Any, ft: Any, dropout: bool) -> Callable:
    """(params, batch, key) -> (sum of NLL, 0, rows): the train step's loss_fn."""

    def loss_fn(params: Any, batch: dict[str, jax.Array], key: jax.Array | None):
        logits = class_logits(graphdef, params, ft, batch, key=key, dropout=dropout,
                              training=True)
        nll = _nll(logits, batch["labels"])
        return jnp.sum(nll), jnp.float32(0), jnp.float32(nll.shape[0])

    return loss_fn


def lm_loss_with(ft: Any, graphdef: Any, dropout: bool) -> Callable:
    """The LM loss through `model_params` (LoRA merged, base frozen)."""
    from llmjax.train.step import token_losses

    def loss_fn(params: Any, batch: dict[str, jax.Array], key: jax.Array | None):
        model = nnx.merge(graphdef, model_params(params, ft, frozen_gradient=True))
        logits = model(batch["inputs"], deterministic=not dropout, rngs=key, training=True)
        return token_losses(logits, batch["targets"], batch["loss_mask"])

    return loss_fn


def make_eval_step(graphdef: Any, ft: Any) -> Callable:
    """(params, batch) -> {predictions int32 [b], nll float32 [b]} (the host sums them)."""

    def eval_step(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        logits = class_logits(graphdef, params, ft, batch)
        return {"predictions": jnp.argmax(logits, axis=-1).astype(jnp.int32),
                "nll": _nll(logits, batch["labels"])}

    return eval_step


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> float:
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class absent from both is skipped."""
    scores = []
    for c in range(num_labels):
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def summarize(labels: np.ndarray, predictions: np.ndarray, nll: np.ndarray,
              heldout: np.ndarray, num_labels: int) -> dict[str, Any]:
    """Validation metrics with their binomial standard errors and the majority baseline."""
    n = len(labels)
    correct = predictions == labels
    acc = float(correct.mean())
    out = {"loss": float(nll.mean()), "accuracy": acc,
           "accuracy_se": float(np.sqrt(acc * (1 - acc) / max(n, 1))),
           "macro_f1": macro_f1(labels, predictions, num_labels), "examples": n,
           "majority_baseline": float(np.bincount(labels, minlength=num_labels).max() / n)}
    if heldout.any():
        for name, rows in (("heldout", heldout), ("seen", ~heldout)):
            if rows.any():
                out[f"{name}_accuracy"] = float(correct[rows].mean())
                out[f"{name}_examples"] = int(rows.sum())
    return out


def evaluate(eval_step: Callable, params: Any, batches: Sequence[dict[str, Any]],
             heldout: np.ndarray, num_labels: int) -> dict[str, Any]:
    """Runs `eval_step` over the padded validation batches (their `valid` rows only)."""
    labels, preds, nlls = [], [], []
    for b in batches:
        out = jax.device_get(eval_step(params, {k: v for k, v in b.items() if k != "valid"}))
        keep = np.asarray(b["valid"]) > 0
        labels.append(np.asarray(b["labels"])[keep])
        preds.append(np.asarray(out["predictions"])[keep])
        nlls.append(np.asarray(out["nll"])[keep])
    return summarize(np.concatenate(labels), np.concatenate(preds), np.concatenate(nlls),
                     heldout, num_labels)
