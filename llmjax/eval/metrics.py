"""Evaluation metrics, as defined by lm-evaluation-harness (`lm_eval/api/metrics.py`, task.py).

Pure numpy / python on what a model returned; log-likelihoods are natural logs (nats).
Per-document metrics are aggregated over a task by `aggregate(name, items)`; the item each metric
expects and how it is reduced are listed in `AGGREGATION`. Units: acc / exact_match / ROUGE in
[0, 1]; BLEU and chrF in [0, 100] (sacrebleu's scale); cross-entropy in nats per token.

Notes for scorers of short answers:
- corpus BLEU (sacrebleu defaults, as lm-eval) is 0 unless some output has 4 tokens: it is no
  use on one-word answers; chrF (character 6-grams, beta 2, no word n-grams) is.
- `rouge_score`'s default tokenizer lowercases and drops every non-[a-z0-9] character, no
  stemming: fine for our lowercase pseudo-words, blind to punctuation and symbols.
- Schaeffer et al. 2023: exact match on an L-token answer behaves like p^L, token edit distance
  like L(1 - p); score the same outputs with both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

# ----------------------------------------------------------------------------- per document


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the strings are identical, else 0.0 (lm-eval's default: no normalisation; cut the
    generation at its stop sequence before calling)."""
    return float(pred == ref)


def multiple_choice(loglikelihoods: ArrayLike, choices: Sequence[str],
                    gold: int) -> dict[str, float]:
    """acc: argmax of the summed log-likelihood of each choice [num_choices] is `gold`.
    acc_norm: the same after dividing each log-likelihood by its choice's length in characters
    (the raw choice, without target delimiter). Ties go to the first choice (np.argmax)."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    if lls.shape != (len(choices),):
        raise ValueError(f"log-likelihoods of shape {lls.shape} for {len(choices)} choices")
    lengths = np.array([float(len(c)) for c in choices])
    return {"acc": float(np.argmax(lls) == gold),
            "acc_norm": float(np.argmax(lls / lengths) == gold)}


def choice_probs(loglikelihoods: ArrayLike) -> np.ndarray:
    """Softmax over the choices' log-likelihoods [num_choices]: the distribution Brier scores."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    e = np.exp(lls - lls.max())
    return e / e.sum()


def brier_score(probs: ArrayLike, gold: ArrayLike) -> float:
    """Mean over documents of Σ_c (p_c - onehot(gold)_c)^2. probs [docs, classes], gold [docs]."""
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(gold, dtype=np.int64)
    if p.ndim != 2 or g.shape != (p.shape[0],):
        raise ValueError(f"probs must be [docs, classes] and gold [docs]; got {p.shape}, {g.shape}")
    onehot = np.eye(p.shape[1])[g]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def token_edit_distance(a_ids: Sequence[int] | np.ndarray,
                        b_ids: Sequence[int] | np.ndarray) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute cost 1)."""
    a, b = list(np.asarray(a_ids).ravel()), list(np.asarray(b_ids).ravel())
    prev = list(range(len(b) + 1))  # distance from a[:0] to each b[:j]
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def normalized_token_edit_distance(pred_ids: Sequence[int] | np.ndarray,
                                   ref_ids: Sequence[int] | np.ndarray) -> float:
    """Edit distance / reference length (an empty reference counts as length 1): the fraction of
    target tokens wrong, ≈ 1 - p per Schaeffer et al.; exceeds 1 when pred is much longer."""
    return token_edit_distance(pred_ids, ref_ids) / max(len(ref_ids), 1)


def target_logprob(token_logprobs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Summed log-probability of a target, nats. token_logprobs [tokens]; mask [tokens],
    1 = count the token."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    m = np.ones_like(lp) if mask is None else np.asarray(mask, dtype=np.float64)
    return float(np.sum(lp * m))


def target_cross_entropy(token_logprobs: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Per-token cross-entropy of a target, nats/token: -Σ log p / number of counted tokens."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    n = lp.size if mask is None else float(np.sum(mask))
    if n == 0:
        raise ValueError("cross-entropy of an empty target")
    return -target_logprob(lp, mask) / n


# ----------------------------------------------------------------------------- corpus level


def _ratio(sum_ll: ArrayLike, count: ArrayLike) -> float:
    total = float(np.sum(count))
    if total <= 0:
        raise ValueError(f"count must be positive, got {total}")
    return float(np.sum(sum_ll)) / total


def perplexity(sum_ll: ArrayLike, n_tokens: ArrayLike) -> float:
    """exp(-Σ ll / Σ n). Scalars or per-document arrays (summed). With n = tokens this is token
    perplexity; lm-eval's `perplexity` for loglikelihood tasks is the same with n = 1 per doc."""
    return math.exp(-_ratio(sum_ll, n_tokens))


def word_perplexity(sum_ll: ArrayLike, n_words: ArrayLike) -> float:
    """exp(-Σ ll / Σ words); count words with `count_words` to match lm-eval."""
    return math.exp(-_ratio(sum_ll, n_words))


def byte_perplexity(sum_ll: ArrayLike, n_bytes: ArrayLike) -> float:
    """exp(-Σ ll / Σ UTF-8 bytes)."""
    return math.exp(-_ratio(sum_ll, n_bytes))


def bits_per_byte(sum_ll: ArrayLike, n_bytes: ArrayLike) -> float:
    """-Σ ll / Σ bytes / ln 2: tokenizer-independent, comparable across vocabularies."""
    return -_ratio(sum_ll, n_bytes) / math.log(2)


def count_words(text: str) -> int:
    """lm-eval's word count: len(re.split(r"\\s+", text)) (a leading space adds an empty word)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """UTF-8 length of the text."""
    return len(text.encode("utf-8"))


def _sacre_refs(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> list:
    # sacrebleu wants refs as [ref_stream][doc]; we take one ref (or a list of refs) per doc.
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need as many refs as preds (> 0); got {len(preds)} and {len(refs)}")
    per_doc = [[r] if isinstance(r, str) else list(r) for r in refs]
    if len({len(r) for r in per_doc}) != 1:
        raise ValueError("every prediction needs the same number of references")
    return [list(stream) for stream in zip(*per_doc, strict=True)]


def bleu(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus BLEU, 0-100, `sacrebleu.corpus_bleu` defaults (13a tokenizer, exp smoothing)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(preds), _sacre_refs(preds, refs)).score)


def chrf(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus chrF, 0-100, `sacrebleu.corpus_chrf` defaults (char 6-grams, beta 2)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(preds), _sacre_refs(preds, refs)).score)


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean over documents of the ROUGE-1/2/L F-measures, each in [0, 1] (`rouge_score`, default
    tokenizer, no stemming: see module doc)."""
    from rouge_score import rouge_scorer

    if len(preds) != len(refs) or not preds:
        raise ValueError(f"need as many refs as preds (> 0); got {len(preds)} and {len(refs)}")
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys))
    scores = [scorer.score(ref, pred) for pred, ref in zip(preds, refs, strict=True)]
    return {k: float(np.mean([s[k].fmeasure for s in scores])) for k in keys}


# ----------------------------------------------------------------------------- aggregation


def _mean(items: Sequence[float]) -> float:
    return float(np.mean(np.asarray(items, dtype=np.float64)))


def _weighted(fn: Callable[[ArrayLike, ArrayLike], float]) -> Callable[[Sequence[Any]], float]:
    return lambda items: fn([ll for ll, _ in items], [n for _, n in items])


def _pairs(fn: Callable[..., Any], key: str | None = None) -> Callable[[Sequence[Any]], float]:
    def agg(items: Sequence[Any]) -> float:
        out = fn([p for p, _ in items], [r for _, r in items])
        return float(out[key] if key else out)

    return agg


# metric name -> (item one document contributes, reduction over documents)
AGGREGATION: dict[str, tuple[str, Callable[[Sequence[Any]], float]]] = {
    "exact_match": ("float", _mean),
    "acc": ("float", _mean),
    "acc_norm": ("float", _mean),
    "target_logprob": ("float", _mean),
    "token_edit_distance": ("float", _mean),
    "normalized_token_edit_distance": ("float", _mean),
    "target_cross_entropy": ("(sum_ll, n_tokens)",
                             _weighted(lambda ll, n: -_ratio(ll, n))),
    "perplexity": ("(sum_ll, n_tokens)", _weighted(perplexity)),
    "word_perplexity": ("(sum_ll, n_words)", _weighted(word_perplexity)),
    "byte_perplexity": ("(sum_ll, n_bytes)", _weighted(byte_perplexity)),
    "bits_per_byte": ("(sum_ll, n_bytes)", _weighted(bits_per_byte)),
    "brier_score": ("(gold, probs)", lambda items: brier_score([p for _, p in items],
                                                                 [g for g, _ in items])),
    "bleu": ("(pred, ref)", _pairs(bleu)),
    "chrf": ("(pred, ref)", _pairs(chrf)),
    "rouge1": ("(pred, ref)", _pairs(rouge, "rouge1")),
    "rouge2": ("(pred, ref)", _pairs(rouge, "rouge2")),
    "rougeL": ("(pred, ref)", _pairs(rouge, "rougeL")),
}

HIGHER_IS_BETTER: dict[str, bool] = {
    name: name not in {"token_edit_distance", "normalized_token_edit_distance",
                       "target_cross_entropy", "perplexity", "word_perplexity",
                       "byte_perplexity", "bits_per_byte", "brier_score"}
    for name in AGGREGATION
}


def aggregate(name: str, items: Sequence[Any]) -> float:
    """Reduce per-document items of metric `name` to the task score (see AGGREGATION for the
    item each metric expects). BLEU / chrF are corpus-level, never a mean of sentence scores."""
    if name not in AGGREGATION:
        raise KeyError(f"no aggregation for metric {name!r}; known: {sorted(AGGREGATION)}")
    if len(items) == 0:
        raise ValueError(f"no items to aggregate for {name!r}")
    return AGGREGATION[name][1](items)
