"""Decoding: a prefill, then one compiled `lax.while_loop` of single-token steps through a KV cache.

    gen = Generator(*CachedDecoder.build(graphdef, params), tokenizer, max_len=64)
    # or, for a run directory: model, tok = llmjax.load("runs/tiny"); gen = model.generator(tok)
    [c] = gen.generate([Request(gen.encode("The quick"), max_new_tokens=20)])
    c.text, c.tokens, c.finish_reason, c.logprobs

What one call of the compiled program does, for a batch of right-padded prompts [B, P]:
  1. prefill: the whole prompt block at positions 0..P-1 writes every layer's keys and values into
     a cache of `cache_len` slots and gives the logits at every prompt position (from which the
     prompt's own log-probabilities come, for OpenAI's `echo`);
  2. decode: row b's next token comes from the logits at its last prompt position lengths[b]-1;
     each step samples one token per row, writes it at that row's own position, and runs the
     model on it alone. A row stops at EOS, at one of its stop sequences (matched on token ids;
     the text is cut again on the host, where matching is exact), or after its max_new_tokens;
     the loop ends when every row has stopped.

Sampling is per row, so requests with different settings share one program: temperature 0 is
greedy (argmax; ties to the lowest id); otherwise logits / temperature, restricted to the top_k
highest (0 = all) and to the smallest set whose probability reaches top_p (HF's order: top-k,
then top-p), sampled with the row's own key fold_in(fold_in(key(seed), index), step). A row's
tokens depend only on its own prompt, settings, seed and index, not on the rest of the batch.

Shapes are bucketed (batch and prompt length to powers of two, the cache to a power of two >=
prompt + max_new_tokens, capped at the model's window), so a second call with similar shapes
reuses the compiled program: XLA compiles one per (batch, prompt, cache) bucket.

Log-probabilities are of the model's distribution (log_softmax of the logits, before temperature
or truncation), in nats, as OpenAI's `logprobs` reports them.

`FullRecompute` is the same loop without a cache (every step re-runs the model on the whole
prefix): the reference the cached decoder is tested against, and the way to decode any
`tokens -> logits` function, such as a test's hand-built model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.errors import UserError

# OpenAI's completions API returns at most 5 alternatives per token, and takes at most 4 stops.
TOP_LOGPROBS = 5
MAX_STOPS = 4  # stops matched inside the compiled loop (any further ones only on the host)
STOP_TOKENS = 8  # a stop sequence longer than this many tokens is only matched on the host
MIN_BUCKET = 16


def bucket(n: int, lo: int, hi: int) -> int:
    """Smallest power of two >= max(n, lo), capped at hi (n must be <= hi)."""
    if n > hi:
        raise ValueError(f"length {n} exceeds the cap {hi}")
    return min(hi, 1 << max(0, math.ceil(math.log2(max(n, lo, 1)))))


# ----------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to choose each token. temperature 0: greedy. top_k 0: no top-k cut. top_p 1: none."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def check(self, prefix: str = "--") -> Sampling:
        """UserError naming the field (`prefix` + name) when a value is out of range."""
        t, k, p, s = self.temperature, self.top_k, self.top_p, self.seed
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
            raise UserError(f"{prefix}temperature: must be a number >= 0, got {t!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise UserError(f"{prefix}top_k: must be an integer >= 0 (0 = off), got {k!r}")
        if not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise UserError(f"{prefix}top_p: must be in (0, 1], got {p!r}")
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2 ** 32:
            raise UserError(f"{prefix}seed: must be an integer in [0, 2^32), got {s!r}")
        return self


@dataclasses.dataclass(frozen=True)
class Request:
    """One sequence to continue: prompt token ids (BOS first, as `Generator.encode` gives).

    index: which of several samples of the same prompt this is (folded into the sampling key,
    so OpenAI's n / HF's num_return_sequences give different samples for one seed).
    """

    prompt: Sequence[int]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop: Sequence[str] = ()
    index: int = 0


@dataclasses.dataclass
class Completion:
    """What one request produced.

    tokens: the generated ids that make up `text` (EOS and anything after a stop sequence
    dropped); text: their decoding, cut before the first stop sequence; finish_reason: 'stop'
    (EOS or a stop sequence) or 'length' (max_new_tokens reached). logprobs [len(tokens)]: log p
    of each generated token; top_logprobs: its TOP_LOGPROBS most likely (id, log p) when asked.
    prompt_logprobs [len(prompt)]: log p of each prompt token given the ones before (None for
    the first, BOS), with prompt_top_logprobs, when asked (`logprobs=True`).
    """

    tokens: list[int]
    text: str
    finish_reason: str
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None


# ----------------------------------------------------------------------------- decoders


@dataclasses.dataclass(frozen=True)
class CachedDecoder:
    """An nnx Transformer (by graphdef) decoded through its KV cache (Transformer.decode).
    Hashable by graphdef: decoders of one architecture share compiled programs."""

    graphdef: Any

    @classmethod
    def build(cls, graphdef: Any, params: Any) -> tuple[CachedDecoder, Any]:
        """(decoder, params) for the model (graphdef, params), in the layout decoding is fast
        in: layers unrolled (a scanned model's stacked weights would be sliced, i.e. copied,
        at every token: 2.2x slower per token at the 12M shape) and params a pure dict (an
        nnx.State's Variables cannot be merged again inside the decode loop's trace)."""
        from flax import nnx

        from llmjax.model import convert_layout

        model = nnx.merge(graphdef, params)
        if model.cfg.scan_layers:
            model = convert_layout(model, scan_layers=False)
        graphdef, state = nnx.split(model, nnx.Param)
        return cls(graphdef), nnx.to_pure_dict(state)

    def prefill(self, params: Any, tokens: jax.Array, cache_len: int) -> tuple[jax.Array, Any]:
        from flax import nnx

        model = nnx.merge(self.graphdef, params)
        b, p = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
        return model.decode(tokens, positions, model.init_cache(b, cache_len))

    def step(self, params: Any, cache: Any, token: jax.Array, position: jax.Array
             ) -> tuple[jax.Array, Any]:
        """token, position: int32 [B] -> (logits [B, vocab], cache)."""
        from flax import nnx

        model = nnx.merge(self.graphdef, params)
        logits, cache = model.decode(token[:, None], position[:, None], cache)
        return logits[:, 0], cache


@dataclasses.dataclass(frozen=True)
class FullRecompute:
    """Any (params, tokens [B, S]) -> logits [B, S, vocab] decoded without a cache: each step
    re-runs it on the whole [B, cache_len] token buffer and reads the logits at `position`."""

    apply: Callable[[Any, jax.Array], jax.Array]

    def prefill(self, params: Any, tokens: jax.Array, cache_len: int) -> tuple[jax.Array, Any]:
        buf = jnp.zeros((tokens.shape[0], cache_len), jnp.int32).at[:, :tokens.shape[1]].set(
            tokens)
        return self.apply(params, tokens), buf

    def step(self, params: Any, buf: Any, token: jax.Array, position: jax.Array
             ) -> tuple[jax.Array, Any]:
        rows = jnp.arange(buf.shape[0])
        buf = buf.at[rows, position].set(token)
        logits = self.apply(params, buf)
        return logits[rows, position], buf


# ----------------------------------------------------------------------------- sampling


def _sample(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
            keys: jax.Array) -> jax.Array:
    """One token per row (module doc); logits float32 [B, V], settings [B], keys [B] -> [B]."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled() -> jax.Array:
        vocab = logits.shape[-1]
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        desc = -jnp.sort(-scaled, axis=-1)  # [B, V], largest first
        k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
        kth = jnp.take_along_axis(desc, (k - 1)[:, None], axis=-1)  # [B, 1]
        desc = jnp.where(desc >= kth, desc, -jnp.inf)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        n_keep = jnp.maximum(1, jnp.sum(before < top_p[:, None], axis=-1))
        pth = jnp.take_along_axis(desc, (n_keep - 1)[:, None], axis=-1)
        masked = jnp.where(scaled >= jnp.maximum(kth, pth), scaled, -jnp.inf)
        drawn = jax.vmap(jax.random.categorical)(keys, masked).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), sampled, lambda: greedy)


def _top(logp: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    values, ids = jax.lax.top_k(logp, n)
    return ids.astype(jnp.int32), values


def _stop_hit(buf: jax.Array, pos: jax.Array, lengths: jax.Array, stop_ids: jax.Array,
              stop_lens: jax.Array) -> jax.Array:
    """bool [B]: the generated tokens of row b, ending at pos[b], end with one of its stops.
    buf [B, T]; stop_ids [B, MAX_STOPS, STOP_TOKENS] (-1 padded); stop_lens [B, MAX_STOPS]."""
    j = jnp.arange(stop_ids.shape[-1])
    start = pos[:, None] - stop_lens + 1  # [B, S]
    idx = start[..., None] + j  # [B, S, L]
    got = jnp.take_along_axis(buf[:, None, :], jnp.clip(idx, 0, buf.shape[1] - 1), axis=-1)
    same = jnp.where(j < stop_lens[..., None], got == stop_ids, True).all(-1)
    return jnp.any(same & (stop_lens > 0) & (start >= lengths[:, None]), axis=-1)


@functools.partial(jax.jit, static_argnames=("decoder", "cache_len", "logprobs"))
def _generate(decoder: Any, params: Any, prompt: jax.Array, lengths: jax.Array,
              max_new: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
              seeds: jax.Array, index: jax.Array, eos: jax.Array, stop_ids: jax.Array,
              stop_lens: jax.Array, *, cache_len: int, logprobs: bool) -> dict[str, jax.Array]:
    """The compiled prefill + decode loop (module doc). prompt int32 [B, P] right-padded,
    lengths/max_new/settings [B]; returns the token buffer [B, cache_len] and per-step arrays."""
    b = prompt.shape[0]
    rows = jnp.arange(b)
    logits_all, state = decoder.prefill(params, prompt, cache_len)
    out: dict[str, jax.Array] = {}
    if logprobs:  # the prompt's own scores, for echo
        logp_all = jax.nn.log_softmax(logits_all, axis=-1)
        out["prompt_lp"] = jnp.take_along_axis(logp_all[:, :-1], prompt[:, 1:, None], -1)[..., 0]
        out["prompt_top_ids"], out["prompt_top_lp"] = _top(logp_all[:, :-1], TOP_LOGPROBS)
    first = logits_all[rows, lengths - 1]
    buf = jnp.zeros((b, cache_len), jnp.int32).at[:, :prompt.shape[1]].set(prompt)
    keys = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(seeds, index)
    n_top = TOP_LOGPROBS if logprobs else 1
    carry0 = dict(
        i=jnp.int32(0), state=state, logits=first, buf=buf,
        lp=jnp.zeros((b, cache_len), jnp.float32),
        top_ids=jnp.zeros((b, cache_len, n_top), jnp.int32),
        top_lp=jnp.zeros((b, cache_len, n_top), jnp.float32),
        n=jnp.zeros(b, jnp.int32), done=max_new <= 0, eos=jnp.zeros(b, bool),
    )

    def cond(c: dict) -> jax.Array:
        return ~jnp.all(c["done"])

    def body(c: dict) -> dict:
        i, logits, done = c["i"], c["logits"], c["done"]
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
        tok = _sample(logits, temperature, top_k, top_p, step_keys)
        logp = jax.nn.log_softmax(logits, axis=-1)
        pos = lengths + c["n"]  # where the new token goes
        live = ~done
        is_eos = live & (tok == eos)
        keep = live & ~is_eos
        buf = c["buf"].at[rows, pos].set(jnp.where(keep, tok, c["buf"][rows, pos]))
        lp = c["lp"].at[rows, c["n"]].set(jnp.where(keep, logp[rows, tok], 0.0))
        top_ids, top_lp = c["top_ids"], c["top_lp"]
        if logprobs:
            ids, vals = _top(logp, TOP_LOGPROBS)
            top_ids = top_ids.at[rows, c["n"]].set(jnp.where(keep[:, None], ids, 0))
            top_lp = top_lp.at[rows, c["n"]].set(jnp.where(keep[:, None], vals, 0.0))
        n = c["n"] + keep
        stop = _stop_hit(buf, pos, lengths, stop_ids, stop_lens) & keep
        done = done | is_eos | stop | (n >= max_new) | (lengths + n >= cache_len)
        # The next step's logits (wasted once, after every row has stopped).
        logits, state = decoder.step(params, c["state"], jnp.where(keep, tok, 0),
                                     jnp.minimum(pos, cache_len - 1))
        return dict(i=i + 1, state=state, logits=logits, buf=buf, lp=lp, top_ids=top_ids,
                    top_lp=top_lp, n=n, done=done, eos=c["eos"] | is_eos)

    c = jax.lax.while_loop(cond, body, carry0)
    out.update(buf=c["buf"], n=c["n"], eos=c["eos"], lp=c["lp"])
    if logprobs:
        out.update(top_ids=c["top_ids"], top_lp=c["top_lp"])
    return out


# ----------------------------------------------------------------------------- the generator


class Generator:
    """Batched decoding of a model with its tokenizer (module doc).

    decoder, params: `CachedDecoder.build(graphdef, params)`, or FullRecompute(apply) and its
    parameters; max_len: the model's window (prompt + continuation, in tokens, BOS included);
    max_batch: rows per compiled call (larger lists run in several calls).
    """

    def __init__(self, decoder: Any, params: Any, tokenizer: Any, max_len: int, *,
                 max_batch: int = 32, min_len: int = MIN_BUCKET):
        self.decoder = decoder
        self.params = params
        self.tokenizer = tokenizer
        self.max_len = int(max_len)
        self.max_batch = int(max_batch)
        self.min_len = int(min_len)

    def encode(self, text: str) -> list[int]:
        """BOS + the text's ids: every training document starts with BOS."""
        return [int(self.tokenizer.bos_id), *self.tokenizer.encode(text).tolist()]

    def token_text(self, token: int) -> str:
        """One token as text, special tokens by name (for logprob listings)."""
        return self.tokenizer.decode([int(token)], skip_special_tokens=False)

    def check(self, request: Request, prefix: str = "--") -> None:
        """UserError naming the field when a request cannot run (see `fit`)."""
        if not isinstance(request.max_new_tokens, int) or request.max_new_tokens < 0:
            raise UserError(f"{prefix}max_new_tokens: must be an integer >= 0, got "
                            f"{request.max_new_tokens!r}")
        request.sampling.check(prefix)
        if len(request.prompt) < 1:
            raise UserError(f"{prefix}prompt: empty (it needs at least BOS)")
        if request.max_new_tokens >= self.max_len:
            raise UserError(f"{prefix}max_new_tokens: {request.max_new_tokens} does not fit the "
                            f"model's window of {self.max_len} tokens with a prompt")
        total = len(request.prompt) + request.max_new_tokens
        if total > self.max_len:
            raise UserError(
                f"{prefix}prompt: {len(request.prompt)} prompt tokens + {request.max_new_tokens} "
                f"new tokens exceed the model's window of {self.max_len} tokens (shorten the "
                f"prompt or max_new_tokens, or truncate the prompt from the left)")

    def fit(self, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        """The prompt cut from the left (keeping BOS) so that it and max_new_tokens fit."""
        room = self.max_len - max_new_tokens
        if room < 2:
            raise UserError(f"--max_new_tokens: {max_new_tokens} leaves no room for a prompt in "
                            f"the model's window of {self.max_len} tokens")
        prompt = list(prompt)
        return prompt if len(prompt) <= room else [prompt[0], *prompt[len(prompt) - room + 1:]]

    def generate(self, requests: Sequence[Request], *, logprobs: bool = False
                 ) -> list[Completion]:
        """Completions of `requests`, in order (each checked first: UserError on a bad one)."""
        for r in requests:
            self.check(r)
        out: list[Completion | None] = [None] * len(requests)
        # Similar lengths share a call; each call is one compiled program of bucketed shapes.
        order = sorted(range(len(requests)),
                       key=lambda i: -(len(requests[i].prompt) + requests[i].max_new_tokens))
        for start in range(0, len(order), self.max_batch):
            rows = order[start:start + self.max_batch]
            for i, c in zip(rows, self._batch([requests[i] for i in rows], logprobs),
                            strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    def _stop_arrays(self, requests: Sequence[Request], b: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((b, MAX_STOPS, STOP_TOKENS), -1, np.int32)
        lens = np.zeros((b, MAX_STOPS), np.int32)
        for r, req in enumerate(requests):
            # The first MAX_STOPS stops end the loop early; every stop cuts the text (host).
            for s, text in enumerate([t for t in req.stop if t][:MAX_STOPS]):
                enc = self.tokenizer.encode(text).tolist()
                if 0 < len(enc) <= STOP_TOKENS:
                    ids[r, s, :len(enc)] = enc
                    lens[r, s] = len(enc)
        return ids, lens

    def _batch(self, requests: Sequence[Request], logprobs: bool) -> list[Completion]:
        n = len(requests)
        b = bucket(n, 1, max(n, self.max_batch))
        p = bucket(max(len(r.prompt) for r in requests), self.min_len, self.max_len)
        cache_len = bucket(max(len(r.prompt) + r.max_new_tokens for r in requests),
                           self.min_len, self.max_len)
        p = min(p, cache_len)
        pad = int(self.tokenizer.pad_id)
        pad = pad if 0 <= pad < self.tokenizer.vocab_size else 0
        prompt = np.full((b, p), pad, np.int32)
        lengths = np.ones(b, np.int32)
        max_new = np.zeros(b, np.int32)  # padding rows stop at once
        temperature = np.zeros(b, np.float32)
        top_k = np.zeros(b, np.int32)
        top_p = np.ones(b, np.float32)
        seeds = np.zeros(b, np.uint32)
        index = np.zeros(b, np.int32)
        for r, req in enumerate(requests):
            prompt[r, :len(req.prompt)] = req.prompt
            lengths[r] = len(req.prompt)
            max_new[r] = req.max_new_tokens
            s = req.sampling
            temperature[r], top_k[r], top_p[r] = s.temperature, s.top_k, s.top_p
            seeds[r], index[r] = s.seed, req.index
        stop_ids, stop_lens = self._stop_arrays(requests, b)
        res = jax.device_get(_generate(
            self.decoder, self.params, prompt, lengths, max_new, temperature, top_k, top_p,
            seeds, index, np.int32(self.tokenizer.eos_id), stop_ids, stop_lens,
            cache_len=cache_len, logprobs=logprobs))
        return [self._completion(req, r, res, logprobs) for r, req in enumerate(requests)]

    def _completion(self, req: Request, r: int, res: dict, logprobs: bool) -> Completion:
        length, count = len(req.prompt), int(res["n"][r])
        tokens = res["buf"][r, length:length + count].tolist()
        text = self.tokenizer.decode(tokens)
        cut, hit = cut_at_stop(text, req.stop)
        if hit:  # keep the tokens whose text comes before the stop sequence
            while tokens and len(self.tokenizer.decode(tokens)) > len(cut):
                tokens.pop()
        finish = "stop" if hit or bool(res["eos"][r]) else "length"
        c = Completion(tokens=tokens, text=cut, finish_reason=finish,
                       logprobs=res["lp"][r, :len(tokens)].astype(float).tolist())
        if logprobs:
            c.top_logprobs = _pairs(res["top_ids"][r, :len(tokens)], res["top_lp"][r])
            c.prompt_logprobs = [None, *res["prompt_lp"][r, :length - 1].astype(float).tolist()]
            c.prompt_top_logprobs = [None, *_pairs(res["prompt_top_ids"][r, :length - 1],
                                                   res["prompt_top_lp"][r])]
        return c


def _pairs(ids: np.ndarray, lps: np.ndarray) -> list[list[tuple[int, float]]]:
    return [[(int(t), float(v)) for t, v in zip(row, lps[i], strict=True)]
            for i, row in enumerate(ids)]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest occurrence of any non-empty stop string, whether one occurred)."""
    ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(ends)], True) if ends else (text, False)
