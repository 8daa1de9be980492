"""The synthetic corpus's entropy (llmjax.data.entropy): the generator's log-probability of each
document is checked against the frequencies of the documents it actually generates."""

import collections
import math

import pytest

from llmjax.data import entropy as H
from llmjax.data import synthetic as S

N_DOCS = 20_000


def _check_against_frequencies(config: S.SyntheticConfig, family: str) -> int:
    """Every document the generator produces often enough is produced at the rate log p says."""
    counts: collections.Counter = collections.Counter()
    log_p: dict[str, float] = {}
    for fam, text, lp in H.document_log_probs(config, "train"):
        assert fam == family
        counts[text] += 1
        if text in log_p:  # a text's probability does not depend on how it was generated
            assert lp == pytest.approx(log_p[text], abs=1e-9)
        log_p[text] = lp
    n = sum(counts.values())
    assert n == config.num_train_docs
    assert sum(math.exp(v) for v in log_p.values()) <= 1 + 1e-9
    checked = 0
    for text, lp in log_p.items():
        p = math.exp(lp)
        if n * p >= 40:
            z = (counts[text] - n * p) / math.sqrt(n * p * (1 - p))
            assert abs(z) < 5, (text, counts[text], n * p)
            checked += 1
    return checked


def test_facts_log_prob_matches_frequencies():
    # 3 entities x 2 attributes, 1-4 facts: a repeated entity may have been continued or drawn
    # anew, which changes the attributes that may follow; the forward pass sums both.
    config = S.SyntheticConfig(prose=0, facts=1, episodes=0, repeats=0, num_entities=3,
                               num_attributes=2, values_per_attribute=2, facts_per_doc_min=1,
                               facts_per_doc_max=4, num_train_docs=N_DOCS, lexicon_size=80)
    assert _check_against_frequencies(config, "facts") >= 20


def test_prose_log_prob_matches_frequencies():
    # A steep Zipf law leaves nearly one word per part of speech and topic, so the structures
    # (number, relative clauses, parentheticals) recur often enough to count; the topic and the
    # topic-or-global choice of each word are latent. (Texts with the attachment ambiguity are
    # too rare here to count; that a text's log p is the same whichever way it was derived is
    # checked for every repeated text.)
    config = S.SyntheticConfig(prose=1, facts=0, episodes=0, repeats=0, lexicon_size=20,
                               num_topics=2, zipf_exponent=8.0, topic_prob=0.5,
                               prose_sentences_min=1, prose_sentences_max=1, adjective_prob=0.0,
                               relative_clause_prob=0.3, prep_phrase_prob=0.0, nesting_prob=0.3,
                               max_nesting=1, num_train_docs=N_DOCS)
    assert _check_against_frequencies(config, "prose") >= 20


def test_split_entropy_of_the_default_corpus():
    out = H.split_entropy(S.SyntheticConfig(), "validation")
    assert out["not_computed"] == ["episodes", "repeats"] and "corpus" not in out
    prose, facts = out["families"]["prose"], out["families"]["facts"]
    assert prose["documents"] + facts["documents"] == 400  # 25% + 15% of 1000
    for e in (prose, facts):
        assert 0 < e["nats_per_token_se"] < 0.05 * e["nats_per_token"]
        assert e["bits_per_byte"] > e["nats_per_token"] / math.log(2)  # BOS/EOS cost nothing
    # Without episodes and repeats the whole corpus is computed.
    only = S.SyntheticConfig(episodes=0, repeats=0)
    out = H.split_entropy(only, "validation")
    fams, corpus = out["families"], out["corpus"]
    assert corpus["documents"] == 1000 and not out["not_computed"]
    n_p, n_f = fams["prose"]["documents"], fams["facts"]["documents"]
    assert (n_p, n_f) == (625, 375)
    mean = (n_p * fams["prose"]["nats_per_document"] + n_f * fams["facts"]["nats_per_document"])
    assert corpus["nats_per_document"] == pytest.approx(mean / 1000)

