"""Metrics on known values, each expected value worked out here by hand or by a direct formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu

from llmjax.eval import metrics as M


def test_exact_match() -> None:
    assert M.exact_match("bunil", "bunil") == 1.0
    assert M.exact_match("bunil ", "bunil") == 0.0
    assert M.aggregate("exact_match", [1.0, 0.0, 0.0, 1.0]) == 0.5


def test_acc_and_acc_norm_disagree_on_length() -> None:
    # Summed ll favours the short choice (-2 > -3); per character the long one wins
    # (-3/8 = -0.375 > -2/1).
    out = M.multiple_choice([-2.0, -3.0], ["a", "bbbbbbbb"], gold=1)
    assert out == {"acc": 0.0, "acc_norm": 1.0}
    out = M.multiple_choice([-2.0, -3.0], ["a", "bbbbbbbb"], gold=0)
    assert out == {"acc": 1.0, "acc_norm": 0.0}
    with pytest.raises(ValueError):
        M.multiple_choice([-1.0], ["a", "b"], gold=0)


def test_brier_score() -> None:
    # (1 - 0.7)^2 + 0.2^2 + 0.1^2 = 0.14 ; second doc perfect -> 0 ; mean 0.07.
    assert M.brier_score([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], [0, 1]) == pytest.approx(0.07)
    # Softmax of equal log-likelihoods over 4 choices is uniform: (3/4)^2 + 3 (1/4)^2 = 0.75.
    probs = M.choice_probs([-5.0, -5.0, -5.0, -5.0])
    assert np.allclose(probs, 0.25)
    assert M.aggregate("brier_score", [(2, probs)]) == pytest.approx(0.75)
    # softmax([ln 1, ln 3]) = [1/4, 3/4]
    assert np.allclose(M.choice_probs([0.0, math.log(3.0)]), [0.25, 0.75])


def test_token_edit_distance_known_pairs() -> None:
    kitten, sitting = [ord(c) for c in "kitten"], [ord(c) for c in "sitting"]
    assert M.token_edit_distance(kitten, sitting) == 3  # k->s, e->i, +g
    assert M.token_edit_distance([1, 2, 3], []) == 3
    assert M.token_edit_distance([], [7, 7]) == 2
    assert M.token_edit_distance([5, 6, 7], np.array([5, 6, 7])) == 0
    assert M.token_edit_distance([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # delete 1, insert 5
    assert M.token_edit_distance([1, 2, 3], [3, 2, 1]) == 2
    assert M.normalized_token_edit_distance([1, 9, 3, 9], [1, 2, 3, 4]) == 0.5
    assert M.normalized_token_edit_distance([], []) == 0.0


def test_target_logprob_and_cross_entropy() -> None:
    lp = np.log([0.5, 0.25, 0.125])
    assert M.target_logprob(lp) == pytest.approx(math.log(1 / 64))
    assert M.target_cross_entropy(lp) == pytest.approx(6 * math.log(2) / 3)
    # Masked token (the last) not counted: -(ln 1/2 + ln 1/4) / 2 = 1.5 ln 2.
    assert M.target_cross_entropy(lp, mask=[1, 1, 0]) == pytest.approx(1.5 * math.log(2))
    # Corpus cross-entropy weights by tokens: -(ln(1/64) + ln(1/2)) / 4 = 7/4 ln 2.
    items = [(math.log(1 / 64), 3), (math.log(0.5), 1)]
    assert M.aggregate("target_cross_entropy", items) == pytest.approx(1.75 * math.log(2))


def test_perplexity_and_bits_per_byte_of_constant_models() -> None:
    # Uniform over 256 byte values: ll = -ln 256 per byte -> 8 bits per byte, perplexity 256.
    n = 1000
    assert M.bits_per_byte(-n * math.log(256), n) == pytest.approx(8.0)
    assert M.byte_perplexity(-n * math.log(256), n) == pytest.approx(256.0)
    # Uniform over V = 1024 tokens, 2 bytes per token: 10 bits per token / 2 bytes = 5.
    n_tok = 300
    sum_ll = -n_tok * math.log(1024)
    assert M.bits_per_byte(sum_ll, 2 * n_tok) == pytest.approx(5.0)
    assert M.perplexity(sum_ll, n_tok) == pytest.approx(1024.0)
    # Per-document arrays are summed: a weighted, not a mean-of-ratios, aggregate.
    lls, nb = np.array([-8 * math.log(2), -24 * math.log(2)]), np.array([1, 3])
    assert M.bits_per_byte(lls, nb) == pytest.approx(32 / 4)
    assert M.aggregate("bits_per_byte", list(zip(lls, nb, strict=True))) == pytest.approx(8.0)
    assert M.word_perplexity(-2 * math.log(10), 2) == pytest.approx(10.0)
    assert M.count_words("the dog runs") == 3 and M.count_words(" a b") == 3  # lm-eval's split
    assert M.count_bytes("héllo") == 6
    with pytest.raises(ValueError):
        M.perplexity(-1.0, 0)


def test_bleu() -> None:
    s = "tigur mimun koner bunil duna"
    assert M.bleu([s, s], [s, s]) == pytest.approx(100.0)
    # p1..p4 = 4/5, 3/4, 2/3, 1/2, equal lengths (BP = 1): 100 * (0.2)^(1/4).
    got = M.bleu(["a b c d e"], ["a b c d f"])
    assert got == pytest.approx(100 * 0.2 ** 0.25, rel=1e-9)
    assert M.aggregate("bleu", [("a b c d e", "a b c d f")]) == pytest.approx(got)
    # Short outputs have no 4-grams: corpus BLEU is 0 even when identical.
    assert M.bleu(["a b c"], ["a b c"]) == 0.0
    # Several references per prediction.
    assert M.bleu(["a b c d e"], [["x y z w v", "a b c d e"]]) == pytest.approx(100.0)


def test_chrf() -> None:
    assert M.chrf(["koner bunil"], ["koner bunil"]) == pytest.approx(100.0)
    pred, ref = "koner bunil duna", "koner bunel dunat"
    assert M.chrf([pred], [ref]) == pytest.approx(sacrebleu.sentence_chrf(pred, [ref]).score)
    assert 0 < M.chrf([pred], [ref]) < 100
    # "ab" vs "ac": unigram P = R = 1/2, bigram P = R = 0 -> F_beta averaged over the 2 orders
    # that exist = (1/2 + 0) / 2 = 25.
    assert M.chrf(["ab"], ["ac"]) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        M.chrf(["a", "b"], ["a"])


def test_rouge() -> None:
    # unigrams: 2 of 3 shared -> F = 2/3; bigrams {the cat, cat sat} vs {the cat, cat ran} -> 1/2;
    # LCS "the cat" = 2 of 3 -> 2/3.
    r = M.rouge(["the cat sat"], ["the cat ran"])
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(1 / 2)
    assert r["rougeL"] == pytest.approx(2 / 3)
    # Mean over documents: second pair identical (1.0 each).
    r = M.rouge(["the cat sat", "dog"], ["the cat ran", "dog"])
    assert r["rouge2"] == pytest.approx((0.5 + 0.0) / 2)  # "dog" has no bigrams: F = 0
    assert r["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    # LCS differs from unigram overlap when order changes: "c a b" vs "a b c" -> LCS 2.
    r = M.rouge(["c a b"], ["a b c"])
    assert r["rouge1"] == pytest.approx(1.0) and r["rougeL"] == pytest.approx(2 / 3)
    assert M.aggregate("rougeL", [("c a b", "a b c")]) == pytest.approx(2 / 3)


def test_aggregate_table() -> None:
    assert M.HIGHER_IS_BETTER["acc"] and not M.HIGHER_IS_BETTER["bits_per_byte"]
    assert M.aggregate("acc_norm", [1.0, 1.0, 0.0, 0.0]) == 0.5
    # lm-eval's loglikelihood `perplexity` = exp(-mean per-doc ll), i.e. count 1 per doc.
    assert M.aggregate("perplexity", [(-1.0, 1), (-3.0, 1)]) == pytest.approx(math.exp(2.0))
    with pytest.raises(KeyError):
        M.aggregate("f1", [1.0])
    with pytest.raises(ValueError):
        M.aggregate("acc", [])
