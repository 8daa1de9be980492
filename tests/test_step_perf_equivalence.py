"""The CPU fast paths compute the same thing as the plain formulation they replace.

`dense` (custom backward) == the einsum with JAX's own gradients; the CPU path of the model
(unrolled layer scan, written-out attention) == the generic path (scan loop,
jax.nn.dot_product_attention) in logits and gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmjax.model import ModelConfig, Transformer
from llmjax.model import transformer as transformer_lib
from llmjax.model.transformer import dense


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_matches_einsum_value_and_grads(dtype):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (3, 5, 8)).astype(dtype)
    w = jax.random.normal(kw, (8, 6)).astype(dtype)
    g = jax.random.normal(kg, (3, 5, 6)).astype(dtype)
    ref = lambda x, w: jnp.einsum("bsd,df->bsf", x, w)
    y, vjp = jax.vjp(dense, x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    tol = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                               rtol=tol, atol=tol)
    for a, b in zip(vjp(g), vjp_ref(g), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=tol, atol=tol * 10)


def _loss_and_grads(cfg: ModelConfig, tokens: jax.Array, training: bool):
    graphdef, params, _ = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens, training=training)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_cpu_path_matches_generic_path(mlp):
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
                      max_seq_len=16, mlp=mlp, attention="fused", scan_layers=True)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)
    assert transformer_lib._on_cpu()  # the suite runs on the CPU backend
    fast = _loss_and_grads(cfg, tokens, training=True)  # unrolled scan, written-out attention
    generic = _loss_and_grads(cfg, tokens, training=False)  # scan loop + fused attention
    np.testing.assert_allclose(fast[0], generic[0], rtol=1e-6)
    np.testing.assert_allclose(fast[1], generic[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(fast[2]), jax.tree.leaves(generic[2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
