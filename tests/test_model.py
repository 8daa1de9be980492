"""The transformer: attention paths, causality, layouts, variants, dtypes, remat, capture, sharding.

Compiles dominate the run time on CPU, so models and jitted forwards are cached per config and
each test batches its checks into as few compiled calls as it can.
"""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from llmjax.errors import UserError
from llmjax.model import (
    ModelConfig,
    Transformer,
    attention_weights,
    convert_layout,
    init_model,
    reference_attention,
)
from llmjax.model.transformer import apply_rope, rope_tables
from llmjax.sharding import (
    LOGICAL_AXIS_RULES,
    constrain,
    logical_to_spec,
    make_mesh,
    state_shardings,
)

SMALL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)
VOCAB = SMALL["vocab_size"]

# Three variants that between them cover every option of positions / norm / mlp / tying /
# layout / attention path / kv heads.
BASE = dict()  # rope, rmsnorm, swiglu, tied, scanned, fused, 4 kv heads
VARIANT_B = dict(
    positions="learned",
    norm="layernorm",
    mlp="gelu",
    tie_embeddings=False,
    scan_layers=False,
    n_kv_heads=2,
)
VARIANT_C = dict(mlp="none", attention="reference", n_kv_heads=1)


def small(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


@functools.cache
def model_for(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Shared, never mutated by tests (they build new states functionally)."""
    return init_model(cfg, seed)


@functools.cache
def graphdef_for(cfg: ModelConfig) -> nnx.GraphDef:
    return nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


@functools.cache
def forward_fn(cfg: ModelConfig):
    """jit((state, tokens) -> logits) with the training loop's split/merge pattern."""
    graphdef = graphdef_for(cfg)
    return jax.jit(lambda state, toks: nnx.merge(graphdef, state)(toks))


def forward(model: Transformer, toks: jax.Array) -> jax.Array:
    return forward_fn(model.cfg)(nnx.state(model), toks)


def tokens(batch: int = 2, seq: int = 8, seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, seq), 0, VOCAB)


def param_arrays(model: Transformer) -> dict:
    return {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ---- attention -------------------------------------------------------------------------------


def test_reference_attention_matches_fused_including_gqa():
    @jax.jit
    def both(q, k, v):
        ref, probs = reference_attention(q, k, v, 0.35)
        return ref, probs, jax.nn.dot_product_attention(q, k, v, scale=0.35, is_causal=True)

    for kv_heads in (4, 2):
        kq, kk, kv = jax.random.split(jax.random.key(kv_heads), 3)
        q = jax.random.normal(kq, (2, 9, 4, 8))
        k = jax.random.normal(kk, (2, 9, kv_heads, 8))
        v = jax.random.normal(kv, (2, 9, kv_heads, 8))
        ref, probs, fused = both(q, k, v)
        np.testing.assert_allclose(ref, fused, atol=1e-5)
        # Query 0 attends only to itself: its output is exactly v[0] of its kv head.
        group = 4 // kv_heads
        np.testing.assert_allclose(ref[:, 0, 3], v[:, 0, 3 // group], atol=1e-6)
        assert probs.shape == (2, 4, 9, 9)


def test_model_fused_and_reference_attention_agree_with_gqa():
    toks = tokens()
    fused = model_for(small(**VARIANT_B))
    ref_cfg = small(**{**VARIANT_B, "attention": "reference"})
    ref = nnx.merge(graphdef_for(ref_cfg), nnx.state(fused))  # same parameters
    np.testing.assert_allclose(forward(fused, toks), forward(ref, toks), atol=1e-5)


@pytest.mark.parametrize("variant", [BASE, VARIANT_B, VARIANT_C], ids=["base", "B", "C"])
def test_variant_is_causal_and_position_aware(variant):
    cfg = small(**variant, init_std=0.2)
    model = model_for(cfg)
    toks = tokens(batch=1, seq=10)
    t = 6
    perturbed = toks.at[:, t:].set((toks[:, t:] + 7) % VOCAB)
    swapped = toks.at[:, 0].set(toks[:, 1]).at[:, 1].set(toks[:, 0])  # toks[0] != toks[1]
    assert toks[0, 0] != toks[0, 1]
    logits = forward(model, jnp.concatenate([toks, perturbed, swapped]))
    assert logits.shape == (3, 10, VOCAB) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()
    # Causal: changing tokens >= t leaves logits < t unchanged, and does reach later logits.
    np.testing.assert_allclose(logits[0, :t], logits[1, :t], atol=1e-6)
    assert np.abs(logits[0, t:] - logits[1, t:]).max() > 1e-4
    # Positions: without them the last position sees a bag of tokens and a swap changes nothing.
    assert np.abs(logits[0, -1] - logits[2, -1]).max() > 1e-4

    names = {path[-1] for path in param_arrays(model)}
    paths = set(param_arrays(model))
    assert (("pos_embed",) in paths) == (cfg.positions == "learned")
    assert (("unembed",) in paths) == (not cfg.tie_embeddings)
    assert ("w_gate" in names) == (cfg.mlp == "swiglu")
    assert ("w_down" in names) == (cfg.mlp != "none")
    assert ("bias" in names) == (cfg.norm == "layernorm")
    wk = next(v for p, v in param_arrays(model).items() if p[-1] == "wk")
    assert wk.shape[-2] == cfg.kv_heads


def test_tied_embedding_is_the_output_matrix():
    model = model_for(small())
    toks = jnp.where(tokens() == 3, 4, tokens())  # token 3 never appears in the input
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    embed = flat[("embed",)]
    flat[("embed",)] = embed.replace(embed.get_value().at[3].multiply(2.0))
    scaled_model = nnx.merge(graphdef, nnx.from_flat_state(flat))
    base, scaled = forward(model, toks), forward(scaled_model, toks)
    # Only the logit of token 3 changes, and it doubles.
    np.testing.assert_allclose(scaled[..., 3], 2 * base[..., 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled[..., :3], base[..., :3], atol=1e-6)


def test_init_scales_follow_the_parametrization():
    cfg = small(n_layers=8, mlp="gelu", tie_embeddings=False)
    params = param_arrays(model_for(cfg))
    for path in [("embed",), ("unembed",), ("blocks", "attn", "wq"), ("blocks", "mlp", "w_up")]:
        np.testing.assert_allclose(params[path].std(), 0.02, rtol=0.08)
    # GPT-2: residual-writing matrices shrink by 1/sqrt(2 * n_layers) = 1/4.
    for path in [("blocks", "attn", "wo"), ("blocks", "mlp", "w_down")]:
        np.testing.assert_allclose(params[path].std(), 0.02 / 4, rtol=0.05)
    np.testing.assert_array_equal(params[("blocks", "attn_norm", "scale")], 1.0)


# ---- layouts, dtypes, remat, dropout ------------------------------------------------------------


def test_scanned_and_unrolled_agree_from_the_same_params():
    unrolled = model_for(small(**VARIANT_B))
    scanned = convert_layout(unrolled, scan_layers=True)
    assert scanned.cfg.scan_layers
    p_un, p_sc = param_arrays(unrolled), param_arrays(scanned)
    np.testing.assert_array_equal(
        p_sc[("blocks", "attn", "wq")][1], p_un[("blocks", 1, "attn", "wq")]
    )
    toks = tokens()
    np.testing.assert_allclose(forward(scanned, toks), forward(unrolled, toks), atol=1e-6)
    back = convert_layout(scanned, scan_layers=False)
    for path, value in param_arrays(back).items():
        np.testing.assert_array_equal(value, p_un[path])
    # The same seed also gives the same parameters in either layout.
    fresh = param_arrays(model_for(small(**{**VARIANT_B, "scan_layers": True})))
    np.testing.assert_array_equal(fresh[("blocks", "mlp", "w_up")], p_sc[("blocks", "mlp", "w_up")])


def test_scanned_trace_does_not_grow_with_depth():
    def n_equations(n_layers: int) -> int:
        cfg = small(n_layers=n_layers)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
        jaxpr = jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens())
        assert any(eqn.primitive.name == "scan" for eqn in jaxpr.jaxpr.eqns)
        return len(jaxpr.jaxpr.eqns)

    assert n_equations(2) == n_equations(6)


def test_bf16_compute_is_close_to_fp32():
    toks = tokens()
    fp32 = forward(model_for(small()), toks)
    bf16_model = model_for(small(compute_dtype="bfloat16"))
    bf16 = forward(bf16_model, toks)
    assert bf16.dtype == jnp.float32  # logits always float32
    assert param_arrays(bf16_model)[("embed",)].dtype == jnp.float32  # params in param_dtype
    assert 0 < np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()
    bf16_params = init_model(small(param_dtype="bfloat16", n_layers=1), seed=0)
    assert param_arrays(bf16_params)[("embed",)].dtype == jnp.bfloat16


def _grads(cfg: ModelConfig, state: nnx.State, toks: jax.Array):
    graphdef = graphdef_for(cfg)

    def loss(s):
        logits = nnx.merge(graphdef, s)(toks[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()

    return jax.jit(jax.grad(loss))(state)


@pytest.mark.parametrize(("scan_layers", "policies"), [(True, ("dots",)), (False, ("full",))])
def test_remat_policies_give_the_same_gradients(scan_layers, policies):
    toks = tokens(seq=9)
    state = nnx.state(model_for(small(scan_layers=scan_layers)))
    reference = jax.tree.leaves(_grads(small(scan_layers=scan_layers), state, toks))
    assert max(float(jnp.abs(x).max()) for x in reference) > 0
    for remat in policies:
        grads = jax.tree.leaves(_grads(small(scan_layers=scan_layers, remat=remat), state, toks))
        for a, b in zip(reference, grads, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-7)


def test_dropout_uses_the_key_and_is_off_when_deterministic():
    cfg = small(dropout=0.2)
    graphdef, state = nnx.split(model_for(cfg))
    toks = tokens()

    @jax.jit
    def run(s, key):
        model = nnx.merge(graphdef, s)
        return (
            model(toks, deterministic=False, rngs=key),
            model(toks, deterministic=False, rngs=nnx.Rngs(dropout=key)),
            model(toks),
        )

    a, a_rngs, clean = run(state, jax.random.key(1))
    b, _, _ = run(state, jax.random.key(1))
    c, _, _ = run(state, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4 and np.abs(a - clean).max() > 1e-4
    assert np.isfinite(a_rngs).all()
    # deterministic (the default) is exactly the dropout-free model with the same parameters
    np.testing.assert_allclose(clean, forward(model_for(small()), toks), atol=1e-6)
    with pytest.raises(ValueError, match="rngs"):
        jax.eval_shape(lambda s: nnx.merge(graphdef, s)(toks, deterministic=False), state)


# ---- attention capture -------------------------------------------------------------------------


def test_attention_weights_are_causal_softmax_rows_in_both_layouts():
    cfg = small(**VARIANT_B)
    unrolled = model_for(cfg)
    scanned = convert_layout(unrolled, scan_layers=True)
    toks = tokens(seq=7)

    def probs_fn(model):
        graphdef = nnx.graphdef(model)
        return jax.jit(lambda s, t: attention_weights(nnx.merge(graphdef, s), t))

    probs = probs_fn(unrolled)(nnx.state(unrolled), toks)
    assert probs.shape == (2, 2, 4, 7, 7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(jnp.triu(probs, k=1), 0.0)
    assert (jnp.diagonal(probs, axis1=-2, axis2=-1) > 0).all()
    np.testing.assert_allclose(probs_fn(scanned)(nnx.state(scanned), toks), probs, atol=1e-6)
    assert len(nnx.state(unrolled, nnx.Intermediate)) == 0  # nothing is left on the model

    # Layer 0 by hand: softmax(q kᵀ / sqrt(head_dim)) after LayerNorm, learned positions, GQA.
    p = param_arrays(unrolled)
    x = p[("embed",)][toks] + p[("pos_embed",)][:7]
    x = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + cfg.norm_eps)
    q = jnp.einsum("bsd,dhk->bshk", x, p[("blocks", 0, "attn", "wq")])
    k = jnp.repeat(jnp.einsum("bsd,dhk->bshk", x, p[("blocks", 0, "attn", "wk")]), 2, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.head_dim)
    scores = jnp.where(jnp.tril(jnp.ones((7, 7), bool)), scores, -jnp.inf)
    np.testing.assert_allclose(probs[0], jax.nn.softmax(scores, -1), atol=1e-5)


def test_plain_sow_with_scan_stacks_along_layers():
    graphdef, state = nnx.split(model_for(small()))

    @jax.jit
    def sown(s, toks):
        model = nnx.merge(graphdef, s)
        model(toks, capture_attention=True)
        return nnx.state(model, nnx.Intermediate)

    with warnings.catch_warnings():  # flax 0.12 prefers nnx.capture (attention_weights uses it)
        warnings.simplefilter("ignore", DeprecationWarning)
        ((path, var),) = nnx.to_flat_state(sown(state, tokens(seq=5)))
    assert path[-1] == "attention_weights"
    assert var.get_value()[0].shape == (2, 2, 4, 5, 5)


def test_rope_rotates_pairs_by_position():
    sin, cos = rope_tables(3, 4, 10000.0)
    x = jnp.ones((1, 3, 1, 4))
    out = apply_rope(x, sin, cos)
    np.testing.assert_allclose(out[0, 0, 0], [1, 1, 1, 1], atol=1e-6)  # position 0: no rotation
    # position 1, frequency 0 (angle 1 rad): (1, 1) -> (cos1 - sin1, sin1 + cos1)
    np.testing.assert_allclose(out[0, 1, 0, 0], np.cos(1) - np.sin(1), atol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0, 2], np.sin(1) + np.cos(1), atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), 2.0, atol=1e-5)  # a rotation


# ---- config validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_modle": 32}, "model.d_modle"),
        ({"d_model": "32"}, "model.d_model"),
        ({"d_model": 30}, "model.d_model"),
        ({"n_kv_heads": 3}, "model.n_kv_heads"),
        ({"positions": "alibi"}, "model.positions"),
        ({"norm": "batchnorm"}, "model.norm"),
        ({"mlp": "relu"}, "model.mlp"),
        ({"remat": "some"}, "model.remat"),
        ({"attention": "flash"}, "model.attention"),
        ({"param_dtype": "float8"}, "model.param_dtype"),
        ({"compute_dtype": "int8"}, "model.compute_dtype"),
        ({"d_model": 36, "n_heads": 4, "positions": "rope"}, "model.positions"),
        ({"tie_embeddings": 1}, "model.tie_embeddings"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"n_layers": 0}, "model.n_layers"),
        ({"parametrization": "ntk"}, "model.parametrization"),
    ],
)
def test_from_dict_rejects_bad_fields_with_one_line(overrides, field):
    with pytest.raises(UserError) as e:
        ModelConfig.from_dict({**SMALL, **overrides})
    assert str(e.value).startswith((field + ":", field + "="))
    assert "\n" not in str(e.value)


def test_from_dict_accepts_config_dicts_and_round_trips():
    cfg = ModelConfig.from_dict(ml_collections.ConfigDict({**SMALL, "dropout": 0, "d_ff": None}))
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert small(n_kv_heads=None).kv_heads == 4
    assert small(mlp="gelu").ff_dim == 128 and small(mlp="swiglu").ff_dim == 96
    assert small(mlp="gelu", d_ff=40).ff_dim == 40 and small(mlp="none").ff_dim == 0
    # learned positions allow an odd head_dim
    assert ModelConfig.from_dict({**SMALL, "d_model": 36, "positions": "learned"}).head_dim == 9
    with pytest.raises(UserError, match="model.n_heads"):
        dataclasses.replace(small(), n_heads=0)  # direct construction validates too


# ---- sharding ----------------------------------------------------------------------------------


def test_make_mesh_fills_and_rejects_mismatches():
    assert jax.device_count() == 4
    assert dict(make_mesh(-1, 2, 1).shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    assert dict(make_mesh(1, 1, -1).shape) == {"data": 1, "fsdp": 1, "tensor": 4}
    for sizes in [(2, 2, 2), (3, -1, 1), (-1, -1, 1), (0, 4, 1)]:
        with pytest.raises(UserError, match=r"^mesh") as e:
            make_mesh(*sizes)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="the 4 devices"):
        make_mesh(2, 2, 2)


def test_logical_rules_and_constrain_without_mesh():
    rules = dict(LOGICAL_AXIS_RULES)
    assert rules["batch"] == ("data", "fsdp") and rules["embed"] == "fsdp"
    assert logical_to_spec(("batch", "length", "act_embed")) == P(("data", "fsdp"))
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_spec(("layers", "heads", "head_dim", "embed")) == P(
        None, "tensor", None, "fsdp"
    )
    # A mesh axis is never used twice, and axes that do not divide a dimension are dropped.
    assert logical_to_spec(("batch", "embed")) == P(("data", "fsdp"))
    mesh = make_mesh(1, 1, 4)
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh) == P()
    assert logical_to_spec(("embed", "heads", "head_dim"), (32, 4, 8), mesh) == P(None, "tensor")
    x = jnp.ones((4, 3))
    assert constrain(x, ("batch", "act_embed")) is x  # no mesh active: a no-op


@pytest.mark.parametrize(
    ("data", "fsdp", "tensor", "variant"),
    [(2, 2, 1, BASE), (2, 1, 2, VARIANT_B)],
    ids=["data2-fsdp2-scanned", "data2-tensor2-unrolled"],
)
def test_sharded_forward_matches_single_device(data, fsdp, tensor, variant):
    cfg = small(**variant)
    toks = tokens(batch=4)
    expected = forward(model_for(cfg), toks)

    mesh = make_mesh(data, fsdp, tensor)
    model = init_model(cfg, seed=0, mesh=mesh)
    graphdef, state = nnx.split(model)
    shardings = state_shardings(mesh, state)
    with jax.set_mesh(mesh):
        run = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t), in_shardings=(shardings, None))
        logits = run(state, toks)
    np.testing.assert_allclose(logits, expected, atol=1e-5)

    # Parameters really are sharded as LOGICAL_AXIS_RULES says.
    layer = ("blocks",) if cfg.scan_layers else ("blocks", 0)
    lead = (None,) if cfg.scan_layers else ()  # the 'layers' axis is replicated
    fs = "fsdp" if fsdp > 1 else None
    tp = "tensor" if tensor > 1 else None
    specs = {path: var.get_value().sharding.spec for path, var in nnx.to_flat_state(state)}

    def expect(*axes):
        axes = list(axes)
        while axes and axes[-1] is None:
            axes.pop()
        return P(*axes)

    assert specs[("embed",)] == expect(tp, fs)
    assert specs[(*layer, "attn", "wq")] == expect(*lead, fs, tp)
    assert specs[(*layer, "attn", "wk")] == expect(*lead, fs, tp if cfg.kv_heads > 1 else None)
    assert specs[(*layer, "attn", "wo")] == expect(*lead, tp, None, fs)
    assert specs[(*layer, "mlp", "w_down")] == expect(*lead, tp, fs)
    assert specs[(*layer, "attn_norm", "scale")] == P()
    if not cfg.tie_embeddings:
        assert specs[("unembed",)] == expect(fs, tp)
    assert logits.sharding.spec == expect(("data", "fsdp") if fsdp > 1 else "data", None, tp)


def test_state_shardings_cover_optimizer_state():
    mesh = make_mesh(1, 2, 2)
    abstract = nnx.eval_shape(lambda: Transformer(small(), rngs=nnx.Rngs(0)))
    _, params = nnx.split(abstract, nnx.Param)
    opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
    shardings = state_shardings(mesh, opt_state)
    assert shardings[0].mu["blocks"]["mlp"]["w_up"].get_value().spec == P(None, "fsdp", "tensor")
    assert shardings[0].count.spec == P()  # plain leaves are replicated
    assert jax.tree.structure(shardings) == jax.tree.structure(opt_state)
