"""In-context learning and induction heads (Olsson et al. 2022, "In-context Learning and Induction
Heads").

- `icl_score`: loss at a late token minus loss at an early token of the same documents, averaged
  over documents (nats). Negative = later tokens are predicted better, i.e. the model uses its
  context. Olsson et al. take the 500th and the 50th token of 512; we scale those positions to the
  run's window L: early = round(50/512 * L), late = round(500/512 * L) (6 and 62 for L = 64,
  12 and 125 for L = 128, 50 and 500 for L = 512). Position p is the p-th document token after BOS,
  predicted from BOS and the p - 1 tokens before it.
- `prefix_matching_scores` [layers, heads]: on random token sequences repeated twice, the mean
  attention weight from each token of the second copy to the token that followed that token's
  occurrence in the first copy. Tokens within one sequence are distinct when the pool allows;
  otherwise only tokens that occur once in the first copy are scored (their match is unique).
- `copying_scores` [layers, heads]: Olsson et al.'s copying eigenvalue score of each head's OV
  circuit, sum(Re λ) / sum(|λ|) in [-1, 1] over the eigenvalues λ of
  W_E · diag(g_norm) · W_V^h · W_O^h · diag(g_final) · W_U restricted to a token pool. Positive:
  attending to a token raises that token's own logit (the head copies). Direct path only: it
  ignores the RMS normalisation's per-token scalar and what earlier layers add to the stream.
- `strongest_induction_head`: the head with the highest prefix-matching score among heads that
  copy (copying score > 0; all heads when none does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from llmjax.eval.harness import LM


@dataclasses.dataclass(frozen=True)
class ICLScore:
    """score = late_loss - early_loss (nats), over n_docs documents of >= late tokens."""

    score: float
    early_loss: float
    late_loss: float
    early: int
    late: int
    n_docs: int
    stderr: float  # standard error of the per-document differences


def default_icl_positions(context_len: int) -> tuple[int, int]:
    """(early, late) token positions: Olsson's 50th and 500th of 512 scaled to context_len."""
    early = max(1, round(50 / 512 * context_len))
    late = max(early + 1, min(context_len, round(500 / 512 * context_len)))
    return early, late


def icl_score(lm: LM, texts: Sequence[str], early: int | None = None,
              late: int | None = None) -> ICLScore:
    """Olsson et al.'s in-context-learning score on documents `texts` (see module doc).

    Documents shorter than `late` tokens are skipped; each kept one contributes
    loss(late) - loss(early). Positions default to `default_icl_positions(lm.max_len)`.
    """
    d_early, d_late = default_icl_positions(lm.max_len)
    early = d_early if early is None else int(early)
    late = d_late if late is None else int(late)
    if not 1 <= early < late <= lm.max_len:
        raise ValueError(f"need 1 <= early < late <= {lm.max_len}; got early={early}, "
                         f"late={late}")
    seqs = []
    for text in texts:
        ids = lm.encode_context(text)
        if len(ids) > late:
            seqs.append(ids[:late + 1])  # position p is ids[p]; nothing after `late` is needed
    if not seqs:
        raise ValueError(f"no document has {late} tokens (the ICL score's late position)")
    scores = lm.score_tokens(seqs, [late] * len(seqs))  # logprobs[i] scores position i + 1
    early_nll = np.array([-s.logprobs[early - 1] for s in scores])
    late_nll = np.array([-s.logprobs[late - 1] for s in scores])
    diff = late_nll - early_nll
    stderr = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return ICLScore(score=float(diff.mean()), early_loss=float(early_nll.mean()),
                    late_loss=float(late_nll.mean()), early=early, late=late,
                    n_docs=len(diff), stderr=stderr)


# ----------------------------------------------------------------------------- induction heads


def repeated_random_tokens(pool: Sequence[int], seq_len: int, n_seqs: int, seed: int,
                           bos_id: int | None = None) -> np.ndarray:
    """int32 [n_seqs, (1 +) 2 * seq_len]: [BOS] + r + r for random r of seq_len pool tokens,
    distinct within r when len(pool) >= seq_len (else drawn with replacement)."""
    pool = np.asarray(pool, dtype=np.int32)
    rng = np.random.default_rng(seed)
    distinct = len(pool) >= seq_len
    rows = np.stack([rng.choice(pool, seq_len, replace=not distinct) for _ in range(n_seqs)])
    out = np.concatenate([rows, rows], axis=1)
    if bos_id is not None:
        out = np.concatenate([np.full((n_seqs, 1), bos_id, np.int32), out], axis=1)
    return out.astype(np.int32)


def prefix_matching_from_attention(probs: np.ndarray, first_copies: np.ndarray,
                                   offset: int = 0) -> np.ndarray:
    """float64 [layers, heads] from attention probs [layers, batch, heads, q, k] over sequences
    [prefix of `offset` tokens] + r + r, r = first_copies[b] [T].

    Query i of the second copy (position offset + T + i) is scored by its weight on position
    offset + i + 1, the token after its occurrence in the first copy (for the last i that is the
    first token of the second copy). Only tokens occurring once in r count, so that occurrence is
    unambiguous; the mean runs over those queries and the batch.
    """
    first = np.asarray(first_copies)
    n, t = first.shape
    i = np.arange(t)
    picked = np.asarray(probs)[:, :, :, offset + t + i, offset + i + 1]  # [L, n, H, T]
    unique = np.array([[np.sum(row == row[j]) == 1 for j in range(t)] for row in first], float)
    if unique.sum() == 0:
        raise ValueError("no token occurs exactly once in the repeated sequences")
    w = unique[None, :, None, :]
    return ((picked * w).sum(axis=(1, 3)) / unique.sum()).astype(np.float64)


def prefix_matching_scores(model: Any, vocab_size: int, seq_len: int, n_seqs: int = 16,
                           seed: int = 0, *, tokens: Sequence[int] | None = None,
                           bos_id: int | None = None) -> np.ndarray:
    """float64 [layers, heads]: mean attention from each token of the second copy of a repeated
    random sequence to the token that followed its occurrence in the first copy (module doc).

    model: a `llmjax.model.Transformer`; tokens: the pool to draw from (default range(vocab_size));
    bos_id: prepend BOS (as training documents start); needs (1 +) 2 * seq_len <= max_seq_len.
    """
    from llmjax.model import attention_weights

    pool = np.arange(vocab_size) if tokens is None else np.asarray(tokens)
    batch = repeated_random_tokens(pool, seq_len, n_seqs, seed, bos_id)
    off = 0 if bos_id is None else 1
    probs = np.asarray(attention_weights(model, jnp.asarray(batch)))  # [L, n, H, q, k]
    return prefix_matching_from_attention(probs, batch[:, off:off + seq_len], off)


def _attention_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer: (attention pre-norm gain [d], W_V [d, kv, dh], W_O [h, dh, d]) as numpy."""
    def get(x: Any) -> np.ndarray:
        return np.asarray(x[...], dtype=np.float64)

    if model.cfg.scan_layers:
        g, wv, wo = (get(model.blocks.attn_norm.scale), get(model.blocks.attn.wv),
                     get(model.blocks.attn.wo))
        return [(g[i], wv[i], wo[i]) for i in range(model.cfg.n_layers)]
    return [(get(b.attn_norm.scale), get(b.attn.wv), get(b.attn.wo)) for b in model.blocks]


def copying_scores(model: Any, tokens: Sequence[int] | None = None) -> np.ndarray:
    """float64 [layers, heads]: OV-circuit copying eigenvalue score (module doc), over the token
    pool `tokens` (default: every id)."""
    cfg = model.cfg
    embed = np.asarray(model.embed[...], np.float64)  # [V, d]
    w_u = embed.T if model.unembed is None else np.asarray(model.unembed[...], np.float64)
    pool = np.arange(cfg.vocab_size) if tokens is None else np.asarray(tokens)
    g_final = np.asarray(model.final_norm.scale[...], np.float64)
    # U E: [d, d] maps the residual direction written by a head back through tokens' embeddings.
    readback = (g_final[:, None] * w_u[:, pool]) @ embed[pool]  # [d, d]
    group = cfg.n_heads // cfg.kv_heads
    out = np.zeros((cfg.n_layers, cfg.n_heads))
    for layer, (g, wv, wo) in enumerate(_attention_layers(model)):
        for h in range(cfg.n_heads):
            v = g[:, None] * wv[:, h // group, :]  # [d, dh]
            # Nonzero eigenvalues of E g W_V W_O g_f U (pool x pool) = those of this dh x dh.
            lam = np.linalg.eigvals(wo[h] @ readback @ v)
            total = np.sum(np.abs(lam))
            out[layer, h] = float(np.sum(lam.real) / total) if total > 0 else 0.0
    return out


@dataclasses.dataclass(frozen=True)
class InductionHead:
    layer: int
    head: int
    prefix_matching: float
    copying: float | None


def strongest_induction_head(prefix_matching: np.ndarray,
                             copying: np.ndarray | None = None) -> InductionHead:
    """The head with the highest prefix-matching score among copying heads (module doc)."""
    pm = np.asarray(prefix_matching, np.float64)
    masked = pm
    if copying is not None and np.any(np.asarray(copying) > 0):
        masked = np.where(np.asarray(copying) > 0, pm, -np.inf)
    layer, head = np.unravel_index(int(np.argmax(masked)), pm.shape)
    return InductionHead(int(layer), int(head), float(pm[layer, head]),
                         None if copying is None else float(np.asarray(copying)[layer, head]))
