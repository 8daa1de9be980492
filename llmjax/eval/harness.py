"""The model side of evaluation: lm-evaluation-harness request types over a jitted forward pass.

    lm = LM.from_model(graphdef, params, tokenizer, max_len=256)   # or LM(fake_logits_fn, ...)
    lm.loglikelihood([(context, continuation), ...])  -> [(sum log-prob [nats], is_greedy), ...]
    lm.loglikelihood_rolling([text, ...])              -> [sum log-prob of every token, ...]
    lm.generate_until([(context, stop_strings, max_tokens), ...]) -> [generated text, ...]
    lm.multiple_choice([(context, choices), ...])      -> [log-likelihoods [num_choices], ...]

Conventions (lm-eval's, adapted to models trained on `[BOS] + document + [EOS]` rows):
- Every context starts with BOS, as every training document does (lm-eval prepends its prefix
  token only to an empty context; our models never saw a document start without BOS).
- A (context, continuation) pair is encoded as lm-eval's `_encode_pair`: trailing spaces of the
  context move to the continuation, the whole string is encoded and split after the context's
  tokens, so a BPE merge across the boundary is scored as the model would see it.
- Contexts are left-truncated to the model window `max_len`, keeping the whole continuation
  (`(context + continuation)[-(max_len + 1):]`); a continuation longer than `max_len` is refused.
- is_greedy: every continuation token is the argmax of its position's logits (ties go to the
  lowest token id, as `argmax` does).
- loglikelihood_rolling: lm-eval's disjoint rolling windows (`rolling_windows`): every token is
  scored exactly once, the first with only BOS as context, later windows with the `context_len`
  - 1 ... max_len tokens before them (`context_len=1`, lm-eval's default: consecutive windows).
- generate_until: greedy decoding, cut at the first occurrence of any stop string (the stop string
  itself is dropped) or at EOS; contexts are left-truncated to `max_len - max_tokens`. Decoded
  by llmjax.generate.decode (a prefill, then a compiled loop over the KV cache).

Shapes are bucketed so XLA compiles a handful of programs, not one per request: sequence length
to the next power of two (at least `min_len`, at most `max_len`), batch to `batch_size` rows.
Right padding never changes a causal model's outputs at earlier positions.

A model is anything `apply(params, tokens int32 [batch, seq]) -> logits float [batch, seq, vocab]`
that jax can trace; `LM(logits_fn, ...)` takes a params-free `tokens -> logits` function, which is
how the tests plug in a hand-built model with exactly known log-probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.generate.decode import bucket


class TokenizerLike(Protocol):
    """What the harness needs from a tokenizer (llmjax.data.tokenizer.Tokenizer has it)."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """Scores of the continuation tokens of one request.

    logprobs: float64 [n] log p(token_i | everything before it), nats. greedy: bool [n], token_i
    is the argmax at its position. tokens: int32 [n] the scored ids. truncated: the context was
    cut on the left to fit the window (BOS included in what was cut).
    """

    logprobs: np.ndarray
    greedy: np.ndarray
    tokens: np.ndarray
    truncated: bool = False

    @property
    def loglikelihood(self) -> float:
        return float(np.sum(self.logprobs))

    @property
    def is_greedy(self) -> bool:
        return bool(np.all(self.greedy))


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int,
                    context_len: int = 1) -> Iterator[tuple[list[int], list[int]]]:
    """lm-eval's `get_rolling_token_windows` + `make_disjoint_window`: (context, targets) pairs
    whose targets partition `tokens` in order; each pair fits a window, len(context + targets)
    <= max_len + 1. The first window's context is [prefix_token]; a later window predicts at most
    max_len - context_len + 1 tokens, each seeing at least context_len tokens before it."""
    tokens = list(tokens)
    if not 1 <= context_len <= max_len:
        raise ValueError(f"context_len must be in [1, {max_len}], got {context_len}")
    if not tokens:
        return
    pred_len = max_len - context_len + 1
    first = min(max_len, len(tokens))
    yield [prefix_token], tokens[:first]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, pred_len)
        end = done + n
        window_in = tokens[max(0, end - max_len - 1):end - 1]
        yield window_in[:len(window_in) - (n - 1)], tokens[end - n:end]
        done = end


@dataclasses.dataclass(frozen=True)
class _ModelApply:
    """(params, tokens) -> logits of an nnx model given by its graphdef; hashable by graphdef, so
    every LM over the same architecture shares one compiled program per shape."""

    graphdef: Any

    def __call__(self, params: Any, tokens: jax.Array) -> jax.Array:
        from flax import nnx

        return nnx.merge(self.graphdef, params)(tokens)


@dataclasses.dataclass(frozen=True)
class _Stateless:
    """(params, tokens) -> logits_fn(tokens): a params-free model such as a hand-built fake."""

    logits_fn: Callable[[jax.Array], jax.Array]

    def __call__(self, params: Any, tokens: jax.Array) -> jax.Array:
        return self.logits_fn(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _score(apply: Callable[[Any, jax.Array], jax.Array], params: Any, tokens: jax.Array,
           targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(targets) float32 [batch, seq], targets == argmax bool [batch, seq])."""
    logits = apply(params, tokens).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return lp, jnp.argmax(logits, axis=-1) == targets


class LM:
    """A language model behind lm-eval's request types (see the module doc for conventions).

    logits_fn: tokens int32 [batch, seq] -> logits [batch, seq, vocab] (a params-free model);
    or `LM.from_model` for an nnx model with its parameters. max_len: longest window in tokens
    (the run's training seq_len); batch_size: rows per forward pass; min_len: shortest bucket.
    """

    def __init__(self, logits_fn: Callable[[jax.Array], jax.Array] | None,
                 tokenizer: TokenizerLike, max_len: int, *, batch_size: int = 16,
                 min_len: int = 16, params: Any = None,
                 apply: Callable[[Any, jax.Array], jax.Array] | None = None):
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2, got {max_len}")
        if (logits_fn is None) == (apply is None):
            raise ValueError("give exactly one of logits_fn and apply")
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.batch_size = int(batch_size)
        self.min_len = int(min_len)
        self.params = params
        # apply must be hashable: it is a static argument of the jitted functions.
        self._apply = apply if apply is not None else _Stateless(logits_fn)
        pad = getattr(tokenizer, "pad_id", 0)
        self._pad = pad if 0 <= pad < tokenizer.vocab_size else 0

    def _score(self, params: Any, tokens: np.ndarray, targets: np.ndarray
               ) -> tuple[jax.Array, jax.Array]:
        return _score(self._apply, params, tokens, targets)

    @classmethod
    def from_model(cls, graphdef: Any, params: Any, tokenizer: TokenizerLike, max_len: int,
                   **kwargs: Any) -> LM:
        """An LM over an nnx model split into (graphdef, params) (params: nnx.State or the pure
        dict the train state holds); params stay an argument of the jitted functions, and LMs
        over the same graphdef reuse the compiled programs."""
        return cls(None, tokenizer, max_len, params=params, apply=_ModelApply(graphdef),
                   **kwargs)

    # ------------------------------------------------------------------ encoding

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's `_encode_pair`: (context ids with BOS, continuation ids)."""
        n_spaces = len(context) - len(context.rstrip(" "))
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tokenizer.encode(context + continuation).tolist()
        ctx = self.tokenizer.encode(context).tolist()
        return [self.tokenizer.bos_id] + ctx, whole[len(ctx):]

    def encode_context(self, context: str) -> list[int]:
        """BOS + the context's ids."""
        return [self.tokenizer.bos_id] + self.tokenizer.encode(context).tolist()

    # ------------------------------------------------------------------ core scoring

    def score_tokens(self, sequences: Sequence[Sequence[int]], n_scored: Sequence[int]
                     ) -> list[TokenScores]:
        """Log-probabilities of the last n_scored[i] tokens of sequences[i] given all tokens before
        them. Each sequence may hold at most max_len + 1 tokens (inputs = seq[:-1])."""
        seqs = [np.asarray(s, dtype=np.int32) for s in sequences]
        for s, n in zip(seqs, n_scored, strict=True):
            if len(s) > self.max_len + 1:
                raise ValueError(f"sequence of {len(s)} tokens exceeds max_len + 1 = "
                                 f"{self.max_len + 1}")
            if not 0 <= n <= len(s) - 1:
                raise ValueError(f"cannot score {n} tokens of a {len(s)}-token sequence")
        out: list[TokenScores | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths batch up
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = bucket(max(len(seqs[i]) - 1 for i in rows), self.min_len, self.max_len)
            tokens = np.full((self.batch_size, width), self._pad, np.int32)
            targets = np.full((self.batch_size, width), self._pad, np.int32)
            for r, i in enumerate(rows):
                s = seqs[i]
                tokens[r, :len(s) - 1] = s[:-1]
                targets[r, :len(s) - 1] = s[1:]
            lp, greedy = jax.device_get(self._score(self.params, tokens, targets))
            for r, i in enumerate(rows):
                end = len(seqs[i]) - 1
                sl = slice(end - n_scored[i], end)
                out[i] = TokenScores(np.asarray(lp[r, sl], np.float64), np.asarray(greedy[r, sl]),
                                     targets[r, sl].copy())
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ request types

    def loglikelihood_tokens(self, requests: Sequence[tuple[str, str]]) -> list[TokenScores]:
        """Per-token scores of each continuation given its context (left-truncated to fit)."""
        seqs, ns, cut = [], [], []
        for context, continuation in requests:
            ctx, cont = self.encode_pair(context, continuation)
            if len(cont) > self.max_len:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_len "
                                 f"{self.max_len}")
            whole = ctx + cont
            cut.append(len(whole) > self.max_len + 1)
            seqs.append(whole[-(self.max_len + 1):])
            ns.append(len(cont))
        scores = self.score_tokens(seqs, ns)
        return [dataclasses.replace(s, truncated=c) for s, c in zip(scores, cut, strict=True)]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum log-prob of the continuation [nats], is_greedy) per (context, continuation)."""
        return [(s.loglikelihood, s.is_greedy) for s in self.loglikelihood_tokens(requests)]

    def multiple_choice(self, requests: Sequence[tuple[str, Sequence[str]]]
                        ) -> list[np.ndarray]:
        """Log-likelihood of each choice (already including its delimiter) after its context:
        float64 [num_choices] per request; score with `metrics.multiple_choice`."""
        flat = [(ctx, choice) for ctx, choices in requests for choice in choices]
        lls = [ll for ll, _ in self.loglikelihood(flat)]
        out, i = [], 0
        for _, choices in requests:
            out.append(np.asarray(lls[i:i + len(choices)], np.float64))
            i += len(choices)
        return out

    def loglikelihood_rolling(self, texts: Sequence[str], context_len: int = 1
                              ) -> list[float]:
        """Sum log-prob of every token of each text [nats], BOS first, rolling windows."""
        return [float(np.sum(s.logprobs)) for s in self.rolling_token_scores(texts, context_len)]

    def rolling_token_scores(self, texts: Sequence[str], context_len: int = 1
                             ) -> list[TokenScores]:
        """Per-token scores of each whole text (every token once; see `rolling_windows`)."""
        seqs, ns, owner = [], [], []
        for t, text in enumerate(texts):
            ids = self.tokenizer.encode(text).tolist()
            for ctx, pred in rolling_windows(ids, self.tokenizer.bos_id, self.max_len,
                                             context_len):
                seqs.append(ctx + pred)
                ns.append(len(pred))
                owner.append(t)
        scores = self.score_tokens(seqs, ns)
        parts: list[list[TokenScores]] = [[] for _ in texts]
        for t, s in zip(owner, scores, strict=True):
            parts[t].append(s)
        return [TokenScores(np.concatenate([s.logprobs for s in p]) if p else np.zeros(0),
                            np.concatenate([s.greedy for s in p]) if p else np.zeros(0, bool),
                            np.concatenate([s.tokens for s in p]) if p else np.zeros(0, np.int32))
                for p in parts]

    def generate_until(self, requests: Sequence[tuple[str, Sequence[str], int]]) -> list[str]:
        """Greedy continuation of each context, cut at the first stop string / EOS, at most
        max_tokens tokens (contexts left-truncated to max_len - max_tokens tokens), decoded by
        llmjax.generate.decode: through the KV cache for an nnx model (`from_model`), by
        recomputing the prefix for a params-free `logits_fn`."""
        from llmjax.generate.decode import Request

        reqs = []
        for context, stops, max_tokens in requests:
            if not 1 <= max_tokens < self.max_len:
                raise ValueError(f"max_tokens must be in [1, {self.max_len - 1}], got "
                                 f"{max_tokens}")
            ids = self.encode_context(context)[-(self.max_len - max_tokens):]
            reqs.append(Request(ids, int(max_tokens), stop=tuple(stops)))
        return [c.text for c in self.generator.generate(reqs)]

    @functools.cached_property
    def generator(self) -> Any:
        """The llmjax.generate.decode.Generator behind generate_until."""
        from llmjax.generate.decode import CachedDecoder, FullRecompute, Generator

        if isinstance(self._apply, _ModelApply):
            decoder, params = CachedDecoder.build(self._apply.graphdef, self.params)
        else:
            decoder, params = FullRecompute(self._apply), self.params
        return Generator(decoder, params, self.tokenizer, self.max_len,
                         max_batch=self.batch_size, min_len=self.min_len)
