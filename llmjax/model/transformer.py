"""A decoder-only transformer (GPT) in Flax NNX, readable top to bottom.

    tokens [batch, seq]
      -> token embedding (+ learned positions)                  x: [batch, seq, d_model]
      -> n_layers x Block:  x = x + Attention(Norm(x))           (pre-norm, causal)
                            x = x + MLP(Norm(x))                 (skipped for mlp='none')
      -> final Norm -> unembedding (tied: embedding transposed)  logits: [batch, seq, vocab] float32

Attention is softmax(Q Kᵀ · scale) V with a causal mask, scale = 1/sqrt(head_dim) in 'sp' and
sqrt(base head_dim)/head_dim in 'mup' (see config.attention_scale; init scales and the logit
multiplier also come from llmjax/model/config.py). The 'fused' path calls
jax.nn.dot_product_attention (a fused kernel on GPU); `reference_attention` is the same math
written out, used for tests, on the CPU backend and whenever attention weights are captured.

dtype policy: parameters are stored in cfg.param_dtype, cast to cfg.compute_dtype where used;
norms, softmax and logits are computed in float32.

Parameters are plain nnx.Param arrays (bias vectors only with cfg.use_bias, and LayerNorm's)
whose `out_sharding` metadata holds logical axis names; llmjax.sharding maps them to the mesh.
With scan_layers the blocks are created once under nnx.vmap (every parameter gets a leading
'layers' axis) and run with nnx.scan, so compile time does not grow with depth.

CPU fast paths (same math, same parameters; measured with experiments/bench/compare_torch.py on a
2-core Xeon, A/B in one process): every weight matmul goes through `dense`, whose hand-written
backward keeps XLA CPU from fusing a transpose into the gradient's elementwise producer (1.4x
steps/s at the 12M shape); on the CPU backend, in calls that will be differentiated (the train
step passes `training=True`), the layer scan is fully unrolled (1.25-1.35x) and attention='fused'
runs the written-out attention (1.08x; jax.nn.dot_product_attention has no fused CPU kernel).
Forward-only calls (evals, probes) keep the scan loop and jax.nn.dot_product_attention: with the
training paths a probe checkpoint of the demo's d64_l3 took ~20 s instead of ~14.5 s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.model.config import ModelConfig, attention_scale, init_std, logit_multiplier
from llmjax.sharding import constrain, state_shardings

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmuls
}


def _param(
    key: jax.Array, shape: Sequence[int], std: float, axes: tuple[str | None, ...], dtype: Any
) -> nnx.Param:
    """A normal(0, std) parameter tagged with logical axis names (drawn in float32, then cast)."""
    value = std * jax.random.normal(key, tuple(shape), dtype=jnp.float32)
    # eager_sharding=False: the model builds without a mesh; llmjax.sharding places it later.
    return nnx.Param(value.astype(dtype), out_sharding=axes, eager_sharding=False)


def _bias(cfg: ModelConfig, shape: Sequence[int], axes: tuple[str | None, ...]) -> nnx.Param | None:
    """A zero bias vector when cfg.use_bias, else None (GPT-2's projections have them)."""
    if not cfg.use_bias:
        return None
    return nnx.Param(jnp.zeros(tuple(shape), cfg.param_jnp_dtype), out_sharding=axes,
                     eager_sharding=False)


def _add(y: jax.Array, bias: nnx.Param | None) -> jax.Array:
    return y if bias is None else y + bias[...].astype(y.dtype)


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., d_in] @ w [d_in, d_out] -> [..., d_out] (the einsum '...i,io->...o').

    Same value and gradients as the einsum; the custom backward computes the weight gradient as
    dot_general(x, g) contracting the leading (token) axes, giving [d_in, d_out] directly. JAX's
    own transpose rule computes it as (gᵀ x)ᵀ, and XLA CPU then writes gᵀ from inside the fused
    elementwise backward that produces g (e.g. GELU's derivative): a transposed store that cost
    27-30% of the whole step at the 12M shape (profiled: f32[1536,2048] copy fusions at 3x the
    time of the matmul they feed). Here the only transpose is of x, a saved residual, which XLA
    folds into the matmul: 1.42x steps/s at 6 layers x d 384 x seq 256, loss bitwise equal.
    """
    return jnp.einsum("...i,io->...o", x, w)


def _dense_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return dense(x, w), (x, w)


def _dense_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    lead = tuple(range(x.ndim - 1))
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())))
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def _on_cpu() -> bool:
    """True when computations run on the CPU backend (decides the CPU fast paths at trace time)."""
    return jax.default_backend() == "cpu"


def _cpu_training_paths(training: bool) -> bool:
    """The unrolled scan and written-out attention: for differentiated calls on the CPU."""
    return training and _on_cpu()


# ---- building blocks ---------------------------------------------------------------------------


class Norm(nnx.Module):
    """RMSNorm (scale only) or LayerNorm (scale and bias), computed in float32. [..., d_model]."""

    def __init__(self, cfg: ModelConfig):
        self.kind = cfg.norm
        self.eps = cfg.norm_eps
        dtype = cfg.param_jnp_dtype
        self.scale = nnx.Param(
            jnp.ones((cfg.d_model,), dtype), out_sharding=("norm",), eager_sharding=False
        )
        self.bias = (
            nnx.Param(
                jnp.zeros((cfg.d_model,), dtype), out_sharding=("norm",), eager_sharding=False
            )
            if cfg.norm == "layernorm"
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        if self.kind == "layernorm":
            h = h - h.mean(axis=-1, keepdims=True)
        h = h * jax.lax.rsqrt((h * h).mean(axis=-1, keepdims=True) + self.eps)
        h = h * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            h = h + self.bias[...].astype(jnp.float32)
        return h.astype(x.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(sin, cos), float32 [seq_len, head_dim // 2]: angle = position * theta^(-2i/head_dim)."""
    return rope_at(jnp.arange(seq_len), head_dim, theta)


def rope_at(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(sin, cos), float32 [*positions.shape, head_dim // 2] at the given absolute positions."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate pairs (x[i], x[i + head_dim/2]) by the position angle. x: [batch, seq, heads, dim];
    sin, cos: [seq, dim/2] (shared by the batch) or [batch, seq, dim/2] (a position per row)."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin[..., None, :], cos[..., None, :]  # broadcast over heads
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def reference_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, scale: float
) -> tuple[jax.Array, jax.Array]:
    """Causal softmax(Q Kᵀ · scale) V, written out.

    q: [batch, seq, heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim] (heads % kv_heads == 0;
    query head h reads kv head h // (heads // kv_heads), as in jax.nn.dot_product_attention).
    Returns (out [batch, seq, heads, head_dim] in q.dtype, probs float32 [batch, heads, q, k]).
    """
    group = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    seq = q.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return out, probs


# A decode step's attention for up to this many (row, kv head) pairs runs as that many 2-D dots
# on static slices of the cache. XLA CPU copies a while-loop-carried buffer that a batched dot
# reads (twice per cache per step), not one a 2-D dot reads: at the 12M shape, batch 1, 256
# slots, 61 -> 11-21 us per attention dot, 3.8 -> 2.5 ms per token. Larger batches keep the
# batched einsum (the unrolled dots multiply the program's size and its compile time).
UNROLLED_DECODE_ATTENTION = 8


def _small_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                            scale: float) -> jax.Array:
    """q [batch, kv, group, dh]; k, v [batch, kv, len, dh]; mask [batch, len] ->
    [batch, kv, group, dh], one (row, kv head) at a time (UNROLLED_DECODE_ATTENTION)."""
    rows = []
    for b in range(q.shape[0]):
        heads = []
        for h in range(q.shape[1]):
            logits = jnp.dot(q[b, h], k[b, h].T, preferred_element_type=jnp.float32) * scale
            logits = jnp.where(mask[b][None], logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            heads.append(jnp.dot(probs, v[b, h]))
        rows.append(jnp.stack(heads))
    return jnp.stack(rows)


def _write_cache(cache: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """cache [batch, kv, len, dh] with new [batch, s, kv, dh] written at slots positions[b, :]
    (consecutive). For a decode step of a small batch, one dynamic_update_slice per row (in
    place; vmap's batched one becomes a select of the old slot, measured 3.3 against 2.6 ms per
    token at the 12M shape, batch 1, 256 slots); otherwise vmap's."""
    new = new.astype(cache.dtype)
    if new.shape[1] == 1 and cache.shape[0] <= UNROLLED_DECODE_ATTENTION:
        for b in range(cache.shape[0]):
            cache = jax.lax.dynamic_update_slice(
                cache, new[b:b + 1].transpose(0, 2, 1, 3), (b, 0, positions[b, 0], 0))
        return cache

    def write(row: jax.Array, block: jax.Array, start: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice(row, block.transpose(1, 0, 2), (0, start, 0))

    return jax.vmap(write)(cache, new, positions[:, 0])


class Attention(nnx.Module):
    """Causal multi-head / grouped-query self-attention. [batch, seq, d_model] -> same."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, dh, dtype = (
            cfg.d_model,
            cfg.n_heads,
            cfg.kv_heads,
            cfg.head_dim,
            cfg.param_jnp_dtype,
        )
        std_in, std_out = init_std(cfg, "in"), init_std(cfg, "out")
        std_q = init_std(cfg, "query")  # = std_in, except muP's optional zero-init query
        self.wq = _param(rngs.params(), (d, h, dh), std_q, ("embed", "heads", "head_dim"), dtype)
        self.wk = _param(
            rngs.params(), (d, kv, dh), std_in, ("embed", "kv_heads", "head_dim"), dtype
        )
        self.wv = _param(
            rngs.params(), (d, kv, dh), std_in, ("embed", "kv_heads", "head_dim"), dtype
        )
        self.wo = _param(rngs.params(), (h, dh, d), std_out, ("heads", "head_dim", "embed"), dtype)
        self.bq = _bias(cfg, (h, dh), ("heads", "head_dim"))
        self.bk = _bias(cfg, (kv, dh), ("kv_heads", "head_dim"))
        self.bv = _bias(cfg, (kv, dh), ("kv_heads", "head_dim"))
        self.bo = _bias(cfg, (d,), ("embed",))
        self.scale = attention_scale(cfg)
        self.implementation = cfg.attention

    def _qkv(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q [batch, seq, heads, head_dim], k and v [batch, seq, kv_heads, head_dim], rotated."""
        dtype = x.dtype
        b, s, d = x.shape

        def project(w: jax.Array, bias: nnx.Param | None) -> jax.Array:
            # [d, heads, head_dim] as one [d, heads*head_dim]
            return _add(dense(x, w.astype(dtype).reshape(d, -1)).reshape(b, s, *w.shape[1:]), bias)

        q = project(self.wq[...], self.bq)
        k, v = project(self.wk[...], self.bk), project(self.wv[...], self.bv)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def _out(self, out: jax.Array) -> jax.Array:
        """[batch, seq, heads, head_dim] -> [batch, seq, d_model] through W_o."""
        wo = self.wo[...].astype(out.dtype)  # [heads, head_dim, d] as one [heads*head_dim, d]
        return _add(dense(out.reshape(*out.shape[:2], -1), wo.reshape(-1, wo.shape[-1])), self.bo)

    def __call__(
        self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, *, capture: bool = False,
        training: bool = False,
    ) -> jax.Array:
        q, k, v = self._qkv(x, rope)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        if capture or self.implementation == "reference" or (
                self.implementation == "fused" and _cpu_training_paths(training)):
            out, probs = reference_attention(q, k, v, self.scale)
            if capture:
                self.sow(nnx.Intermediate, "attention_weights", probs)
        else:
            impl = "cudnn" if self.implementation == "cudnn" else None
            out = jax.nn.dot_product_attention(q, k, v, scale=self.scale, is_causal=True,
                                               implementation=impl)
        return self._out(out)

    def decode(
        self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, positions: jax.Array,
        cache: tuple[jax.Array, jax.Array],
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Attention of new tokens x [batch, s, d] at `positions` int32 [batch, s] (consecutive
        per row) through this layer's KV cache (k, v: [batch, kv_heads, cache_len, head_dim]:
        heads before slots, so reading the cache needs no transpose).

        The new keys and values are written at their positions, then query i reads every slot
        j <= positions[b, i]; slots past a row's position may hold anything (they are masked).
        The same softmax(Q Kᵀ · scale) V as `reference_attention`, with GQA by grouping the query
        heads instead of repeating the cache. Returns (output [batch, s, d], the updated cache).
        """
        q, k, v = self._qkv(x, rope)
        k_cache, v_cache = cache

        k_cache, v_cache = _write_cache(k_cache, k, positions), _write_cache(v_cache, v, positions)
        b, s, h, dh = q.shape
        kv = k_cache.shape[1]
        qg = q.reshape(b, s, kv, h // kv, dh)  # query head h reads kv head h // (h / kv)
        kc, vc = k_cache.astype(q.dtype), v_cache.astype(q.dtype)
        slots = jnp.arange(k_cache.shape[2])
        mask = slots[None, None, :] <= positions[:, :, None]  # [batch, s, cache_len]
        if s == 1 and b * kv <= UNROLLED_DECODE_ATTENTION:
            out = _small_decode_attention(qg[:, 0], kc, vc, mask[:, 0], self.scale)[:, None]
        else:
            logits = jnp.einsum("bqkgd,bktd->bkgqt", qg, kc,
                                preferred_element_type=jnp.float32) * self.scale
            logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(vc.dtype)
            out = jnp.einsum("bkgqt,bktd->bqkgd", probs, vc)
        return self._out(out.reshape(b, s, h, dh)), (k_cache, v_cache)


class MLP(nnx.Module):
    """GELU MLP (d -> d_ff -> d) or SwiGLU (silu(x W_gate) * x W_up) W_down. [batch, seq, d]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, dtype = cfg.d_model, cfg.ff_dim, cfg.param_jnp_dtype
        std_in, std_out = init_std(cfg, "in"), init_std(cfg, "out")
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.w_gate = _param(rngs.params(), (d, f), std_in, ("embed", "mlp"), dtype)
        self.w_up = _param(rngs.params(), (d, f), std_in, ("embed", "mlp"), dtype)
        self.w_down = _param(rngs.params(), (f, d), std_out, ("mlp", "embed"), dtype)
        if cfg.mlp == "swiglu":
            self.b_gate = _bias(cfg, (f,), ("mlp",))
        self.b_up = _bias(cfg, (f,), ("mlp",))
        self.b_down = _bias(cfg, (d,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        up = _add(dense(x, self.w_up[...].astype(dtype)), self.b_up)
        if self.kind == "swiglu":
            gate = _add(dense(x, self.w_gate[...].astype(dtype)), self.b_gate)
            hidden = jax.nn.silu(gate) * up
        else:
            hidden = jax.nn.gelu(up, approximate=True)  # GPT-2's tanh approximation
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        return _add(dense(hidden, self.w_down[...].astype(dtype)), self.b_down)


class Block(nnx.Module):
    """Pre-norm residual block: x + drop(Attn(Norm(x))), then x + drop(MLP(Norm(x)))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = Norm(cfg)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = Norm(cfg) if cfg.mlp != "none" else None
        self.mlp = MLP(cfg, rngs=rngs) if cfg.mlp != "none" else None
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        dropout_key: jax.Array | None,
        *,
        deterministic: bool,
        capture: bool,
        training: bool = False,
    ) -> jax.Array:
        keys = (None, None) if dropout_key is None else jax.random.split(dropout_key)
        y = self.attn(self.attn_norm(x), rope, capture=capture, training=training)
        x = x + self.dropout(y, deterministic=deterministic, rngs=keys[0])
        if self.mlp is not None:
            y = self.mlp(self.mlp_norm(x))
            x = x + self.dropout(y, deterministic=deterministic, rngs=keys[1])
        return constrain(x, ("batch", "length", "act_embed"))

    def decode(
        self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None, positions: jax.Array,
        cache: tuple[jax.Array, jax.Array],
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """The block on new tokens through a KV cache (Attention.decode); no dropout."""
        y, cache = self.attn.decode(self.attn_norm(x), rope, positions, cache)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, cache


# ---- the model ---------------------------------------------------------------------------------


class Transformer(nnx.Module):
    """Decoder-only transformer; `model(tokens) -> logits`. The module docstring shows the shape."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, dtype = cfg.d_model, cfg.param_jnp_dtype
        self.embed = _param(
            rngs.params(), (cfg.vocab_size, d), init_std(cfg, "embed"), ("vocab", "embed"), dtype
        )
        self.pos_embed = (
            _param(
                rngs.params(),
                (cfg.max_seq_len, d),
                init_std(cfg, "pos_embed"),
                (None, "embed"),
                dtype,
            )
            if cfg.positions == "learned"
            else None
        )
        # One key per layer, drawn the same way for both layouts: same seed -> same parameters.
        layer_keys = jax.random.split(rngs.params(), cfg.n_layers)
        make_block = lambda key: Block(cfg, rngs=nnx.Rngs(params=key))
        if cfg.scan_layers:
            stacked = nnx.vmap(
                make_block, in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"}
            )
            self.blocks = stacked(layer_keys)
        else:
            self.blocks = nnx.List([make_block(layer_keys[i]) for i in range(cfg.n_layers)])
        self.final_norm = Norm(cfg)
        self.unembed = (
            None
            if cfg.tie_embeddings
            else _param(
                rngs.params(),
                (d, cfg.vocab_size),
                init_std(cfg, "unembed"),
                ("embed", "vocab"),
                dtype,
            )
        )
        self.embed_dropout = nnx.Dropout(cfg.dropout)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        capture_attention: bool = False,
        training: bool = False,
    ) -> jax.Array:
        """tokens int32 [batch, seq] -> logits float32 [batch, seq, vocab].

        training=True: this call will be differentiated (the train step); on the CPU backend it
        takes the layout that is faster with a backward pass (module docstring). Same values.

        deterministic=False applies dropout and needs `rngs` (an nnx.Rngs with a 'dropout' stream,
        or a PRNG key). capture_attention=True runs the reference attention and sows float32 probs
        [batch, heads, q, k] per layer as nnx.Intermediate 'attention_weights' (see
        `attention_weights()` for the functional way to read them).
        """
        return self._unembed(self.features(
            tokens, deterministic=deterministic, rngs=rngs, capture_attention=capture_attention,
            training=training))

    def features(
        self,
        tokens: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        capture_attention: bool = False,
        training: bool = False,
    ) -> jax.Array:
        """The final-normed hidden states [batch, seq, d_model] (compute dtype) that the
        unembedding reads: what a classification head (llmjax.finetune) reads instead.
        Arguments as `__call__`."""
        cfg = self.cfg
        dtype = cfg.compute_jnp_dtype
        seq = tokens.shape[1]
        if seq > cfg.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds model.max_seq_len={cfg.max_seq_len}")
        use_dropout = not deterministic and cfg.dropout > 0
        if use_dropout:
            if rngs is None:
                raise ValueError(
                    "dropout needs rngs (nnx.Rngs or a PRNG key) when deterministic=False"
                )
            key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
            embed_key, blocks_key = jax.random.split(key)
            layer_keys = jax.random.split(blocks_key, cfg.n_layers)
        else:
            embed_key, layer_keys = None, None

        tokens = constrain(tokens, ("batch", "length"))
        x = self.embed[...].astype(dtype)[tokens]
        if self.pos_embed is not None:
            x = x + self.pos_embed[:seq].astype(dtype)
        x = self.embed_dropout(x, deterministic=not use_dropout, rngs=embed_key)
        x = constrain(x, ("batch", "length", "act_embed"))
        rope = rope_tables(seq, cfg.head_dim, cfg.rope_theta) if cfg.positions == "rope" else None

        x = self._run_blocks(x, rope, layer_keys, not use_dropout, capture_attention, training)
        return self.final_norm(x)

    def _logits(self, x: jax.Array) -> jax.Array:
        """Final norm and unembedding: [batch, seq, d_model] -> float32 [batch, seq, vocab]."""
        return self._unembed(self.final_norm(x))

    def _unembed(self, x: jax.Array) -> jax.Array:
        """Final-normed [batch, seq, d_model] -> float32 logits [batch, seq, vocab]."""
        w_out = self.embed[...].T if self.unembed is None else self.unembed[...]  # [d_model, vocab]
        logits = jnp.einsum(
            "bsd,dv->bsv", x, w_out.astype(x.dtype), preferred_element_type=jnp.float32
        )
        multiplier = logit_multiplier(self.cfg)
        if multiplier != 1.0:
            logits = logits * multiplier
        return constrain(logits, ("batch", "length", "vocab"))

    # ---- decoding through a KV cache (llmjax.generate) ---------------------------------------

    def init_cache(self, batch: int, length: int) -> Any:
        """An empty KV cache for `batch` rows of up to `length` tokens (prompt + continuation),
        in the compute dtype: one (k, v) pair of [batch, kv_heads, length, head_dim] per layer
        for the unrolled layout (each updated in place), and (k, v) stacked to [n_layers, ...]
        for scan_layers (sliced and restacked every step: decode with the unrolled layout,
        `convert_layout(model, False)`, when speed matters)."""
        cfg = self.cfg
        if length > cfg.max_seq_len:
            raise ValueError(f"cache length {length} exceeds model.max_seq_len={cfg.max_seq_len}")
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        if cfg.scan_layers:
            zeros = jnp.zeros((cfg.n_layers, *shape), cfg.compute_jnp_dtype)
            return zeros, zeros
        zeros = jnp.zeros(shape, cfg.compute_jnp_dtype)
        return tuple((zeros, zeros) for _ in range(cfg.n_layers))

    def decode(self, tokens: jax.Array, positions: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        """tokens int32 [batch, s] at absolute positions int32 [batch, s] (consecutive in each
        row) -> (logits float32 [batch, s, vocab], the cache with their keys and values written).

        The same function as `__call__` on the whole prefix (deterministic): a prefill passes
        the (right-padded) prompts at positions 0..s-1, each decode step one token per row at
        that row's own position. Token i of a row attends to cache slots 0..positions[b, i].
        `cache` is `init_cache`'s (or a previous decode's).
        """
        cfg = self.cfg
        dtype = cfg.compute_jnp_dtype
        x = self.embed[...].astype(dtype)[tokens]
        if self.pos_embed is not None:
            x = x + self.pos_embed[...].astype(dtype)[positions]
        rope = rope_at(positions, cfg.head_dim, cfg.rope_theta) if cfg.positions == "rope" else None
        if cfg.scan_layers:
            scan = nnx.scan(
                lambda x, block, k, v: block.decode(x, rope, positions, (k, v)),
                in_axes=(nnx.Carry, 0, 0, 0),
                out_axes=(nnx.Carry, 0),
            )
            x, cache = scan(x, self.blocks, *cache)
        else:
            layers = []
            for block, layer_cache in zip(self.blocks, cache, strict=True):
                x, layer_cache = block.decode(x, rope, positions, layer_cache)
                layers.append(layer_cache)
            cache = tuple(layers)
        return self._logits(x), cache

    def _run_blocks(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        layer_keys: jax.Array | None,
        deterministic: bool,
        capture: bool,
        training: bool = False,
    ) -> jax.Array:
        """Apply the n_layers blocks: a python loop (unrolled) or one nnx.scan (stacked params)."""
        cfg = self.cfg

        def layer(block: Block, x: jax.Array, key: jax.Array | None) -> jax.Array:
            return block(x, rope, key, deterministic=deterministic, capture=capture,
                         training=training)

        if cfg.remat != "none" and not capture:
            # Inside scan, CSE cannot merge the recomputation away, so prevent_cse is not needed.
            layer = nnx.remat(
                layer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers
            )

        if cfg.scan_layers:
            # CPU: unroll the scan fully (same stacked parameters, no while loop). Measured 1.36x
            # steps/s at 2 layers and 1.25x at 6: the loop's per-iteration dynamic-slices of the
            # stacked weights and residuals, and its serialised small ops, go away.
            unroll = cfg.n_layers if _cpu_training_paths(training) else 1
            if layer_keys is None:
                scan = nnx.scan(
                    lambda x, block: layer(block, x, None),
                    in_axes=(nnx.Carry, 0),
                    out_axes=nnx.Carry,
                    unroll=unroll,
                )
                return scan(x, self.blocks)
            scan = nnx.scan(
                lambda x, block, key: layer(block, x, key),
                in_axes=(nnx.Carry, 0, 0),
                out_axes=nnx.Carry,
                unroll=unroll,
            )
            return scan(x, self.blocks, layer_keys)
        for i, block in enumerate(self.blocks):
            x = layer(block, x, None if layer_keys is None else layer_keys[i])
        return x


# ---- helpers other code needs ------------------------------------------------------------------


def attention_weights(model: Transformer, tokens: jax.Array) -> jax.Array:
    """Attention probabilities float32 [n_layers, batch, heads, q, k] for `tokens` [batch, seq].

    Runs the model once with capture on (reference attention, deterministic) through nnx.capture,
    so nothing is left on the model; works for both layer layouts.
    """
    _, captured = nnx.capture(model, nnx.Intermediate)(tokens, capture_attention=True)
    found = []
    for path, var in nnx.to_flat_state(captured):
        if path and path[-1] == "attention_weights":
            value = var.get_value() if isinstance(var, nnx.Variable) else var
            found.append((path, value[0] if isinstance(value, tuple) else value))
    if model.cfg.scan_layers:
        ((_, probs),) = found  # one sown entry, already stacked along the leading layer axis
        return probs
    found.sort(
        key=lambda item: int(item[0][1])
    )  # path = ('blocks', i, 'attn', 'attention_weights')
    return jnp.stack([probs for _, probs in found])


def convert_layout(model: Transformer, scan_layers: bool) -> Transformer:
    """The same parameters in the other layer layout (stacked for scan <-> a list of blocks).

    Used to check scanned == unrolled, and to load a checkpoint written in the other layout.
    """
    src_cfg = model.cfg
    dst_cfg = dataclasses.replace(src_cfg, scan_layers=scan_layers)
    abstract = nnx.eval_shape(lambda: Transformer(dst_cfg, rngs=nnx.Rngs(0)))
    graphdef, dst_state = nnx.split(abstract)
    src = dict(nnx.to_flat_state(nnx.state(model)))

    def value_for(path: tuple) -> jax.Array:
        if path[0] != "blocks" or src_cfg.scan_layers == scan_layers:
            return src[path].get_value()
        if scan_layers:  # ('blocks', *rest) <- stack of ('blocks', i, *rest)
            return jnp.stack(
                [src[("blocks", i, *path[1:])].get_value() for i in range(src_cfg.n_layers)]
            )
        return src[("blocks", *path[2:])].get_value()[int(path[1])]  # ('blocks', i, *rest)

    flat = [(path, var.replace(value_for(path))) for path, var in nnx.to_flat_state(dst_state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def init_model(cfg: ModelConfig, seed: int, mesh: jax.sharding.Mesh | None = None) -> Transformer:
    """Create the model; with a mesh, parameters are born sharded by LOGICAL_AXIS_RULES.

    Same seed -> same parameter values with or without a mesh.
    """
    make = lambda: Transformer(cfg, rngs=nnx.Rngs(seed))
    if mesh is None:
        return make()
    graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(mesh, abstract_state)
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)
