"""Decoding (KV cache against full recomputation, sampling, stops), `llmjax.load`, `pipeline` and
`llmjax generate`, on real models: random-init transformers and a really trained tiny run."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llmjax
from llmjax.data.tokenizer import ByteTokenizer
from llmjax.errors import UserError
from llmjax.generate import decode
from llmjax.generate.decode import (
    CachedDecoder,
    FullRecompute,
    Generator,
    Request,
    Sampling,
)
from llmjax.model import ModelConfig, Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = ByteTokenizer()


def _random_model(**overrides):
    cfg = ModelConfig(**{**dict(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=4,
                                max_seq_len=64, init_std=0.3), **overrides})
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


class _Apply:
    """(params, tokens) -> logits of the nnx model `graphdef`, hashable (a jit static arg)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef

    def __hash__(self):
        return hash(self.graphdef)

    def __eq__(self, other):
        return isinstance(other, _Apply) and other.graphdef == self.graphdef

    def __call__(self, params, tokens):
        return nnx.merge(self.graphdef, params)(tokens)


PROMPTS = ("The quick brown fox", "ab", "a much longer prompt of some forty bytes")


@pytest.mark.parametrize("overrides, copies", [
    # 4 rows x 2 kv heads: the unrolled attention of small batches
    (dict(positions="learned", scan_layers=False, n_kv_heads=2), 1),
    (dict(positions="rope", scan_layers=True), 3),  # 8 rows x 4 kv heads: the batched einsum
])
def test_cached_decoding_gives_the_tokens_of_full_recomputation(overrides, copies):
    graphdef, params = _random_model(**overrides)
    cached = Generator(*CachedDecoder.build(graphdef, params), TOK, 64)
    full = Generator(FullRecompute(_Apply(graphdef)), params, TOK, 64)
    # different lengths in one batch
    reqs = [Request(cached.encode(p * c), 20) for p in PROMPTS for c in range(1, copies + 1)
            if len(p * c) < 43]
    a = cached.generate(reqs, logprobs=True)
    b = full.generate(reqs, logprobs=True)
    assert sum(len(x.tokens) for x in a) > 30  # (a row may meet EOS early)
    for x, y in zip(a, b, strict=True):
        assert x.tokens == y.tokens and x.finish_reason == y.finish_reason
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)
        np.testing.assert_allclose(x.prompt_logprobs[1:], y.prompt_logprobs[1:], atol=1e-4)
    # The logprobs are the model's: the sum over the continuation is what the forward pass says.
    model = nnx.merge(graphdef, params)
    ids = reqs[0].prompt + a[0].tokens
    logp = jax.nn.log_softmax(model(jnp.asarray([ids[:-1]])), axis=-1)[0]
    want = [float(logp[i - 1, t]) for i, t in enumerate(ids) if i >= len(reqs[0].prompt)]
    np.testing.assert_allclose(a[0].logprobs, want, atol=1e-4)
    # greedy: every generated token is the top-1 alternative
    assert all(top[0][0] == t for top, t in zip(a[0].top_logprobs, a[0].tokens, strict=True))


def test_a_row_does_not_depend_on_the_rest_of_its_batch():
    graphdef, params = _random_model()
    gen = Generator(*CachedDecoder.build(graphdef, params), TOK, 64)
    sampled = Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=7)
    reqs = [Request(gen.encode(p), 16, sampled, index=i) for i, p in enumerate(PROMPTS)]
    together = gen.generate(reqs)
    alone = [gen.generate([r])[0] for r in reqs]
    assert [c.tokens for c in together] == [c.tokens for c in alone]
    # index and seed give other samples; the same ones give the same
    again = gen.generate([Request(reqs[0].prompt, 16, sampled, index=1)])[0]
    other_seed = gen.generate([Request(reqs[0].prompt, 16,
                                       Sampling(1.0, 20, 0.9, seed=8))])[0]
    assert again.tokens != together[0].tokens or other_seed.tokens != together[0].tokens
    assert gen.generate([reqs[0]])[0].tokens == together[0].tokens


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    graphdef, params = _random_model()
    gen = Generator(*CachedDecoder.build(graphdef, params), TOK, 64)
    prompt = gen.encode(PROMPTS[0])
    greedy = gen.generate([Request(prompt, 24)])[0].tokens
    for s in (Sampling(1.5, top_k=1, seed=3), Sampling(1.5, top_p=1e-6, seed=3)):
        assert gen.generate([Request(prompt, 24, s)])[0].tokens == greedy


# A stateless model with fixed next-token logits, whatever the context: the sampler's input.
FIXED = np.log(np.asarray([0.05, 0.1, 0.15, 0.3, 0.4]))


def _fixed_logits(tokens):
    logits = jnp.full((TOK.vocab_size,), -1e9).at[97:102].set(jnp.asarray(FIXED))  # 'a'..'e'
    return jnp.broadcast_to(logits, (*tokens.shape, TOK.vocab_size))


class _Fixed:
    def __hash__(self):
        return 17

    def __eq__(self, other):
        return isinstance(other, _Fixed)

    def __call__(self, params, tokens):
        return _fixed_logits(tokens)


@pytest.mark.parametrize("sampling, probs", [
    (Sampling(1.0), [0.05, 0.1, 0.15, 0.3, 0.4]),
    (Sampling(1.0, top_k=2), [0, 0, 0, 3 / 7, 4 / 7]),
    # top_p 0.6: the smallest set reaching 0.6 is {e, d} (0.7)
    (Sampling(1.0, top_p=0.6), [0, 0, 0, 3 / 7, 4 / 7]),
    (Sampling(0.5), np.exp(2 * FIXED) / np.exp(2 * FIXED).sum()),
])
def test_sampling_draws_from_the_truncated_tempered_distribution(sampling, probs):
    gen = Generator(FullRecompute(_Fixed()), None, TOK, 64, max_batch=64)
    reqs = [Request([TOK.bos_id], 40, dataclasses.replace(sampling, seed=11), index=i)
            for i in range(64)]
    draws = np.concatenate([np.asarray(c.tokens) - 97 for c in gen.generate(reqs)])
    counts = np.bincount(draws, minlength=5)
    assert counts.sum() == 64 * 40
    expected = np.asarray(probs) * counts.sum()
    assert np.all(counts[expected == 0] == 0)
    keep = expected > 0
    chi2 = float((((counts - expected)[keep]) ** 2 / expected[keep]).sum())
    assert chi2 < 20.5, (counts, expected)  # p = 0.0004 for 4 degrees of freedom


def test_stop_sequences_and_eos_end_a_continuation():
    # 'abcde' cycles forever under this model: next = current + 1 within a..e
    def cycle(tokens):
        nxt = jnp.where((tokens >= 97) & (tokens < 101), tokens + 1, 97)
        return jax.nn.one_hot(nxt, TOK.vocab_size) * 10.0

    class Cycle:
        __hash__ = lambda self: 23  # noqa: E731
        __eq__ = lambda self, o: isinstance(o, Cycle)  # noqa: E731
        __call__ = lambda self, params, tokens: cycle(tokens)  # noqa: E731

    gen = Generator(FullRecompute(Cycle()), None, TOK, 64)
    prompt = gen.encode("a")
    [free, cut, long_stop, two] = gen.generate([
        Request(prompt, 12), Request(prompt, 30, stop=("ab",)),
        Request(prompt, 30, stop=("x" * 20, "eab")),  # a 20-token stop is matched on the host
        Request(prompt, 30, stop=("zz", "cd"))])
    assert free.text == "bcdeabcdeabc" and free.finish_reason == "length"
    assert cut.text == "bcde" and cut.finish_reason == "stop"
    assert cut.tokens == TOK.encode("bcde").tolist() and len(cut.logprobs) == 4
    assert long_stop.text == "bcd" and long_stop.finish_reason == "stop"
    assert two.text == "b"

    def to_eos(tokens):  # 'a' -> 'b' -> EOS
        nxt = jnp.where(tokens == 98, TOK.eos_id, 98)
        return jax.nn.one_hot(nxt, TOK.vocab_size) * 10.0

    class ToEos(Cycle):
        __hash__ = lambda self: 29  # noqa: E731
        __eq__ = lambda self, o: isinstance(o, ToEos)  # noqa: E731
        __call__ = lambda self, params, tokens: to_eos(tokens)  # noqa: E731

    [eos] = Generator(FullRecompute(ToEos()), None, TOK, 64).generate([Request(prompt, 10)])
    assert eos.text == "b" and eos.tokens == [98] and eos.finish_reason == "stop"


def test_similar_shapes_reuse_the_compiled_program():
    gen = Generator(FullRecompute(_Fixed()), None, TOK, 64)  # bucketing is the decoder's own
    gen.generate([Request(gen.encode("hello"), 10)])
    before = decode._generate._cache_size()
    # other prompts, lengths, settings and stops in the same (batch, prompt, cache) buckets
    gen.generate([Request(gen.encode("hi there"), 7, Sampling(0.7, 5, 0.9, 3), ("x",))])
    gen.generate([Request(gen.encode("hey"), 12)])
    assert decode._generate._cache_size() == before
    gen.generate([Request(gen.encode("hello"), 40)])  # a longer cache: one more program
    assert decode._generate._cache_size() == before + 1


def test_requests_that_cannot_run_name_their_field():
    graphdef, params = _random_model()
    gen = Generator(*CachedDecoder.build(graphdef, params), TOK, 64)
    cases = [(Request(gen.encode("x" * 60), 10), "--prompt"),
             (Request(gen.encode("x"), 64), "--max_new_tokens"),
             (Request(gen.encode("x"), 5, Sampling(temperature=-1)), "--temperature"),
             (Request(gen.encode("x"), 5, Sampling(temperature=1, top_p=0)), "--top_p"),
             (Request(gen.encode("x"), 5, Sampling(top_k=-2)), "--top_k")]
    for req, field in cases:
        with pytest.raises(UserError, match=f"^{field}"):
            gen.generate([req])
    assert len(gen.fit(gen.encode("x" * 80), 10)) == 54  # left-truncated, BOS kept
    assert gen.fit(gen.encode("x" * 80), 10)[0] == TOK.bos_id


# ----------------------------------------------------------------------------- a trained run


def test_load_gives_the_runs_model_and_tokenizer(trained_tiny_run):
    from llmjax.eval.probe import load_params

    model, tokenizer = llmjax.load(trained_tiny_run)
    assert model.step == 50 and tokenizer.vocab_size == 259
    tokens = np.asarray([tokenizer.encode("The cat sat on the mat.")], np.int32)
    logits = model(tokens)
    assert logits.dtype == jnp.float32 and logits.shape == (1, tokens.shape[1], 259)
    graphdef, params, _ = load_params(trained_tiny_run)
    want = nnx.merge(graphdef, params)(jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5)
    with pytest.raises(UserError, match="--step=7"):
        llmjax.load(trained_tiny_run, step=7)


def test_pipeline_mirrors_hugging_face_and_the_cli(trained_tiny_run):
    gen = llmjax.pipeline("text-generation", model=trained_tiny_run)
    prompt = "The quick brown fox"
    [out] = gen(prompt, max_length=40)
    assert set(out) == {"generated_text"} and out["generated_text"].startswith(prompt)
    n_new = len(TOK.encode(out["generated_text"])) - len(TOK.encode(prompt))
    assert n_new <= 40 - len(TOK.encode(prompt))  # max_length counts the prompt, as in HF
    # lists give lists; num_return_sequences samples differ; greedy is deterministic
    many = gen([prompt, "Once"], max_new_tokens=12, do_sample=True, num_return_sequences=3)
    assert [len(x) for x in many] == [3, 3]
    assert len({d["generated_text"] for d in many[0]}) > 1
    assert gen(prompt, max_length=40) == [out]
    cli = subprocess.run([sys.executable, "-m", "llmjax", "generate",
                          f"--workdir={trained_tiny_run}", f"--prompt={prompt}",
                          f"--max_new_tokens={40 - len(prompt)}", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    line = json.loads(cli.stdout.splitlines()[0])
    assert prompt + line["completion"] == out["generated_text"]
    assert "tokens/s" in cli.stderr


@pytest.mark.parametrize("flags, field", [
    (["--workdir=/nonexistent/run", "--prompt=x"], "--workdir"),
    (["--prompt=" + "x" * 70], "--prompt"),
    (["--prompt=x", "--temperature=-1"], "--temperature"),
    (["--prompt=x", "--top_p=1.5"], "--top_p"),
    (["--prompt=x", "--num_return_sequences=0"], "--num_return_sequences"),
    (["--prompt=x", "--step=3"], "--step"),
])
def test_generate_cli_bad_input_is_one_line_and_exit_2(trained_tiny_run, flags, field):
    argv = flags if flags[0].startswith("--workdir") else [f"--workdir={trained_tiny_run}", *flags]
    r = subprocess.run([sys.executable, "-m", "llmjax", "generate", *argv], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), r.stderr
