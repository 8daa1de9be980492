"""The provided sweep configs: the CPU demo ladder, the iso-FLOP grid and the GPU ladder's shapes
(checked with `llmjax info`, never trained here)."""

import json
import math
import os
import subprocess
import sys

import pytest

from llmjax.config import load_config
from llmjax.data.pipeline import DataConfig
from llmjax.model.flops import flops_per_token, param_counts
from llmjax.sweep.spec import load_sweep, model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "experiments", "configs")
DEMO = os.path.join(CONFIGS, "scaling_demo.py")
MAKE_DEMO = os.path.join(CONFIGS, "demo.py")
ISOFLOP = os.path.join(CONFIGS, "isoflop.py")
GPU = os.path.join(CONFIGS, "scaling_gpu.py")


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _counts(config):
    """Parameter counts and training FLOPs/token of a config, from the model code itself."""
    mcfg = model_config(config)
    return param_counts(mcfg), flops_per_token(mcfg, config.data.seq_len).training


def test_demo_ladder_spans_decades_at_fixed_tokens_per_param():
    sweep = load_sweep(DEMO)
    assert len(sweep.points) >= 6
    assert len({p.name for p in sweep.points}) == len(sweep.points)
    ns = []
    for p in sweep.points:
        counts, _ = _counts(p.config)
        tokens = p.config.steps * p.config.data.batch_size * p.config.data.seq_len
        assert tokens / counts.non_embedding == pytest.approx(20, rel=0.05), p.name
        assert DataConfig.from_config(p.config.data).dataset_spec == "synthetic"
        assert p.config.eval_every > 0 and p.config.steps // p.config.eval_every >= 4
        # The same validation rows for every size: eval losses are comparable.
        assert p.config.eval_batches * p.config.data.batch_size == 128
        # Five kept checkpoints, the last at the final step: probes follow each run in training.
        every, steps = p.config.checkpoint_every, p.config.steps
        saved = set(range(every, steps + 1, every)) | {steps}
        assert len(saved) == 5 and p.config.keep_every == every, p.name
        ns.append(counts.non_embedding)
    assert ns == sorted(ns)
    assert math.log10(ns[-1] / ns[0]) >= 1.5
    # A variant: tokens_per_param=10 halves every run's tokens.
    half = load_sweep(DEMO + ":tokens_per_param=10")
    for p, q in zip(sweep.points, half.points, strict=True):
        assert q.cost.tokens == pytest.approx(p.cost.tokens / 2, rel=0.05)


def test_make_demo_sweep_has_one_family_per_study():
    """experiments/configs/demo.py: the scaling study is one 2-layer width family at one batch
    and a constant lr (its eval curves are the D axis); the emergence study trains every width on
    the same associative-recall corpus for the same steps, beside a 1-layer control; the
    induction study is 2 layers against 1."""
    sweep = load_sweep(MAKE_DEMO)
    by_study = {}
    for p in sweep.points:
        by_study.setdefault(p.overrides["meta.study"], []).append(p)
    assert set(by_study) == {"scaling", "emergence", "induction"}
    scaling = by_study["scaling"]
    assert len(scaling) >= 5
    assert {p.config.model.n_layers for p in scaling} == {2}
    assert {(p.config.data.batch_size, p.config.steps, p.config.optimizer.schedule)
            for p in scaling} == {(16, 500, "constant")}
    assert all(p.config.steps // p.config.eval_every >= 8 for p in scaling)
    ns = [_counts(p.config)[0].non_embedding for p in scaling]
    assert ns == sorted(ns) and math.log10(ns[-1] / ns[0]) >= 1.0
    for p in scaling:  # the corpus whose entropy the generator computes exactly
        assert p.config.data.synthetic.episodes == 0 and p.config.data.synthetic.repeats == 0
    emergence = by_study["emergence"]
    family = [p for p in emergence if p.config.model.n_layers == 2]
    controls = [p for p in emergence if p.config.model.n_layers == 1]
    assert len(family) >= 5 and len(controls) == 1  # the transition test needs 5 sizes
    assert controls[0].config.model.d_model in {p.config.model.d_model for p in family}
    assert len({p.config.model.n_heads for p in emergence}) == 1  # one head count throughout
    assert len({(p.config.steps, p.config.data.batch_size, p.config.optimizer.lr,
                 DataConfig.from_config(p.config.data).dataset_spec) for p in emergence}) == 1
    assert all(p.config.data.synthetic.episode_assoc == 1.0 for p in emergence)
    assert {p.config.model.n_layers for p in by_study["induction"]} == {1, 2}
    assert len({p.name for p in sweep.points}) == len(sweep.points)
    # One point's full config, as `llmjax train --config=demo.py:point=NAME` gets it.
    one = load_config(MAKE_DEMO + ":point=e_d64_l1")
    assert (one.model.n_layers, one.model.d_model, one.steps) == (1, 64, 2500)


def test_isoflop_points_spend_their_budget(tmp_path):
    sweep = load_sweep(ISOFLOP)
    budgets = {}
    for p in sweep.points:
        counts, fpt = _counts(p.config)
        tokens = p.config.steps * p.config.data.batch_size * p.config.data.seq_len
        assert p.budget == p.overrides["budget"]
        assert fpt * tokens == pytest.approx(p.budget, rel=0.02), p.name
        budgets.setdefault(p.budget, []).append(counts.non_embedding)
    assert len(budgets) >= 3
    for budget, ns in budgets.items():
        assert len(ns) == 5 and len(set(ns)) == 5
        # The sizes bracket the Chinchilla-optimal N = sqrt(C / 120).
        assert min(ns) < math.sqrt(budget / 120) < max(ns)
    # The CLI's dry run plans all of it and writes nothing.
    proc = subprocess.run([sys.executable, "-m", "llmjax", "sweep", f"--config={ISOFLOP}",
                           f"--workdir={tmp_path / 'iso'}", "--parallel=2", "--dry_run"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(sweep.points)} points, {len(sweep.points)} to run" in proc.stdout
    assert all(p.name in proc.stdout for p in sweep.points)
    assert not (tmp_path / "iso").exists()


def _gpu_expected(depth):
    """The ladder's rules written out: d_model 64 L, 128-wide heads, SwiGLU width 8/3 d rounded
    up to 32, untied 32768-token embeddings."""
    d = 64 * depth
    d_ff = 32 * math.ceil(8 * d / 3 / 32)
    non_embedding = depth * (4 * d * d + 3 * d * d_ff + 2 * d) + d
    return {"d_model": d, "n_heads": d // 128, "non_embedding": non_embedding,
            "total": non_embedding + 2 * 32768 * d}


def test_gpu_ladder_shapes_with_llmjax_info():
    from llmjax.train.info import describe

    sweep = load_sweep(GPU, num_devices=4)
    depths = [p.config.model.n_layers for p in sweep.points]
    assert depths == sorted(depths) and len(depths) >= 6
    for p in sweep.points:
        m = p.config.model
        want = _gpu_expected(m.n_layers)
        assert (m.d_model, m.n_heads) == (want["d_model"], want["n_heads"])
        assert (m.compute_dtype, m.scan_layers, m.remat) == ("bfloat16", True, "dots")
        assert p.config.data.seq_len == 2048 and p.config.data.tokenizer == "bpe:32768"
        assert p.config.mesh.fsdp == -1
    lrs = [p.config.optimizer.lr for p in sweep.points]
    batches = [p.config.data.batch_size for p in sweep.points]
    assert lrs == sorted(lrs, reverse=True) and batches == sorted(batches)

    # Largest: `llmjax info`'s function (abstract shapes only, no compile, no data prepared).
    largest = sweep.points[-1]
    info = describe(largest.config, compile_step=False)
    want = _gpu_expected(largest.config.model.n_layers)
    assert info["vocab_size"] == 32768
    assert info["params"]["non_embedding"] == want["non_embedding"]
    assert info["params"]["total"] == want["total"]
    assert 0.8e9 <= info["params"]["total"] <= 1.3e9
    assert info["mesh"]["fsdp"] == 4

    # Smallest: the `llmjax info` command itself, compiling the train step on 4 CPU devices.
    smallest = sweep.points[0]
    proc = subprocess.run([sys.executable, "-m", "llmjax", "info", f"--config={GPU}",
                           *smallest.flags(), "--json"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    want = _gpu_expected(smallest.config.model.n_layers)
    assert info["params"]["non_embedding"] == want["non_embedding"]
    assert info["params"]["total"] == want["total"]
    assert info["steps"] == smallest.config.steps
    assert info["memory"] is None or info["memory"]["total_bytes"] > 0


def test_gpu_config_variant_matches_sweep_point():
    """`scaling_gpu.py:depth=L` (for a single run) is the sweep's point L."""
    sweep = load_sweep(GPU, num_devices=4)
    point = sweep.points[1]
    single = load_config(f"{GPU}:depth={point.config.model.n_layers}")
    assert single.to_dict() == point.config.to_dict()
