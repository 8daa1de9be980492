"""Parameter counts and training FLOPs per token, from the config alone (no allocation).

Conventions (1 multiply-add = 2 FLOPs; per token means per position of a [batch, seq] input):

Parameters (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1):
  N = non-embedding parameters = everything except "all vocabulary and positional embeddings":
  total minus the token embedding [vocab, d_model], the learned position embedding
  [max_seq_len, d_model] (positions='learned') and, when untied, the output (unembedding) matrix
  [d_model, vocab]. An untied unembedding counts as an embedding because it is a vocabulary matrix
  (Kaplan's "de-embedding", which his 6N also leaves out). Norm scales/biases count as
  non-embedding. The counts are the real model's: `jax.eval_shape` of the Transformer constructor.

FLOPs (Kaplan 2020 table 1; Hoffmann et al. 2022 "Chinchilla", appendix F):
  dense forward    = 2 x matmul_params, where matmul_params = every weight matrix a token is
                     multiplied by: q, k, v, o and MLP matrices of all layers plus the unembedding
                     [d_model, vocab] (always a matmul, tied or not). The embedding lookup is a
                     gather and norms/softmax/rope are elementwise: not counted, as in both papers.
  attention forward = Q·Kᵀ and probs·V, each 2 x context x d_attn per layer per token, with
                     d_attn = n_heads x head_dim (grouped-query attention shares k/v heads but does
                     the same number of score FLOPs). Chinchilla counts full attention, context =
                     seq_len: 4 x n_layers x seq_len x d_attn. With the causal mask the token at
                     position t (1-based) attends to t tokens, averaging (seq_len + 1) / 2, so
                     attention forward = 2 x n_layers x (seq_len + 1) x d_attn.
  training         = 3 x forward (backward = 2 x forward: gradients w.r.t. activations and weights)
                   = dense_6n + attention, dense_6n = 6 x matmul_params.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from flax import nnx

from llmjax.model.config import BIAS_NAMES, ModelConfig
from llmjax.model.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (elements). total = non_embedding + embedding.

    embedding = token embedding + learned positions + untied unembedding (0 if tied);
    `unembedding` repeats the untied part so other conventions can be derived.
    """

    total: int
    non_embedding: int
    embedding: int
    unembedding: int


@dataclasses.dataclass(frozen=True)
class FlopCounts:
    """FLOPs per token (see module docstring). training = dense_6n + attention = 3 x forward."""

    forward: int
    training: int
    dense_6n: int
    attention: int
    matmul_params: int


# Parameter paths (first path element) that are embeddings in Kaplan's sense.
_EMBEDDING_PATHS = ("embed", "pos_embed", "unembed")


@functools.lru_cache(maxsize=256)
def _param_sizes(cfg: ModelConfig) -> dict[tuple, int]:
    """{parameter path: number of elements} of the real model, built abstractly (cached: param
    counts and FLOPs per token both need it; callers only read the dict)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return {
        tuple(path): math.prod(var.get_value().shape)
        for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    }


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Total / non-embedding / embedding parameter counts (Kaplan convention, module docstring)."""
    sizes = _param_sizes(cfg)
    embedding = sum(n for path, n in sizes.items() if path[0] in _EMBEDDING_PATHS)
    unembedding = sum(n for path, n in sizes.items() if path[0] == "unembed")
    total = sum(sizes.values())
    return ParamCounts(
        total=total, non_embedding=total - embedding, embedding=embedding, unembedding=unembedding
    )


def matmul_params(cfg: ModelConfig) -> int:
    """Weight-matrix elements each token is multiplied by: block matrices + [d_model, vocab]."""
    sizes = _param_sizes(cfg)
    blocks = sum(
        n
        for path, n in sizes.items()
        if path[0] == "blocks" and not any("norm" in str(p) for p in path)
        and str(path[-1]) not in BIAS_NAMES
    )
    return blocks + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> FlopCounts:
    """Forward and training FLOPs per token for sequences of `seq_len` (default max_seq_len)."""
    seq_len = cfg.max_seq_len if seq_len is None else seq_len
    n_mm = matmul_params(cfg)
    d_attn = cfg.n_heads * cfg.head_dim
    dense_forward = 2 * n_mm
    attention_forward = 2 * cfg.n_layers * (seq_len + 1) * d_attn  # causal: mean context (L+1)/2
    forward = dense_forward + attention_forward
    return FlopCounts(
        forward=forward,
        training=3 * forward,
        dense_6n=3 * dense_forward,
        attention=3 * attention_forward,
        matmul_params=n_mm,
    )
