"""Probe tasks (prompts, held-out rules, baselines) and `llmjax probe` on a real trained run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from llmjax.data import synthetic
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.eval import suite, tasks
from llmjax.eval.harness import TokenScores
from llmjax.eval.prompts import build_episode_prompt
from llmjax.eval.tasks import EpisodeTask, FactsTask, SentenceTask, evaluate, frequency_baseline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = ByteTokenizer()
WORLD = synthetic.build_world(synthetic.SyntheticConfig())


# ----------------------------------------------------------------------------- tasks


def test_frequency_baseline_ties_go_to_the_earliest():
    assert frequency_baseline(["x", "y", "x"]) == "x"
    assert frequency_baseline(["y", "x", "x", "y"]) == "y"
    assert frequency_baseline(["z"]) == "z"
    assert frequency_baseline([]) is None


def test_prompts_are_the_episode_format_exclude_the_query_and_are_seeded():
    task = EpisodeTask("copy", "copy", WORLD, n=12, ks=(0, 4, 8))
    a, b = task.items(8, TOK, 256), task.items(8, TOK, 256)
    assert [i.context for i in a] == [i.context for i in b]
    other = EpisodeTask("copy", "copy", WORLD, n=12, ks=(0, 4, 8), seed=1).items(8, TOK, 256)
    assert [i.context for i in a] != [i.context for i in other]
    for item, ep in zip(a, task.episodes(), strict=True):
        query, answer = ep.examples[-1]
        assert item.context.startswith("cp: ") and item.context.endswith(" " + query + ">")
        assert item.k_effective == 8 and item.target == answer
        # Copy strings are random: the query's own example never appears among the shots.
        assert f"{query}>{answer} " not in item.context
        shots = re.findall(r"(\w+)>(\w+) ", item.context)
        assert len(shots) == 8 and all(s in ep.examples[:-1] for s in shots)
    # The first document equals prompts.build_episode_prompt with the same seed stream.
    prompt, answer = build_episode_prompt(task.episodes()[0], len(task.episodes()[0].examples) - 1,
                                          8, seed=1234)
    assert (prompt, answer) == (a[0].context, a[0].target)


def test_probe_rules_are_held_out_from_training():
    cfg = synthetic.SyntheticConfig(num_train_docs=3000, prose=0, facts=0, repeats=0)
    trained = {(r.episode.kind, r.episode.rule) for r in synthetic.generate_records(cfg, "train")
               if r.episode is not None and not r.episode.easy}
    world = synthetic.build_world(cfg)
    for kind in ("translation", "recall", "modular", "sequence"):
        eps = EpisodeTask(kind, kind, world, n=24).episodes()
        assert all(synthetic.rule_is_heldout(kind, ep.rule) for ep in eps)
        assert all(not ep.easy for ep in eps)
        assert not {(kind, ep.rule) for ep in eps} & trained
    assert any(k == "translation" for k, _ in trained)  # the training side is not empty


def test_answer_sets_hold_every_answer_of_the_rule():
    for kind in ("translation", "recall", "modular", "sequence"):
        for ep in EpisodeTask(kind, kind, WORLD, n=8).episodes():
            choices = tasks.answer_set(ep)
            assert all(a in choices for _, a in ep.examples)
    ep = synthetic.sample_episode("sequence", synthetic.probe_rng(5), WORLD, 30)
    assert len(tasks.answer_set(ep)) == len(ep.rule)  # one continuation per start symbol


def _constructed_task() -> EpisodeTask:
    task = EpisodeTask("translation", "translation", WORLD, n=2, ks=(0, 5), sampler="first_n")
    rule = (("ka", "xo"), ("lu", "yi"), ("mo", "zu"))
    task._episodes = [  # 5 shots, then the query (the last example)
        synthetic.Episode("translation", rule, [("ka", "xo"), ("lu", "yi"), ("ka", "xo"),
                                                ("lu", "yi"), ("lu", "yi"), ("mo", "zu")]),
        synthetic.Episode("translation", rule, [("lu", "yi"), ("ka", "xo"), ("lu", "yi"),
                                                ("mo", "zu"), ("ka", "xo"), ("lu", "yi")]),
    ]
    return task


def test_baselines_on_constructed_documents():
    items = _constructed_task().items(5, TOK, 256)
    assert items[0].context == "tr: ka>xo lu>yi ka>xo lu>yi lu>yi mo>"
    # Doc 0 shot answers xo, yi, xo, yi, yi -> yi, wrong (target zu): a hard document.
    # Doc 1: yi, xo, yi, zu, xo -> yi and xo tie, the earlier yi wins, right (target yi).
    assert [i.freq_pred for i in items] == ["yi", "yi"]
    assert [i.target for i in items] == ["zu", "yi"]
    assert [i.chance for i in items] == [1 / 3, 1 / 3]
    assert [i.choices for i in items] == [("xo", "yi", "zu")] * 2
    scores = {s.metric: (s.value, s.n) for s in evaluate(ParrotLM(), _constructed_task(), 5)}
    assert scores["baseline_freq"] == (0.5, 2) and scores["hard_fraction"] == (0.5, 2)
    assert scores["exact_match"] == (0.5, 2) and scores["exact_match_hard"] == (0.0, 1)
    assert scores["baseline_chance"][0] == pytest.approx(1 / 3)
    zero = _constructed_task().items(0, TOK, 256)
    assert [i.freq_pred for i in zero] == [None, None]
    assert zero[0].context == "tr: mo>"


class ParrotLM:
    """A fake LM with the habit the hard subset exposes: it answers with the answer most frequent
    among the shots in its prompt (no lookup at all), and gives that answer log-prob 0, others -5.
    """

    def __init__(self, max_len: int = 256):
        self.tokenizer, self.max_len = TOK, max_len

    @staticmethod
    def _guess(context: str) -> str:
        return frequency_baseline(re.findall(r">(\w+) ", context)) or ""

    def generate_until(self, requests):
        return [self._guess(ctx) for ctx, _, _ in requests]

    def loglikelihood_tokens(self, requests):
        out = []
        for ctx, cont in requests:
            ids = TOK.encode(cont)
            lp = np.zeros(len(ids)) if cont == self._guess(ctx) else np.full(len(ids), -5.0)
            out.append(TokenScores(lp, np.ones(len(ids), bool), ids))
        return out


def test_a_frequency_parrot_matches_the_baseline_and_fails_the_hard_subset():
    task = EpisodeTask("translation", "translation", WORLD, n=40, ks=(8,))
    scores = {s.metric: s for s in evaluate(ParrotLM(), task, 8)}
    assert scores["exact_match"].value == scores["baseline_freq"].value > 0.2
    assert scores["acc"].value == scores["baseline_freq"].value
    assert scores["exact_match_hard"].value == 0.0 and scores["acc_hard"].value == 0.0
    assert scores["exact_match_hard"].n == round(40 * scores["hard_fraction"].value) > 0
    assert scores["k_effective"].value == 8 and scores["truncated"].value == 0.0
    # Per-document numbers by hand: log-prob 0 when right, -5 per token otherwise.
    items = task.items(8, TOK, 256)
    ce = [0.0 if i.freq_pred == i.target else 5.0 for i in items]
    lens = [len(i.target) for i in items]
    assert scores["target_cross_entropy"].value == pytest.approx(
        sum(c * n for c, n in zip(ce, lens, strict=True)) / sum(lens))
    assert scores["baseline_chance"].value == pytest.approx(np.mean([i.chance for i in items]))


def test_short_windows_drop_whole_shots_and_record_it():
    task = EpisodeTask("translation", "translation", WORLD, n=8, ks=(16,))
    items = task.items(16, TOK, 64)
    for it in items:
        assert 1 + len(TOK.encode(it.context)) + it.max_tokens <= 64
        assert it.context.startswith("tr: ") and it.context.endswith(">")
        assert it.k_effective == len(re.findall(r">\w+ ", it.context)) < 16
    scores = {s.metric: s.value for s in evaluate(ParrotLM(64), task, 16)}
    assert scores["truncated"] == 1.0 and scores["k_effective"] < 16


def test_sentence_and_facts_tasks():
    sent = SentenceTask("sentence", WORLD, n=6, ks=(0, 8))
    for it, (ep, sentence, target) in zip(sent.items(8, TOK, 512), sent.episodes(), strict=True):
        mapping = dict(ep.rule)
        assert it.context.endswith(" " + sentence + ">") and it.k_effective == 8
        assert target == " ".join(mapping[w] for w in sentence.split())
        assert 4 <= len(sentence.split()) <= 8
    names = {s.metric for s in evaluate(ParrotLM(512), sent, 8)}
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "baseline_freq_chrf"} <= names
    facts = FactsTask("facts", WORLD, n=10)
    for it in facts.items(0, TOK, 256):
        entity, attribute = it.context.rsplit(" is", 1)[0].split(" ", 1)
        assert WORLD.fact_table[(entity, attribute)] == it.target[1:]
        assert it.target in it.choices and it.chance == 1 / WORLD.config.values_per_attribute
    with pytest.raises(Exception, match="zero-shot"):
        facts.items(1, TOK, 256)
    popular = FactsTask("facts_popular", WORLD, n=40, top_entities=5)
    entities = {it.context.split(" ", 1)[0] for it in popular.items(0, TOK, 256)}
    assert entities <= set(WORLD.entities[:5]) and len(popular.docs()) == 40
    assert len(FactsTask("f", WORLD, n=500, top_entities=5).docs()) == (
        5 * WORLD.config.num_attributes)  # every fact of those entities, each once


def test_build_task_rejects_bad_settings_with_one_line():
    from llmjax.errors import UserError

    with pytest.raises(UserError, match=r"evals.t.type="):
        tasks.build_task("t", {"type": "nope"}, WORLD)
    with pytest.raises(UserError, match=r"evals.t: unknown option"):
        tasks.build_task("t", {"type": "facts", "ks": [0, 1]}, WORLD)
    with pytest.raises(UserError, match=r"evals.t.kind"):
        tasks.build_task("t", {"type": "episode", "kind": "poetry"}, WORLD)
    with pytest.raises(UserError, match=r"evals.t.ks"):
        tasks.build_task("t", {"type": "episode", "kind": "copy", "ks": [-1]}, WORLD)
    with pytest.raises(UserError, match=r"evals.t.top_entities=999"):
        tasks.build_task("t", {"type": "facts", "top_entities": 999}, WORLD)


def test_every_probe_type_has_a_schema_of_its_options():

    assert set(tasks.SCHEMAS) == set(suite.PROBE_TYPES)
    for kind, names in {**tasks.TASK_OPTIONS, **suite.OPTIONS}.items():
        assert set(tasks.SCHEMAS[kind]) == set(names), kind
    # Each option of each type is refused when bad (the cases below cover them all).
    covered = {(t, o) for t, o, _ in _BAD_OPTIONS}
    assert covered == {(t, o) for t, schema in tasks.SCHEMAS.items() for o in schema}


_BAD_OPTIONS = [
    ("episode", "kind", "poetry"), ("episode", "n", 0), ("episode", "seed", -1),
    ("episode", "ks", [3]), ("episode", "num_examples", 4), ("episode", "sampler", "random"),
    ("sentence", "n", 1.5), ("sentence", "seed", "1"), ("sentence", "ks", []),
    ("sentence", "min_words", 0), ("sentence", "max_words", 2),
    ("facts", "n", True), ("facts", "seed", 0.5), ("facts", "top_entities", 257),
    ("icl", "n", 0), ("icl", "early", -1), ("icl", "late", 3),
    ("induction", "n_seqs", 0), ("induction", "seq_len", -1), ("induction", "seed", None),
    ("perplexity", "n", 0),
]
_BASE = {"episode": {"kind": "recall", "ks": [0, 8]}, "sentence": {"min_words": 3},
         "icl": {"early": 5}}


@pytest.mark.parametrize("kind, option, value", _BAD_OPTIONS)
def test_a_bad_probe_option_names_evals_name_option_value(kind, option, value):
    from llmjax.errors import UserError

    spec = {"type": kind, **_BASE.get(kind, {}), option: value}
    with pytest.raises(UserError) as e:
        suite.check_evals({"p": spec})
    msg = str(e.value)
    assert msg.startswith(f"evals.p.{option}={value!r}: allowed: ") and "\n" not in msg, msg
    with pytest.raises(UserError, match=re.escape(f"evals.p.{option}={value!r}")):
        suite.resolve_evals({"p": spec, "q": {"type": "perplexity"}})


def test_probe_options_that_must_fit_the_window():
    from llmjax.errors import UserError

    ok = {"i": {"type": "icl", "early": 6, "late": 62}, "h": {"type": "induction", "seq_len": 31}}
    suite.check_evals(ok, max_len=64)
    for spec, needle in [
        ({"type": "icl", "late": 65}, "evals.p.late=65: allowed: an integer in 7..64"),
        ({"type": "icl", "early": 62}, "evals.p.early=62: allowed: an integer in 1..61"),
        ({"type": "induction", "seq_len": 32}, "evals.p.seq_len=32: allowed: an integer in 1..31"),
    ]:
        suite.check_evals({"p": spec})  # without a window: only the schema applies
        with pytest.raises(UserError, match=re.escape(needle)):
            suite.check_evals({"p": spec}, max_len=64)


def test_the_default_suite_and_missing_or_misspelt_options():
    import time

    from llmjax.errors import UserError

    start = time.perf_counter()
    assert suite.resolve_evals({}) == suite.default_evals()
    assert time.perf_counter() - start < 2.0
    for evals, needle in [
        ({"p": {"type": "episode"}}, "evals.p.kind is required for type 'episode': one of"),
        ({"p": {"type": "perplexity", "m": 3}}, "evals.p: unknown option(s) m; allowed for type"),
        ({"p": {"n": 3}}, "evals.p.type=None: choose from episode, sentence, facts, icl"),
        ({"p": 7}, "evals.p=7: allowed: a mapping"),
    ]:
        with pytest.raises(UserError, match=re.escape(needle)):
            suite.resolve_evals(evals)


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from llmjax.config import load_config
    from llmjax.train import train

    base = tmp_path_factory.mktemp("probe_run")
    config = load_config(os.path.join(REPO, "experiments", "configs", "tiny.py"), [
        f"data.data_dir={base / 'data'}", "steps=30", "checkpoint_every=15",
        "keep_checkpoints=3", "eval_every=0", "tensorboard=False"])
    import jax

    train(config, str(base / "run"), progress=False, devices=jax.devices()[:1])
    return str(base / "run")


def _read(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "probes.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_probe_cli_on_a_trained_run_writes_records_once(tiny_run):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "llmjax", "probe", f"--workdir={tiny_run}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "translation" in proc.stdout and "icl_score" in proc.stdout
    records = _read(tiny_run)
    for r in records:
        assert {"task", "k", "metric", "value", "step", "n", "tokens"} <= set(r)
        assert r["step"] == 30 and r["tokens"] == 30 * 16 * 64
    keys = Counter((r["task"], r["k"], r["metric"], r["step"]) for r in records)
    assert max(keys.values()) == 1
    tasks_seen = {r["task"] for r in records}
    assert {"translation", "recall", "modular", "copy", "reverse", "sequence", "sentence",
            "facts", "facts_popular", "icl", "induction", "perplexity"} == tasks_seen
    ks = {r["k"] for r in records if r["task"] == "translation"}
    assert ks == {0, 1, 2, 4, 8, 16}
    metrics = {r["metric"] for r in records if r["task"] == "recall"}
    assert {"exact_match", "exact_match_hard", "acc", "acc_hard", "baseline_freq",
            "baseline_chance", "target_cross_entropy", "normalized_token_edit_distance",
            "brier_score", "k_effective", "truncated"} <= metrics
    assert {"bleu", "chrf", "rougeL"} <= {r["metric"] for r in records if r["task"] == "sentence"}
    value = {(r["task"], r["metric"]): r["value"] for r in records}
    assert (value[("icl", "position_early")], value[("icl", "position_late")]) == (6, 62)
    assert 0 <= value[("induction", "prefix_matching_max")] <= 1
    assert value[("perplexity", "bits_per_byte")] > 0


def test_probe_rerun_replaces_and_all_steps_adds(tiny_run):
    from llmjax.cli import main

    before = _read(tiny_run) if os.path.exists(os.path.join(tiny_run, "probes.jsonl")) else []
    assert main(["probe", f"--workdir={tiny_run}", "--all_steps",
                 "--tasks=translation,icl", "--quiet"]) == 0
    after = _read(tiny_run)
    keys = Counter((r["task"], r["k"], r["metric"], r["step"]) for r in after)
    assert max(keys.values()) == 1  # re-running step 30 replaced its records
    assert {r["step"] for r in after if r["task"] == "icl"} == {15, 30}
    assert {r["step"] for r in after if r["task"] == "perplexity"} == (
        {30} if before else set())  # untouched by a --tasks run
    # Deterministic: the step-30 translation records equal the first run's.
    old = {(r["k"], r["metric"]): r["value"] for r in before
           if r["task"] == "translation" and r["step"] == 30}
    new = {(r["k"], r["metric"]): r["value"] for r in after
           if r["task"] == "translation" and r["step"] == 30}
    if old:
        assert old == pytest.approx(new, abs=1e-6)


def test_probe_cli_errors_are_one_line(tiny_run, tmp_path, capsys):
    from llmjax.cli import main

    for argv, needle in ([["probe", f"--workdir={tmp_path / 'missing'}"], "no such directory"],
                         [["probe", f"--workdir={tmp_path}"], "no config.json"],
                         [["probe", f"--workdir={tiny_run}", "--step=7"], "--step=7"],
                         [["probe", f"--workdir={tiny_run}", "--tasks=nope"], "nope"],
                         [["probe", "--step=3"], "--workdir is required"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err


def test_training_hook_on_in_memory_params_matches_the_checkpoint_probe(tiny_run, tmp_path):
    from llmjax.eval import probe

    run = probe.load_run(tiny_run)
    _, params, step = probe.load_params(tiny_run, 15, run.model_cfg)
    hook = probe.probe_params(str(tmp_path), run.exp, run.tokenizer, params, step,
                              tokens=123, tasks=["recall", "icl"])
    assert {(r["step"], r["tokens"]) for r in hook} == {(15, 123)}
    assert _read(str(tmp_path)) == sorted(hook, key=lambda r: (r["task"], r["k"], r["metric"]))
    from_ckpt = probe.run_probes(tiny_run, 15, tasks=["recall", "icl"])
    assert {(r["task"], r["k"], r["metric"]): r["value"] for r in hook} == pytest.approx(
        {(r["task"], r["k"], r["metric"]): r["value"] for r in from_ckpt}, abs=1e-6)
