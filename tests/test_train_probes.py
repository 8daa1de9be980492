"""Probing during training (config.probe_checkpoints): real tiny runs, probes.jsonl on disk.

The hook must give the records `llmjax probe` gives on the saved checkpoint, and must not change
training: the losses and final parameters equal those of the same run without it.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter

import jax
import numpy as np
import pytest

from llmjax.config import load_config
from llmjax.eval import probe
from llmjax.run import train
from llmjax.train import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "configs", "tiny.py")
FIELDS = {"task", "k", "metric", "value", "step", "n", "tokens"}
TOKENS_PER_STEP = 16 * 64  # tiny.py: batch_size * seq_len


def _config(data_dir: str, *overrides: str):
    return load_config(f"{TINY}:steps=30", [
        f"data.data_dir={data_dir}", "checkpoint_every=15", "keep_checkpoints=3",
        "eval_every=0", "log_every=5", "tensorboard=False", *overrides])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def probed(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("probed") / "run")
    config = _config(data_dir, "probe_checkpoints=True", "probe_tasks=recall,icl")
    train(config, workdir, progress=False, devices=jax.devices()[:1])
    return workdir


@pytest.fixture(scope="module")
def plain(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("plain") / "run")
    train(_config(data_dir), workdir, progress=False, devices=jax.devices()[:1])
    return workdir


def _by_key(records: list[dict], step: int) -> dict[tuple, float]:
    return {(r["task"], r["k"], r["metric"]): r["value"] for r in records if r["step"] == step}


def test_every_checkpoint_is_probed_and_matches_the_offline_probe(probed):
    records = probe.read_probes(probed)
    assert records and all(set(r) == FIELDS for r in records)
    assert {r["step"] for r in records} == {15, 30}
    assert {r["task"] for r in records} == {"recall", "icl"}
    assert {(r["step"], r["tokens"]) for r in records} == {(15, 15 * TOKENS_PER_STEP),
                                                           (30, 30 * TOKENS_PER_STEP)}
    assert max(Counter((r["task"], r["k"], r["metric"], r["step"]) for r in records).values()) == 1
    recall_ks = {r["k"] for r in records if r["task"] == "recall" and r["step"] == 15}
    assert recall_ks == {0, 1, 2, 4, 8, 16}
    hooked = _by_key(records, 15)
    offline = probe.run_probes(probed, 15, tasks=["recall", "icl"])  # reads checkpoints/15
    assert {r["step"] for r in offline} == {15}
    assert hooked == pytest.approx(_by_key(offline, 15), abs=1e-6)
    assert set(hooked) == set(_by_key(offline, 15))

    cost = read_metrics(probed, kind="probe")
    assert [r["step"] for r in cost] == [15, 30]
    per_step = Counter(r["step"] for r in records)
    for r in cost:
        assert r["records"] == per_step[r["step"]] and r["seconds"] > 0


def _params(workdir: str, step: int) -> list[np.ndarray]:
    _, params, _ = probe.load_params(workdir, step)
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_probing_does_not_change_training(probed, plain):
    def losses(workdir: str) -> list[tuple]:
        return [(r["step"], r["loss"]) for r in read_metrics(workdir, kind="train")]

    assert len(losses(plain)) == 6
    assert losses(probed) == losses(plain)  # bitwise
    for a, b in zip(_params(probed, 30), _params(plain, 30), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(os.path.join(plain, "probes.jsonl"))
    assert read_metrics(plain, kind="probe") == []


def test_resume_probes_only_what_the_restored_step_lacks(probed, data_dir, tmp_path):
    # Killed after saving step 30, before its probe finished: step 30's icl records are missing
    # (recall's are there, as after an offline `llmjax probe --tasks=recall`).
    workdir = str(tmp_path / "run")
    shutil.copytree(probed, workdir)
    original = probe.read_probes(workdir)
    os.remove(os.path.join(workdir, "probes.jsonl"))
    probe.write_records(workdir, [r for r in original
                                  if not (r["step"] == 30 and r["task"] == "icl")])
    config = _config(data_dir, "probe_checkpoints=True", "probe_tasks=recall,icl")
    result = train(config, workdir, progress=False, devices=jax.devices()[:1])
    assert result.resumed_from == 30 and result.step == 30
    cost = read_metrics(workdir, kind="probe")
    n_icl = sum(1 for r in original if r["step"] == 30 and r["task"] == "icl")
    assert [r["step"] for r in cost] == [15, 30, 30]
    assert cost[2]["records"] == n_icl > 0  # icl only, once; recall's records were kept
    remade = probe.read_probes(workdir)
    assert [r for r in remade if r["task"] != "icl" or r["step"] != 30] == [
        r for r in original if r["task"] != "icl" or r["step"] != 30]  # untouched
    assert _by_key(remade, 30) == pytest.approx(_by_key(original, 30), abs=1e-6)
    assert set(_by_key(remade, 30)) == set(_by_key(original, 30))


def test_probing_on_a_multi_device_mesh(data_dir, tmp_path):
    assert jax.device_count() == 4  # conftest forces 4 host devices
    workdir = str(tmp_path / "run")
    config = _config(data_dir, "steps=15", "probe_checkpoints=True", "probe_tasks=icl")
    train(config, workdir, progress=False)  # params sharded over a data=4 mesh
    hooked = _by_key(probe.read_probes(workdir), 15)
    assert ("icl", 0, "icl_score") in hooked
    offline = probe.run_probes(workdir, 15, tasks=["icl"])
    assert hooked == pytest.approx(_by_key(offline, 15), abs=1e-6)


def test_unknown_probe_task_exits_2_naming_the_field_before_training(data_dir, tmp_path,
                                                                     capsys):
    from llmjax.cli import main

    workdir = tmp_path / "run"
    code = main(["train", f"--config={TINY}:steps=30", f"--workdir={workdir}",
                 f"--config.data.data_dir={data_dir}", "--config.probe_checkpoints=True",
                 "--config.probe_tasks=recall,nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert "probe_tasks" in err and "nope" in err and "translation" in err  # the allowed names
    assert not os.path.exists(workdir / "checkpoints")


@pytest.mark.parametrize("evals, needle", [
    ({"x": {"type": "induction", "n_seq": 3}}, "evals.x: unknown option(s) n_seq"),
    ({"x": {"type": "icl", "late": -4}}, "evals.x.late=-4"),
    ({"x": {"type": "episode", "kind": "recall", "ks": [1, "2"]}}, "evals.x.ks="),
    ({"x": {"type": "perplexity"}, "y": {"type": "sentence", "max_words": 0}},
     "evals.y.max_words=0"),
])
def test_a_bad_probe_suite_fails_validation_before_any_training(evals, needle):
    """config.evals is checked in full (types, option names and values) by parse_experiment(),
    whether or not probing runs during training: a typo must not surface after hours of
    training."""
    from llmjax.config import load_config, parse_experiment
    from llmjax.errors import UserError

    config = load_config(TINY, [])
    config.evals = evals
    with pytest.raises(UserError) as e:
        parse_experiment(config, num_devices=1)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_log_spaced_checkpoints_probe_the_initial_parameters_too(data_dir, tmp_path):
    """Step 0 is saved before the first update; its probe is the baseline of every curve."""
    workdir = str(tmp_path / "run")
    config = load_config(f"{TINY}:steps=4", [
        f"data.data_dir={data_dir}", "checkpoint_every=0", "eval_every=0", "log_every=2",
        "tensorboard=False", "log_spaced_checkpoints=True", "probe_checkpoints=True",
        "probe_tasks=icl"])
    train(config, workdir, progress=False, devices=jax.devices()[:1])
    steps = sorted({r["step"] for r in probe.read_probes(workdir)})
    assert steps == [0, 1, 2, 4]
