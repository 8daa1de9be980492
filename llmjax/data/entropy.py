"""The entropy rate of the synthetic corpus, from the process that generates it: ground truth for
the irreducible loss E of a scaling-law fit.

A perfect model of the corpus (one that knows the World and has unlimited context) scores, on a
document d, the loss -log p(d), where p is the generator's own probability of that text. The
generator knows p for the families whose text determines the random decisions up to latents that
can be summed out:

- prose: every decision is visible in the text except the document's topic and, for each content
  word, whether it came from the topic's list or the global list. Both are summed out exactly:
  p(d) = sum_t 1/T prod_words [q p_t(w) + (1 - q) p(w)] x (the visible decisions), with q =
  topic_prob. One ambiguity of the grammar is counted: a single parenthetical after a relative
  clause attaches to either noun phrase with the same probability, so such a text has 2
  derivations.
- facts: the entity and attribute of each fact are visible; whether a fact that repeats the
  previous entity continued it or drew it anew is latent (it changes which attributes may follow),
  and is summed out by a forward pass over the point where the current entity was last drawn.

Per family, the function returns the mean log-loss per document and per token of the model's
stream (each document is [BOS] text [EOS]; BOS after EOS is certain), over the documents of a split
(`split_entropy`: exact for those documents, which is what a perfect model would score on them)
and, with a standard error, as an estimate of the rate over the process (documents are
independent, so the error of the ratio estimator follows from their variance). The family of a
document is visible from its first bytes and is drawn with the mixture's weights, adding
-sum w log w nats per document (an upper bound: each chunk of 1024 documents holds exact counts).

Families with a fresh rule or random spans per document (episodes, repeats) have latent orderings
and rejection steps this module does not sum out; they are reported as not computed, never
guessed.

Units: nats. A model's loss also pays for a finite context (documents are cut into rows of
seq_len + 1 tokens, and the topic of a prose document must be re-inferred after a row boundary),
so its irreducible loss sits at or above these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from llmjax.data import synthetic as S
from llmjax.data.synthetic import ProseTrace

EXACT_FAMILIES = ("prose", "facts")


def _log_probs(cdf: list[float]) -> np.ndarray:
    c = np.asarray(cdf, np.float64)
    return np.log(np.diff(np.concatenate([[0.0], c])))


class _Tables:
    """Per part of speech: log p(word i) globally and log p(word i | topic t) for every t."""

    def __init__(self, w: S.World):
        c = w.config
        T, q = c.num_topics, c.topic_prob
        self.mix = []
        for cdf, tcdfs in ((w.noun_cdf, w.topic_noun_cdf), (w.verb_cdf, w.topic_verb_cdf),
                           (w.adjective_cdf, w.topic_adjective_cdf)):
            glob = np.exp(_log_probs(cdf))
            n = len(glob)
            per_topic = np.zeros((n, T))
            for t in range(T):
                per_topic[t::T, t] = np.exp(_log_probs(tcdfs[t]))
            # [n, T]: probability of word i when the document's topic is t.
            self.mix.append(np.log(q * per_topic + (1.0 - q) * glob[:, None]))
        self.log_t = -math.log(T)


def prose_log_prob(trace: ProseTrace, tables: _Tables) -> float:
    per_topic = np.zeros(len(tables.mix[0][0]))
    for pos, i in trace.words:
        per_topic += tables.mix[pos][i]
    m = per_topic.max()
    topic_sum = m + math.log(np.exp(per_topic - m).sum()) + tables.log_t  # the topic, summed out
    return trace.visible + topic_sum + math.log(trace.derivations)


def _add(states: dict[int, float], state: int, lp: float) -> None:
    states[state] = float(np.logaddexp(states[state], lp)) if state in states else lp


def facts_log_prob(facts: list[tuple[int, int]], w: S.World) -> float:
    """log p of a facts document given its (entity, attribute) sequence (module doc)."""
    c = w.config
    n_attr = len(w.attributes)
    log_e = _log_probs(w.entity_cdf)
    new_p = S.FACTS_NEW_ENTITY_PROB
    n_count = c.facts_per_doc_max - c.facts_per_doc_min + 1
    e0, _ = facts[0]
    # state: index of the fact where the current entity was last drawn -> log probability.
    states = {0: log_e[e0] - math.log(n_attr)}
    for j in range(1, len(facts)):
        e, a = facts[j]
        prev_e = facts[j - 1][0]
        nxt: dict[int, float] = {}
        for s, lp in states.items():
            used = {facts[i][1] for i in range(s, j)}
            if len(used) == n_attr:  # every attribute told: a new entity is forced
                _add(nxt, j, lp + log_e[e] - math.log(n_attr))
                continue
            _add(nxt, j, lp + math.log(new_p) + log_e[e] - math.log(n_attr))
            if e == prev_e and a not in used:
                _add(nxt, s, lp + math.log(1 - new_p) - math.log(n_attr - len(used)))
        states = nxt
    total = -math.inf
    for lp in states.values():
        total = np.logaddexp(total, lp)
    return float(total) - math.log(n_count)


def document_log_probs(config: S.SyntheticConfig, split: str) -> Iterator[tuple[str, str, float]]:
    """(family, text, log p) of every prose and facts document of `split`, in generation order,
    by re-running the generator with traces (the same stream as `generate_records`)."""
    world = S.build_world(config)
    tables = _Tables(world)
    for family, text, trace in S.traced_records(config, split):
        if family == "prose":
            yield family, text, prose_log_prob(trace, tables)
        elif family == "facts":
            yield family, text, facts_log_prob(trace, world)


def split_entropy(config: S.SyntheticConfig, split: str = "validation") -> dict[str, Any]:
    """Per family (and the mixture of the exact families): documents, mean nats per document,
    nats per token of the stream (bytes + BOS + EOS), bits per byte, and the standard error of
    the per-token rate as an estimate over the process. Families without an exact scorer are
    listed under `not_computed`."""
    weights = config.family_weights()
    total_w = sum(weights.values())
    out: dict[str, Any] = {"split": split, "units": "nats", "families": {},
                           "not_computed": [f for f in S.FAMILIES
                                            if weights[f] > 0 and f not in EXACT_FAMILIES]}
    nll: dict[str, list[float]] = {f: [] for f in EXACT_FAMILIES}
    tokens: dict[str, list[int]] = {f: [] for f in EXACT_FAMILIES}
    for family, text, lp in document_log_probs(config, split):
        nll[family].append(-lp - math.log(weights[family] / total_w))
        tokens[family].append(len(text.encode("utf-8")) + 2)
    for family in EXACT_FAMILIES:
        if nll[family]:
            out["families"][family] = _rate(np.asarray(nll[family]), np.asarray(tokens[family]))
    exact = [f for f in EXACT_FAMILIES if nll[f]]
    if exact and not out["not_computed"]:
        out["corpus"] = _rate(np.concatenate([nll[f] for f in exact]),
                              np.concatenate([tokens[f] for f in exact]))
    return out


def _rate(nll: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """Ratio estimator sum(nll) / sum(tokens) with its delta-method standard error."""
    n = len(nll)
    rate = float(nll.sum() / tokens.sum())
    resid = nll - rate * tokens
    se = float(math.sqrt(resid.var(ddof=1) / n) / tokens.mean()) if n > 1 else math.nan
    bytes_ = tokens - 2
    return {
        "documents": n,
        "nats_per_document": float(nll.mean()),
        "nats_per_token": rate,
        "nats_per_token_se": se,
        # The text alone, excluding the EOS decision: bits per byte of document text.
        "bits_per_byte": float(nll.sum() / bytes_.sum() / math.log(2)),
        "tokens_per_document": float(tokens.mean()),
    }
