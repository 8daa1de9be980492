"""The evaluation harness on hand-built models whose log-probabilities are known exactly."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.data.tokenizer import ByteTokenizer
from llmjax.eval import metrics
from llmjax.eval.harness import LM, rolling_windows
from llmjax.generate.decode import bucket, cut_at_stop

TOK = ByteTokenizer()
V = TOK.vocab_size  # 259


def uniform(tokens: jax.Array) -> jax.Array:
    return jnp.zeros((*tokens.shape, V), jnp.float32)


def fixed_token(token: int, margin: float = 10.0):
    """Always puts logit `margin` on `token`, 0 elsewhere."""
    def fn(tokens: jax.Array) -> jax.Array:
        return jnp.broadcast_to(jax.nn.one_hot(token, V) * margin, (*tokens.shape, V))
    return fn


# A bigram model: log p(next | current) = BIGRAM[current, next], a fixed random table.
BIGRAM = np.asarray(jax.nn.log_softmax(
    jax.random.normal(jax.random.PRNGKey(0), (V, V)) * 2.0, axis=-1), np.float64)


def bigram(tokens: jax.Array) -> jax.Array:
    return jnp.asarray(BIGRAM, jnp.float32)[tokens]


def successor(tokens: jax.Array) -> jax.Array:
    """Predicts byte (current + 1) % 256, and EOS after 'e'."""
    nxt = jnp.where(tokens == ord("e"), TOK.eos_id, (tokens + 1) % 256)
    return jax.nn.one_hot(nxt, V) * 10.0


def bigram_ll(text: str) -> float:
    """Σ log p(t_i | t_{i-1}) over the text's bytes, t_{-1} = BOS, by hand."""
    ids = [TOK.bos_id] + list(text.encode())
    total = 0.0
    for i in range(1, len(ids)):
        total += BIGRAM[ids[i - 1], ids[i]]
    return total


# ----------------------------------------------------------------------------- loglikelihood


def test_uniform_model_exact_loglikelihood_and_greedy_flags():
    lm = LM(uniform, TOK, max_len=32)
    out = lm.loglikelihood([("abc", "de"), ("", "x"), ("q", "\x00\x00"), ("q", "\x00a")])
    assert out[0][0] == pytest.approx(-2 * math.log(V), rel=1e-6)
    assert out[1][0] == pytest.approx(-math.log(V), rel=1e-6)
    # Ties: argmax is the lowest id, byte 0, so a continuation of zero bytes is greedy.
    assert [g for _, g in out] == [False, False, True, False]


def test_fixed_token_model_loglikelihood_greedy_and_multiple_choice():
    a = ord("a")
    lm = LM(fixed_token(a), TOK, max_len=32)
    lse = math.log(math.exp(10.0) + V - 1)
    (ll_a, g_a), (ll_b, g_b), (ll_ab, g_ab) = lm.loglikelihood(
        [("ctx", "aaa"), ("ctx", "b"), ("ctx", "ab")])
    assert ll_a == pytest.approx(3 * (10.0 - lse), abs=1e-5) and g_a  # float32 log-softmax
    assert ll_b == pytest.approx(-lse, abs=1e-5) and not g_b
    assert ll_ab == pytest.approx(10.0 - 2 * lse, abs=1e-5) and not g_ab
    # Multiple choice on top: one log-likelihood per choice, in order.
    lls = lm.multiple_choice([("ctx", ["b", "aa", "ab"])])[0]
    np.testing.assert_allclose(lls, [-lse, 2 * (10.0 - lse), 10.0 - 2 * lse], atol=1e-5)
    assert metrics.multiple_choice(lls, ["b", "aa", "ab"], gold=1) == {"acc": 1.0, "acc_norm": 1.0}


def test_bigram_model_scores_every_continuation_token_with_its_predecessor():
    lm = LM(bigram, TOK, max_len=64, batch_size=4)
    reqs = [("the cat", " sat"), ("x", "yz"), ("", "hello"), ("abc", "d")] * 3  # > batch_size
    out = lm.loglikelihood_tokens(reqs)
    for (ctx, cont), s in zip(reqs, out, strict=True):
        assert s.loglikelihood == pytest.approx(bigram_ll(ctx + cont) - bigram_ll(ctx), abs=1e-4)
        assert len(s.logprobs) == len(cont.encode())
        greedy = [int(np.argmax(BIGRAM[p])) == t for p, t in
                  zip(([TOK.bos_id] + list((ctx + cont).encode()))[len(ctx):-1],
                      (ctx + cont).encode()[len(ctx):], strict=True)]
        assert list(s.greedy) == greedy


def test_long_context_is_left_truncated_keeping_the_continuation():
    lm = LM(bigram, TOK, max_len=8)
    ctx, cont = "a long context that does not fit", "xyz"
    (s,) = lm.loglikelihood_tokens([(ctx, cont)])
    assert s.truncated
    # A bigram model only needs the previous token, so truncation changes nothing.
    assert s.loglikelihood == pytest.approx(bigram_ll(ctx + cont) - bigram_ll(ctx), abs=1e-4)
    (short,) = lm.loglikelihood_tokens([("ab", "c")])
    assert not short.truncated
    with pytest.raises(ValueError, match="exceeds max_len"):
        lm.loglikelihood([("a", "x" * 9)])


def test_trailing_context_spaces_move_to_the_continuation():
    lm = LM(bigram, TOK, max_len=32)
    ctx_ids, cont_ids = lm.encode_pair("is  ", "x")
    assert TOK.decode(ctx_ids) == "is" and TOK.decode(cont_ids) == "  x"
    assert ctx_ids[0] == TOK.bos_id


# ----------------------------------------------------------------------------- rolling


def test_rolling_windows_match_lm_eval():
    # lm-eval's tests/test_utils.py, get_rolling_token_windows v1 + make_disjoint_window.
    got = list(rolling_windows(list(range(34)), -100, max_len=10, context_len=1))
    assert got == [
        ([-100], list(range(10))),
        ([9], list(range(10, 20))),
        ([19], list(range(20, 30))),
        ([23, 24, 25, 26, 27, 28, 29], [30, 31, 32, 33]),
    ]


def test_rolling_windows_with_longer_context_by_hand():
    got = list(rolling_windows(list(range(14)), -1, max_len=10, context_len=8))
    assert got == [([-1], list(range(10))),
                   ([2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12]),
                   ([3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [13])]


@pytest.mark.parametrize("context_len", [1, 5, 16])
def test_rolling_windows_score_each_token_once_with_its_true_context(context_len):
    tokens = list(range(100, 153))
    windows = list(rolling_windows(tokens, -1, max_len=16, context_len=context_len))
    assert [t for _, pred in windows for t in pred] == tokens
    full = [-1] + tokens
    for ctx, pred in windows:
        assert len(ctx) + len(pred) <= 17
        start = full.index(pred[0])
        assert full[start - len(ctx):start] == ctx  # contiguous: the real preceding tokens
    assert all(len(ctx) >= min(context_len, 1 + tokens.index(pred[0])) for ctx, pred in windows)


def test_loglikelihood_rolling_exact_on_bigram_model():
    lm = LM(bigram, TOK, max_len=16, batch_size=2)
    texts = ["short", "a much longer text that spans several sixteen-token windows, surely.", ""]
    got = lm.loglikelihood_rolling(texts)
    assert got[0] == pytest.approx(bigram_ll(texts[0]), abs=1e-4)
    assert got[1] == pytest.approx(bigram_ll(texts[1]), abs=1e-3)
    assert got[2] == 0.0
    scores = lm.rolling_token_scores(texts)
    assert [len(s.logprobs) for s in scores] == [len(t.encode()) for t in texts]
    bpb = metrics.bits_per_byte(got[:2], [len(t.encode()) for t in texts[:2]])
    assert bpb == pytest.approx(-(got[0] + got[1]) / (len(texts[0]) + len(texts[1])) / math.log(2))


# ----------------------------------------------------------------------------- generation


def test_generate_until_stops_at_stop_string_max_tokens_and_eos():
    lm = LM(successor, TOK, max_len=32, batch_size=2)
    out = lm.generate_until([
        ("abc", ["g"], 10),  # d e <eos>: EOS comes before the stop string
        ("mno", ["s"], 10),  # p q r, cut before "s"
        ("mno", [], 2),  # p q: max_tokens
        ("uvw", ["z", "y"], 10),  # x, cut at the earliest stop
        ("a" * 40, ["d"], 5),  # context longer than the window: left-truncated, still b c
    ])
    assert out == ["de", "pqr", "pq", "x", "bc"]


def test_generate_until_is_greedy_argmax_of_a_real_forward_pass():
    lm = LM(bigram, TOK, max_len=32)
    (got,) = lm.generate_until([("q", [], 4)])
    ids, expected = ord("q"), []
    for _ in range(4):
        ids = int(np.argmax(BIGRAM[ids]))
        if ids == TOK.eos_id:
            break
        expected.append(ids)
    assert got == TOK.decode(expected)


def test_cut_at_stop_and_bucket():
    assert cut_at_stop("abc def\nx", ["\n", " "]) == ("abc", True)
    assert cut_at_stop("abc", ["", "z"]) == ("abc", False)
    assert [bucket(n, 16, 100) for n in (1, 16, 17, 64, 65, 100)] == [16, 16, 32, 64, 100, 100]
    with pytest.raises(ValueError):
        bucket(101, 16, 100)


def test_lm_from_a_real_model_matches_a_direct_forward_pass():
    from flax import nnx

    from llmjax.model import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_seq_len=32,
                      mlp="gelu")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    lm = LM.from_model(graphdef, params, TOK, max_len=32)
    (ll, _), = lm.loglikelihood([("hello", " world")])
    ids = jnp.asarray([[TOK.bos_id] + list(b"hello world")])
    logp = jax.nn.log_softmax(model(ids[:, :-1]), axis=-1)[0]
    direct = sum(float(logp[i, ids[0, i + 1]]) for i in range(5, 11))
    assert ll == pytest.approx(direct, abs=1e-4)
