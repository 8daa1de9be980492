"""muP: init scales, attention and output multipliers, per-parameter Adam learning rates, the
coordinate check (mean |activation| flat in width under muP, growing under SP), and that SP
training is unchanged by the multiplier code path.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llmjax.config import OptimizerConfig, load_config, parse_experiment
from llmjax.errors import UserError
from llmjax.model import ModelConfig, Transformer
from llmjax.model.config import attention_scale, init_std, logit_multiplier, lr_multiplier
from llmjax.train.optimizer import (
    learning_rate_schedule,
    lr_multiplier_tree,
    make_optimizer,
    weight_decay_mask,
)
from llmjax.train.step import TrainState, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
_spec = importlib.util.spec_from_file_location(
    "coord_check", os.path.join(REPO, "experiments", "bench", "coord_check.py"))
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)

# Compiles dominate on CPU, so the tests share two shapes. SMALL: the tiny default model (rope,
# RMSNorm, SwiGLU, tied), 32 wide as the coordinate check's base. WIDE: every parameter name of
# the model appears (untied readout, learned positions, LayerNorm biases, SwiGLU gate), 4x the
# muP base width 32.
SMALL = ModelConfig(d_model=32, vocab_size=259, n_layers=2, n_heads=4, max_seq_len=16)
WIDE = ModelConfig(d_model=128, vocab_size=259, n_layers=2, n_heads=4, max_seq_len=16,
                   tie_embeddings=False, positions="learned", norm="layernorm", mlp="swiglu",
                   parametrization="mup", mup_base_d_model=32, mup_base_d_head=8)
HIDDEN = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}


def _flat(tree) -> dict[str, object]:
    """'blocks/attn/wq' -> leaf, for a pure dict or an nnx.State of floats."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
    return out


# ---------------------------------------------------------------------------- pure functions


def test_parametrization_functions_on_known_shapes():
    sp = ModelConfig(d_model=256, n_heads=4, n_layers=2)  # head_dim 64
    # Width 64 -> 256 with 4 heads: m = 4, head_dim 16 -> 64.
    mup = dataclasses.replace(sp, parametrization="mup", mup_base_d_model=64, mup_base_d_head=16)
    assert attention_scale(sp) == 1 / 8
    assert attention_scale(mup) == pytest.approx(math.sqrt(16) / 64)  # = 1/16, muP's 1/d_head
    assert logit_multiplier(sp) == 1.0 and logit_multiplier(mup) == 0.25
    hidden_roles = ("query", "in", "out")
    for role in ("embed", "pos_embed", "query", "in", "out", "unembed", "norm"):
        assert lr_multiplier(sp, role) == 1.0
        assert lr_multiplier(mup, role) == (0.25 if role in hidden_roles else 1.0)
    # sp: GPT-2's 0.02, residual-writing matrices / sqrt(2 * n_layers); mup: hidden / sqrt(m).
    assert [init_std(sp, r) for r in ("embed", "in", "out", "unembed")] == [0.02, 0.02, 0.01, 0.02]
    assert init_std(mup, "in") == pytest.approx(0.01) and init_std(mup, "query") == init_std(
        mup, "in")
    assert init_std(mup, "out") == pytest.approx(0.005)
    assert init_std(mup, "embed") == 0.02 and init_std(mup, "unembed") == 0.02
    zero = dataclasses.replace(mup, mup_zero_init=True)
    assert init_std(zero, "query") == 0.0 and init_std(zero, "unembed") == 0.0
    assert init_std(zero, "in") == pytest.approx(0.01)
    # A sweep that scales n_heads at fixed head_dim 64: base head_dim 64, and the scale is
    # 1/sqrt(64) at every width (1/head_dim times a constant).
    fixed_dh = dataclasses.replace(mup, mup_base_d_head=64)
    assert attention_scale(fixed_dh) == 1 / 8
    assert attention_scale(dataclasses.replace(fixed_dh, d_model=1024, n_heads=16)) == 1 / 8


@pytest.mark.parametrize("scan_layers", [True, False])
def test_lr_multipliers_and_init_stds_on_the_real_model(scan_layers):
    cfg = dataclasses.replace(WIDE, scan_layers=scan_layers)  # m = 128 / 32 = 4
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    mults = _flat(nnx.to_pure_dict(lr_multiplier_tree(params, cfg)))
    # The same tree from the pure dict the train step carries.
    assert mults == _flat(lr_multiplier_tree(nnx.to_pure_dict(params), cfg))
    names = {k.split("/")[-1] for k in mults}
    assert names == HIDDEN | {"embed", "pos_embed", "unembed", "scale", "bias"}
    for key, m in mults.items():
        assert m == (0.25 if key.split("/")[-1] in HIDDEN else 1.0), key
    sp_cfg = dataclasses.replace(cfg, parametrization="sp")
    assert set(jax.tree.leaves(lr_multiplier_tree(params, sp_cfg))) == {1.0}

    # Measured init stds: 0.02 * sqrt(32/128) for readers, / sqrt(4 branches) more for writers.
    expected = {"wq": 0.01, "wk": 0.01, "wv": 0.01, "w_gate": 0.01, "w_up": 0.01,
                "wo": 0.005, "w_down": 0.005, "embed": 0.02, "pos_embed": 0.02, "unembed": 0.02}
    for key, value in _flat(nnx.to_pure_dict(params)).items():
        name = key.split("/")[-1]
        if name in expected:
            assert float(jnp.std(value)) == pytest.approx(expected[name], rel=0.05), key


def _logits(model: Transformer, tokens: jax.Array) -> jax.Array:
    """model(tokens), jitted (one compile is cheaper than the eager op-by-op path on CPU)."""
    graphdef, params = nnx.split(model)
    return jax.jit(lambda p: nnx.merge(graphdef, p)(tokens))(params)


def test_zero_init_query_and_readout():
    cfg = dataclasses.replace(WIDE, mup_zero_init=True)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    params = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert not np.any(np.asarray(params["blocks/attn/wq"]))
    assert not np.any(np.asarray(params["unembed"]))
    assert float(jnp.std(params["blocks/attn/wk"])) > 0.01
    # Zero readout: every logit is 0 at init (the loss starts at exactly log(vocab)).
    assert not np.any(np.asarray(_logits(model, jnp.zeros((1, 8), jnp.int32))))


# ---------------------------------------------------------------------------- optimizer


def _opt(weight_decay: float = 0.0, grad_clip: float = 0.0) -> OptimizerConfig:
    return OptimizerConfig(lr=0.1, warmup_steps=0, schedule="constant", min_lr_ratio=1.0,
                           b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay,
                           grad_clip=grad_clip, decay_embeddings=False)


def test_multipliers_scale_the_adam_step_but_not_the_weight_decay():
    cfg = WIDE
    params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1e-3, p.shape), p.dtype), params)
    mask = weight_decay_mask(params)
    updates = {}
    for name, mults in (("mup", lr_multiplier_tree(params, cfg)), ("none", None)):
        tx, _ = make_optimizer(_opt(weight_decay=0.1), 10, mask, mults)
        updates[name] = jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p)[0])(grads, params)
    flat_mask, flat_params = _flat(mask), _flat(params)
    for key, u in _flat(updates["mup"]).items():
        decay = -0.1 * 0.1 * flat_params[key] if flat_mask[key] else 0.0  # -lr * wd * theta
        adam_mup, adam_none = u - decay, _flat(updates["none"])[key] - decay
        factor = 0.25 if key.split("/")[-1] in HIDDEN else 1.0
        np.testing.assert_allclose(adam_mup, factor * adam_none, rtol=1e-5, atol=1e-9)
        assert float(jnp.max(jnp.abs(adam_none))) > 0.05  # Adam's first step is ~lr per entry


def _train_losses(cfg: ModelConfig, tx: optax.GradientTransformation, schedule, steps: int = 3):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    step = jax.jit(make_train_step(graphdef, tx, schedule))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(0))
    batch = cc.fixed_batch(4, cfg.max_seq_len, 0)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state


def test_sp_training_is_unchanged_by_the_multiplier_path():
    """SP + lr_multiplier_tree trains bitwise like the AdamW chain the optimizer had before muP."""
    cfg = SMALL
    params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    opt = _opt(weight_decay=0.1, grad_clip=1.0)
    mask = weight_decay_mask(params)
    tx, schedule = make_optimizer(opt, 3, mask, lr_multiplier_tree(params, cfg))
    before = optax.chain(  # make_optimizer as it was: clip -> adam -> decay -> -lr
        optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-8),
        optax.add_decayed_weights(0.1, mask=mask),
        optax.scale_by_learning_rate(learning_rate_schedule(opt, 3)))
    losses, state = _train_losses(cfg, tx, schedule)
    ref_losses, ref_state = _train_losses(cfg, before, schedule)
    assert losses == ref_losses and losses[-1] < losses[0]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                     state.params, ref_state.params))
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(ref_state.opt_state)


def test_mup_at_its_base_width_is_sp():
    """Same init, same logits, same optimizer when d_model == mup_base_d_model."""
    sp = SMALL  # head_dim 8: sqrt(8)/8 != 1/sqrt(8) in floats, the scale must still match
    mup = dataclasses.replace(sp, parametrization="mup", mup_base_d_model=32, mup_base_d_head=8)
    tokens = cc.fixed_batch(2, 16, 1)["inputs"]
    models = [Transformer(c, rngs=nnx.Rngs(3)) for c in (sp, mup)]
    p_sp, p_mup = (nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in models)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p_sp, p_mup))
    assert bool(jnp.array_equal(_logits(models[0], tokens), _logits(models[1], tokens)))
    # All multipliers 1: make_optimizer builds the very chain sp gets (tested bitwise above).
    assert set(jax.tree.leaves(lr_multiplier_tree(p_mup, mup))) == {1.0}
    # ... and not at another width: the same base, twice as wide, differs from sp.
    wide = dataclasses.replace(mup, d_model=64)
    assert logit_multiplier(wide) == 0.5 and init_std(wide, "in") < init_std(sp, "in")


# ---------------------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(UserError, match="model.mup_base_d_model: required"):
        ModelConfig(parametrization="mup")
    with pytest.raises(UserError, match="model.mup_base_d_model: must be a positive"):
        ModelConfig(parametrization="mup", mup_base_d_model=0, mup_base_d_head=16)
    with pytest.raises(UserError, match="model.mup_base_d_head: required"):
        ModelConfig(parametrization="mup", mup_base_d_model=64)
    with pytest.raises(UserError, match="model.mup_base_d_head: must be a positive"):
        ModelConfig(parametrization="mup", mup_base_d_model=64, mup_base_d_head=-16)
    ModelConfig(parametrization="mup", mup_base_d_model=64, mup_base_d_head=16)
    ModelConfig(mup_base_d_model=64)  # allowed, and ignored, under sp
    with pytest.raises(UserError, match="model.parametrization: 'umup' is not one of sp, mup"):
        ModelConfig(parametrization="umup")
    with pytest.raises(UserError, match="model.mup_zero_init=1: wrong type; allowed: true/false"):
        ModelConfig.from_dict({"mup_zero_init": 1})
    # Through the experiment config: the keys exist, and a forgotten base shape is one line.
    config = load_config(TINY, ["model.parametrization=mup"])
    with pytest.raises(UserError, match="model.mup_base_d_model: required"):
        parse_experiment(config, 1)
    config = load_config(TINY, ["model.parametrization=mup", "model.mup_base_d_model=32"])
    with pytest.raises(UserError, match="model.mup_base_d_head: required"):
        parse_experiment(config, 1)
    config = load_config(TINY, ["model.parametrization=mup", "model.mup_base_d_model=32",
                                "model.mup_base_d_head=8", "model.mup_zero_init=True"])
    parse_experiment(config, 1)


# ---------------------------------------------------------------------------- coordinate check

CC_NARROW, CC_WIDE = 32, 256  # base width = CC_NARROW; 4 heads, so head_dim 8 -> 64
STEPS, LR = 8, 1e-2
HIDDEN_ROWS = ("attn0", "mlp0", "block0", "attn1", "mlp1", "block1")


@pytest.fixture(scope="module")
def coords():
    """Row -> mean |activation| after STEPS Adam steps, per (parametrization, width) run."""

    def run(parametrization: str, width: int, **kwargs) -> dict[str, float]:
        cfg = cc.make_config(parametrization, width, CC_NARROW, seq_len=16)
        history = cc.measure(cfg, steps=STEPS, lr=LR, batch=8, **kwargs)
        return {row: values[-1] for row, values in history.items()}

    return {
        "narrow": run("sp", CC_NARROW),  # muP at its base width is SP (test above)
        "sp": run("sp", CC_WIDE),
        "mup": run("mup", CC_WIDE),
        "mup_without_lr_multipliers": run("mup", CC_WIDE, use_lr_multipliers=False),
    }


def _growth(coords: dict, wide: str) -> dict[str, float]:
    return {row: coords[wide][row] / coords["narrow"][row] for row in coords["narrow"]}


def test_coordinate_check_flat_under_mup(coords):
    growth = _growth(coords, "mup")
    assert set(growth) == {"embed", *HIDDEN_ROWS, "logits"}
    # Measured 0.69 .. 1.09 over init seeds 0-4. Breaking muP pushes some row past 1.6: without
    # the output multiplier the logits grow 2.4x, with sp's init stds attn1 grows 3.8x.
    for row, g in growth.items():
        assert 1 / 2 < g < 1.6, (row, growth)


def test_coordinate_check_grows_under_sp(coords):
    growth = _growth(coords, "sp")
    for row in HIDDEN_ROWS:  # measured 94 .. 270 over two seeds
        assert growth[row] > 20, (row, growth)
    assert growth["logits"] > 2.5, growth  # measured 3.3 .. 3.9


def test_coordinate_check_fails_without_the_lr_multipliers(coords):
    """muP init and multipliers alone are not enough: Adam's per-entry steps must shrink too."""
    growth = _growth(coords, "mup_without_lr_multipliers")
    for row in HIDDEN_ROWS:  # measured 115 .. 370 over two seeds
        assert growth[row] > 20, (row, growth)
