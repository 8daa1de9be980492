"""Parameter and FLOP counts against the real model, hand-written formulas and XLA's own count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmjax.model import ModelConfig, Transformer
from llmjax.model.flops import FlopCounts, ParamCounts, flops_per_token, param_counts


def real_param_count(cfg: ModelConfig) -> int:
    """Sum of the leaf sizes of an actually allocated model."""
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(mlp="gelu"),
        dict(
            mlp="swiglu",
            norm="layernorm",
            positions="learned",
            tie_embeddings=False,
            n_kv_heads=2,
            scan_layers=False,
        ),
        dict(mlp="none", n_kv_heads=1),
    ],
    ids=["gelu-tied", "swiglu-untied-learned-gqa", "attention-only"],
)
def test_param_counts_match_the_real_model(overrides):
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_seq_len=12, **overrides)
    counts = param_counts(cfg)
    assert counts.total == real_param_count(cfg)
    assert counts.total == counts.non_embedding + counts.embedding


def test_param_counts_by_hand():
    v, d, n_layers, kv, dh, f, ctx = 100, 32, 3, 2, 8, 48, 20
    cfg = ModelConfig(
        vocab_size=v,
        d_model=d,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=kv,
        d_ff=f,
        max_seq_len=ctx,
        mlp="gelu",
        norm="layernorm",
        positions="learned",
        tie_embeddings=False,
    )
    attention = d * d + 2 * d * kv * dh + d * d  # q, k, v (grouped), o
    mlp = 2 * d * f
    norms = 2 * (2 * d)  # two LayerNorms (scale + bias) per block
    non_embedding = n_layers * (attention + mlp + norms) + 2 * d  # + final LayerNorm
    embedding = v * d + ctx * d + d * v  # tokens, learned positions, untied output matrix
    assert param_counts(cfg) == ParamCounts(
        total=non_embedding + embedding,
        non_embedding=non_embedding,
        embedding=embedding,
        unembedding=d * v,
    )


def test_kaplan_12_n_layers_d_model_squared():
    # Kaplan et al. 2020: N ≈ 12 n_layer d_model² for d_ff = 4 d_model (exact here, plus norms).
    d, n_layers = 64, 3
    cfg = ModelConfig(vocab_size=300, d_model=d, n_layers=n_layers, n_heads=4, mlp="gelu")
    counts = param_counts(cfg)
    assert counts.non_embedding == 12 * n_layers * d * d + (2 * n_layers + 1) * d
    assert counts.embedding == 300 * d and counts.unembedding == 0


def test_counts_need_no_allocation_llama3_70b():
    # The Llama 3 70B architecture: 70,553,706,496 parameters, far more than this machine could
    # allocate in float32, so this only passes if counting is abstract.
    cfg = ModelConfig(
        vocab_size=128256,
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        d_ff=28672,
        max_seq_len=8192,
        mlp="swiglu",
        tie_embeddings=False,
        rope_theta=500000.0,
    )
    assert param_counts(cfg).total == 70_553_706_496


def test_flops_per_token_by_hand():
    v, d, n_layers, h, kv, f, seq = 100, 32, 3, 4, 2, 48, 16
    cfg = ModelConfig(
        vocab_size=v,
        d_model=d,
        n_layers=n_layers,
        n_heads=h,
        n_kv_heads=kv,
        d_ff=f,
        max_seq_len=64,
        mlp="swiglu",
    )
    dh = d // h
    per_layer_matrices = d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * f
    matmul_params = n_layers * per_layer_matrices + d * v  # the (tied) output projection too
    # Causal attention: count the (query, key) pairs the mask lets through, per token.
    mean_context = np.tril(np.ones((seq, seq))).sum() / seq
    attention_forward = n_layers * (2 + 2) * h * dh * mean_context  # QKᵀ and probs·V
    forward = 2 * matmul_params + attention_forward
    assert flops_per_token(cfg, seq) == FlopCounts(
        forward=int(forward),
        training=int(3 * forward),
        dense_6n=6 * matmul_params,
        attention=int(3 * attention_forward),
        matmul_params=matmul_params,
    )
    # Without causal masking it would be 4 n_layers seq d_attn (Chinchilla appendix F); causal
    # is (seq + 1) / (2 seq) of that.
    full = 4 * n_layers * seq * d
    assert flops_per_token(cfg, seq).attention / 3 == pytest.approx(full * (seq + 1) / (2 * seq))
    assert flops_per_token(cfg).attention > flops_per_token(cfg, seq).attention  # max_seq_len


def test_forward_flops_agree_with_xla_cost_analysis():
    # XLA computes the full (unmasked) score matrix and counts elementwise ops too, so compare
    # with the full-attention count, within 10%. Unrolled layers: XLA counts a scan body once.
    cfg = ModelConfig(
        vocab_size=128,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        scan_layers=False,
        mlp="gelu",
    )
    batch, seq = 2, 64
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    compiled = (
        jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
        .lower(abstract_state, jax.ShapeDtypeStruct((batch, seq), jnp.int32))
        .compile()
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    xla_per_token = cost["flops"] / (batch * seq)
    counts = flops_per_token(cfg, seq)
    full_attention_forward = 4 * cfg.n_layers * seq * cfg.n_heads * cfg.head_dim
    ours = 2 * counts.matmul_params + full_attention_forward
    assert xla_per_token == pytest.approx(ours, rel=0.10)
