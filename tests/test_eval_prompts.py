"""k-shot prompts: layout, exclusion of the document under test, seeded determinism, and the
lm-evaluation-harness sampling rule (draw k+1 with random.Random(seed).sample, drop the doc)."""

from __future__ import annotations

import random

import pytest

from llmjax.data import synthetic as S
from llmjax.errors import UserError
from llmjax.eval.prompts import (
    Doc,
    build_episode_prompt,
    build_fewshot_prompt,
    build_fewshot_prompts,
    continuation,
    episode_docs,
)

POOL = [Doc(text=f"Q{i}:", target=f"A{i}", id=i) for i in range(12)]


def shot(d: Doc) -> str:
    return f"{d.text} {d.target}\n\n"


def test_k0_is_just_the_query() -> None:
    assert build_fewshot_prompt(POOL[3], POOL, 0) == "Q3:"
    assert build_fewshot_prompt(POOL[3], POOL, 0, description="Task.\n\n") == "Task.\n\nQ3:"


def test_layout_written_out_by_hand() -> None:
    query = Doc("What is 2+2?", "4", id="q")
    pool = [Doc("What is 1+1?", "2", id="a"), Doc("What is 3+1?", "4", id="b")]
    got = build_fewshot_prompt(query, pool, 2, description="Arithmetic.\n", sampler="first_n")
    assert got == "Arithmetic.\nWhat is 1+1? 2\n\nWhat is 3+1? 4\n\nWhat is 2+2?"
    got = build_fewshot_prompt(query, pool, 1, target_delimiter=" => ", fewshot_delimiter=" | ",
                               sampler="first_n")
    assert got == "What is 1+1? => 2 | What is 2+2?"
    assert continuation("4") == " 4" and continuation("4", " => ") == " => 4"


def test_excludes_the_document_under_test() -> None:
    for doc in POOL:
        # k = all the others: every other doc appears exactly once, the doc itself never.
        prompt = build_fewshot_prompt(doc, POOL, len(POOL) - 1, seed=7)
        assert shot(doc) not in prompt and prompt.endswith(doc.text)
        assert all(prompt.count(shot(d)) == 1 for d in POOL if d != doc)
        for seed in range(30):
            p = build_fewshot_prompt(doc, POOL, 3, seed=seed)
            assert shot(doc) not in p
            assert sum(shot(d) in p for d in POOL) == 3


def test_same_seed_same_prompt_different_seed_differs() -> None:
    doc = POOL[0]
    first = build_fewshot_prompt(doc, POOL, 4, seed=11)
    assert build_fewshot_prompt(doc, POOL, 4, seed=11) == first
    assert len({build_fewshot_prompt(doc, POOL, 4, seed=s) for s in range(10)}) > 1


def test_matches_lm_eval_sampling_rule() -> None:
    # lm-eval ContextSampler: same split -> rnd.sample(docs, k + 1), drop the doc, keep k.
    doc, k = POOL[5], 4
    rnd = random.Random(1234)
    picked = [d for d in rnd.sample(POOL, k + 1) if d != doc][:k]
    expected = "".join(shot(d) for d in picked) + doc.text
    assert build_fewshot_prompt(doc, POOL, k) == expected
    # Different split (doc not in pool) -> rnd.sample(docs, k).
    outside = Doc("Z:", "z", id="z")
    picked = random.Random(99).sample(POOL, k)
    assert build_fewshot_prompt(outside, POOL, k, seed=99) == "".join(map(shot, picked)) + "Z:"


def test_task_stream_walks_one_rng_over_docs() -> None:
    docs, k = POOL[:6], 2
    rnd = random.Random(1234)
    expected = []
    for doc in docs:
        picked = [d for d in rnd.sample(POOL, k + 1) if d != doc][:k]
        expected.append("".join(map(shot, picked)) + doc.text)
    prompts = build_fewshot_prompts(docs, POOL, k)
    assert prompts == expected == build_fewshot_prompts(docs, POOL, k, seed=1234)
    # Shots vary across documents (unlike a fresh seed per document).
    assert len({p[: -len(d.text)] for p, d in zip(prompts, docs, strict=True)}) > 1


def test_bad_k_is_a_user_error() -> None:
    with pytest.raises(UserError, match="num_fewshot"):
        build_fewshot_prompt(POOL[0], POOL, len(POOL))
    with pytest.raises(UserError, match="num_fewshot"):
        build_fewshot_prompt(POOL[0], POOL, -1)
    with pytest.raises(UserError, match="sampler"):
        build_fewshot_prompt(POOL[0], POOL, 1, sampler="balanced")


def test_multiple_choice_gold() -> None:
    d = Doc("Sky colour?", "blue", choices=("red", "blue"), id=0)
    assert d.gold == 1
    with pytest.raises(ValueError):
        _ = Doc("x", "green", choices=("red", "blue")).gold


@pytest.fixture(scope="module")
def episodes() -> list[S.Episode]:
    world = S.build_world(S.SyntheticConfig(num_train_docs=10, num_validation_docs=10))
    rng = S.probe_rng(3)
    return [S.sample_episode(kind, rng, world, 7) for kind in S.EPISODE_KINDS]


def test_episode_first_n_equals_synthetic_render_prompt(episodes: list[S.Episode]) -> None:
    for ep in episodes:
        for index in range(len(ep.examples)):
            got = build_episode_prompt(ep, index, index, sampler="first_n")
            assert got == S.render_prompt(ep, index), (ep.kind, index)


def test_episode_sampled_shots_in_the_episode_format(episodes: list[S.Episode]) -> None:
    for ep in episodes:
        fmt = S.EPISODE_FORMATS[ep.kind]
        description, docs = episode_docs(ep)
        assert S.render_episode(ep).startswith(description)
        index, k = 4, 3
        prompt, answer = build_episode_prompt(ep, index, k, seed=5)
        query, true_answer = ep.examples[index]
        assert answer == true_answer and prompt.endswith(" " + query + fmt.qa_sep)
        shots = prompt[len(description):].split(fmt.ex_sep)[:-1]
        assert len(shots) == k
        # assoc's value follows its one-letter key directly (qa_sep is empty).
        pairs = [tuple(s.split(fmt.qa_sep)) if fmt.qa_sep else (s[:1], s[1:]) for s in shots]
        # Shots are other examples of this episode, ids drawn by the lm-eval rule, never `index`.
        ids = [d.id for d in random.Random(5).sample(docs, k + 1) if d.id != index][:k]
        assert pairs == [ep.examples[i] for i in ids]
        assert prompt == build_episode_prompt(ep, index, k, seed=5)[0]
