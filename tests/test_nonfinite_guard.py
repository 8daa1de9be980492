"""The train step's NaN/Inf guard covers the update: finite loss and gradients whose update
overflows the parameters (or the optimizer state) give finite=False, and with skip_nonfinite the
step keeps the old parameters and optimizer state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llmjax.model import ModelConfig, Transformer
from llmjax.train.step import TrainState, all_finite, jit_train_step, make_train_step

CFG = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=8)


def _model():
    graphdef, params, _ = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params)


def _batch():
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(4, 9), dtype=np.int32)
    return {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
            "loss_mask": jnp.ones((4, 8), jnp.float32)}


def _overflowing_sgd():
    """sign(g) * -1e38 * 10: every factor is a finite float32, the product overflows to -/+inf
    for every parameter with a nonzero gradient (a finite learning rate, a huge step)."""
    return optax.chain(optax.scale_by_sign(), optax.scale(-1e38), optax.scale(10.0))


def _overflowing_moment():
    """Leaves the parameters alone (zero update) but accumulates g * 1e38 * 1e38 in its state:
    finite params, an infinite optimizer moment."""

    def init(params):
        return {"acc": jax.tree.map(jnp.zeros_like, params), "count": jnp.zeros((), jnp.int32)}

    def update(grads, state, params=None):
        acc = jax.tree.map(lambda a, g: a + (jnp.abs(g) + 1.0) * 1e38 * 1e38, state["acc"], grads)
        return jax.tree.map(jnp.zeros_like, grads), {"acc": acc, "count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


def _run(tx, skip: bool):
    graphdef, params = _model()
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(0))
    before = jax.device_get(state)  # host copy: the jitted step donates the state's buffers
    step = make_train_step(graphdef, tx, lambda s: jnp.float32(1.0), skip_nonfinite=skip)
    # As training runs it: one jitted program, the state donated.
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    step = jit_train_step(step, jax.tree.map(lambda _: sharding, state), sharding, sharding)
    new_state, metrics = step(state, _batch())
    return before, jax.device_get(new_state), jax.device_get(metrics)


def _equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def test_all_finite():
    assert bool(all_finite({"a": jnp.ones(3), "n": jnp.int32(7), "b": (jnp.zeros(2),)}))
    assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])}))
    assert not bool(all_finite([jnp.array([jnp.nan], jnp.bfloat16)]))
    assert bool(all_finite({}))


def test_an_ordinary_step_is_finite_and_updates():
    before, after, m = _run(optax.sgd(1e-2), skip=True)
    assert bool(m["finite"]) and bool(m["params_finite"])
    assert not _equal(after.params, before.params)
    assert int(after.step) == 1


@pytest.mark.parametrize("skip", [False, True])
def test_finite_grads_with_an_overflowing_update_are_not_finite(skip):
    before, after, m = _run(_overflowing_sgd(), skip=skip)
    # What the old check looked at is fine ...
    assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) and m["grad_norm"] > 0
    # ... but the update is not, and the flag says so.
    assert not bool(m["params_finite"]) and not bool(m["finite"])
    assert int(after.step) == 1
    assert set(m) == {"loss", "z_loss", "grad_norm", "lr", "tokens", "finite", "params_finite"}
    assert all(np.shape(v) == () for v in m.values())
    if skip:
        assert _equal(after.params, before.params)
        assert _equal(after.opt_state, before.opt_state)
    else:
        assert not bool(all_finite(after.params))  # what would have been saved


def test_an_overflowing_optimizer_moment_is_not_finite_and_is_skipped():
    before, after, m = _run(_overflowing_moment(), skip=True)
    assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
    assert not bool(m["params_finite"]) and not bool(m["finite"])
    assert _equal(after.opt_state, before.opt_state)  # the infinite moment is not kept
    assert _equal(after.params, before.params)
    assert int(after.step) == 1
