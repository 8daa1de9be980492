"""Training: optimizer, loss, step, NaN, outputs, sharded == single device, tiny learns."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llmjax.config import OptimizerConfig, load_config, parse_experiment
from llmjax.data.pipeline import get_data_tokenizer
from llmjax.train.loop import TrainingDiverged, build, compile_train_step, train
from llmjax.train.metrics import read_metrics
from llmjax.train.optimizer import learning_rate_schedule
from llmjax.train.step import token_losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _tok(config):
    return get_data_tokenizer(parse_experiment(config).data)


def tiny(data_dir: str, *overrides: str):
    return load_config(TINY, [f"data.data_dir={data_dir}", *overrides])


# ---------------------------------------------------------------------------- pure pieces


def test_schedule_warmup_then_cosine_to_min_ratio():
    opt = OptimizerConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    lr = learning_rate_schedule(opt, total_steps=110)
    assert float(lr(0)) == pytest.approx(0.1)  # first update: lr/warmup, never 0
    assert float(lr(9)) == pytest.approx(1.0)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(lr(110)) == pytest.approx(0.1)
    assert float(lr(500)) == pytest.approx(0.1)


def test_schedule_linear_and_constant():
    base = {"lr": 2.0, "warmup_steps": 0, "min_lr_ratio": 0.0}
    linear = learning_rate_schedule(OptimizerConfig(**base, schedule="linear"), total_steps=100)
    assert [float(linear(s)) for s in (0, 50, 100)] == pytest.approx([2.0, 1.0, 0.0])
    const = learning_rate_schedule(OptimizerConfig(**base, schedule="constant"),
                                   total_steps=100)
    assert float(const(99)) == pytest.approx(2.0)


def test_token_losses_match_optax_cross_entropy():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 5, 11)) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    nll, zsq, count = token_losses(logits, targets, mask)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    assert float(count) == 8
    assert float(nll) == pytest.approx(float(jnp.sum(ref * mask)), rel=1e-6)
    lse = jax.scipy.special.logsumexp(logits, axis=-1)
    assert float(zsq) == pytest.approx(float(jnp.sum(lse**2 * mask)), rel=1e-6)


def _flat(tree) -> dict[str, object]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("scan_layers", [True, False])
def test_weight_decay_mask_on_the_real_model(data_dir, scan_layers):
    config = tiny(data_dir, "model.norm=layernorm", "model.tie_embeddings=False",
                  f"model.scan_layers={scan_layers}")
    setup = build(parse_experiment(config), _tok(config), jax.devices()[:1])
    mask = _flat(setup.decay_mask)
    assert set(mask) == set(_flat(setup.abstract_state.params))
    assert mask["embed"] is False and mask["unembed"] is False
    norms = [k for k in mask if "norm" in k]  # scales and biases, stacked [layers, d] or not
    assert len(norms) >= 6 and not any(mask[k] for k in norms)
    matrices = [k for k in mask if k.startswith("blocks/") and "norm" not in k]
    assert len(matrices) >= 7 and all(mask[k] for k in matrices)
    config = tiny(data_dir, "optimizer.decay_embeddings=True")
    setup = build(parse_experiment(config), _tok(config), jax.devices()[:1])
    assert setup.decay_mask["embed"] is True


# ---------------------------------------------------------------------------- the step


def _batch(config, setup, seed=0):
    rng = np.random.default_rng(seed)
    b, seq = config.data.batch_size, config.data.seq_len
    tokens = rng.integers(0, 256, (b, seq + 1)).astype(np.int32)
    mask = np.ones((b, seq), np.float32)
    mask[0, seq // 2:] = 0.0
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}
    return {k: jax.device_put(v, setup.batch_sharding) for k, v in host.items()}


def test_microbatches_give_the_same_update(data_dir):
    results = []
    for mb in (1, 4):
        config = tiny(data_dir, f"microbatches={mb}")
        setup = build(parse_experiment(config), _tok(config), jax.devices()[:1])
        step = compile_train_step(setup, parse_experiment(config))
        state, metrics = step(setup.init_fn(), _batch(config, setup))
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    (m1, p1), (m4, p4) = results
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
    assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-4)
    assert float(m1["tokens"]) == float(m4["tokens"]) == 16 * 64 - 32
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        # Adam normalises each update to ~lr, so tiny gradients amplify summation-order noise.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_training_applies_mup_learning_rate_multipliers(data_dir, parametrization):
    # Adam's first update is lr_1 * sign(g) per element, so max |change| reads the per-parameter
    # learning rate: hidden matrices get lr / m under muP (m = width / base width = 2), vectors lr.
    config = tiny(data_dir, f"model.parametrization={parametrization}", "model.d_model=128",
                  "model.mup_base_d_model=64", "model.mup_base_d_head=32",
                  "optimizer.weight_decay=0.0")
    setup = build(parse_experiment(config), _tok(config), jax.devices()[:1])
    step = compile_train_step(setup, parse_experiment(config))
    state0 = setup.init_fn()
    before = jax.device_get(state0.params)
    state1, _ = step(state0, _batch(config, setup))
    after = jax.device_get(state1.params)
    blocks = lambda p: p["blocks"]
    change = lambda f: float(np.max(np.abs(f(after) - f(before))))
    hidden = change(lambda p: blocks(p)["mlp"]["w_up"])
    vector = change(lambda p: blocks(p)["attn_norm"]["scale"])
    expected = 0.5 if parametrization == "mup" else 1.0
    assert hidden / vector == pytest.approx(expected, rel=1e-3)


def test_nan_stops_the_run_naming_the_step(data_dir, tmp_path):
    config = tiny(data_dir, "steps=6", "optimizer.lr=1e30", "optimizer.warmup_steps=0",
                  "checkpoint_every=1", "eval_every=0", "log_every=1")
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as info:
        train(config, str(tmp_path), progress=False, devices=jax.devices()[:1])
    bad = int(info.value.args[0].split("at step ")[1].split()[0])
    assert bad >= 2 and f"last good checkpoint: step {bad - 1}" in str(info.value)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps and max(steps) == bad - 1  # the diverged state is never saved


def test_nan_skip_mode_leaves_the_parameters_unchanged(data_dir, tmp_path):
    config = tiny(data_dir, "steps=5", "optimizer.lr=1e30", "optimizer.warmup_steps=0",
                  "checkpoint_every=0", "eval_every=0", "log_every=1", "on_nan=skip")
    result = train(config, str(tmp_path), progress=False, return_state=True,
                   devices=jax.devices()[:1])
    assert result.step == 5
    skipped = [r["step"] for r in read_metrics(str(tmp_path), kind="skip")]
    assert skipped and skipped == list(range(skipped[0], 6))
    # Every later update was skipped, so the final params are finite (the step-1 params).
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(result.state.params))


def test_nan_skip_mode_stops_after_max_skips_in_a_row(data_dir, tmp_path):
    config = tiny(data_dir, "steps=8", "optimizer.lr=1e30", "optimizer.warmup_steps=0",
                  "checkpoint_every=0", "eval_every=0", "log_every=1", "on_nan=skip",
                  "max_skips=2")
    with pytest.raises(TrainingDiverged, match="2 consecutive skipped updates") as info:
        train(config, str(tmp_path), progress=False, devices=jax.devices()[:1])
    skipped = [r["step"] for r in read_metrics(str(tmp_path), kind="skip")]
    assert len(skipped) == 2 and f"at step {skipped[-1]}" in str(info.value)
    status = json.load(open(tmp_path / "status.json"))
    assert status["status"] == "failed" and status["step"] < 8


def test_metadata_records_the_resolved_package_versions(data_dir, tmp_path):
    from importlib import metadata

    train(tiny(data_dir, "steps=2", "eval_every=0"), str(tmp_path), progress=False,
          devices=jax.devices()[:1])
    meta = json.load(open(tmp_path / "metadata.json"))
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
        assert meta["packages"][name] == metadata.version(name)
    assert "git_sha" in meta


# ---------------------------------------------------------------------------- runs


def _losses(workdir: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(workdir, kind="train")]


def test_sharded_runs_match_single_device(data_dir, tmp_path):
    assert jax.device_count() == 4  # conftest forces 4 host devices
    common = ["steps=20", "log_every=1", "eval_every=0", "checkpoint_every=0"]
    runs = {
        "single": (["mesh.data=1"], jax.devices()[:1]),
        "data2_fsdp2": (["mesh.data=2", "mesh.fsdp=2"], None),
        "tensor2": (["mesh.data=-1", "mesh.tensor=2"], None),
    }
    losses = {}
    for name, (mesh, devices) in runs.items():
        workdir = str(tmp_path / name)
        train(tiny(data_dir, *common, *mesh), workdir, progress=False, devices=devices)
        losses[name] = _losses(workdir)
        meta = json.load(open(os.path.join(workdir, "metadata.json")))
        assert meta["devices"]["count"] == (1 if devices else 4)
    ref = losses["single"]
    assert [s for s, _ in ref] == list(range(1, 21))
    for name in ("data2_fsdp2", "tensor2"):
        assert [s for s, _ in losses[name]] == [s for s, _ in ref]
        for (_, a), (_, b) in zip(ref, losses[name], strict=True):
            assert abs(a - b) <= 1e-4 * abs(a), (name, a, b)


def _unigram_entropy(config, num_batches: int) -> float:
    """Entropy (nats) of the target-token frequencies of the first train batches."""
    from llmjax.data.pipeline import make_train_iterator
    it = make_train_iterator(parse_experiment(config).data, _tok(config))
    counts = np.zeros(1 << 16, np.int64)
    for _ in range(num_batches):
        b = next(it)
        np.add.at(counts, b["targets"][b["loss_mask"] > 0], 1)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_tiny_learns_and_writes_its_run_directory(data_dir, tmp_path):
    config = tiny(data_dir)
    workdir = str(tmp_path / "tiny")
    result = train(config, workdir, progress=False, devices=jax.devices()[:1])
    assert result.step == config.steps and not result.preempted

    unigram = _unigram_entropy(config, config.steps)
    final_eval = read_metrics(workdir, kind="eval")[-1]
    assert final_eval["step"] == config.steps
    # Well below what token frequencies alone allow: the model uses context.
    assert final_eval["loss"] < unigram - 0.5, (final_eval, unigram)
    assert final_eval["perplexity"] == pytest.approx(math.exp(final_eval["loss"]), rel=1e-6)
    # Byte tokenizer: one token per byte except BOS/EOS (0 bytes), so bits/byte >= loss/ln 2.
    assert final_eval["bits_per_byte"] >= final_eval["loss"] / math.log(2) - 1e-9

    # The run directory.
    for name in ("config.json", "metadata.json", "metrics.jsonl", "tokenizer", "checkpoints"):
        assert os.path.exists(os.path.join(workdir, name)), name
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["d_model"] == config.model.d_model
    meta = json.load(open(os.path.join(workdir, "metadata.json")))
    assert {"git_sha", "packages", "devices", "start_time"} <= set(meta)
    assert meta["packages"]["jax"] == jax.__version__
    train_recs = read_metrics(workdir, kind="train")
    assert [r["step"] for r in train_recs] == list(range(config.log_every, config.steps + 1,
                                                         config.log_every))
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "flops_per_s", "mfu"):
        assert all(math.isfinite(r[key]) for r in train_recs), key
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]
    ckpts = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert ckpts[-1] == config.steps and len(ckpts) <= config.keep_checkpoints
    if importlib.util.find_spec("tensorboardX") is not None:
        assert os.listdir(os.path.join(workdir, "tensorboard"))
