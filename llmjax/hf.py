"""Hugging Face interchange: an llmjax model's weights in the layout of `transformers`' GPT-2.

    config_kwargs = gpt2_config(model_cfg)                  # transformers.GPT2Config(**kwargs)
    state = gpt2_state_dict(params, model_cfg)              # name -> float32 numpy array

GPT-2's layout: `transformer.wte` [vocab, d], `wpe` [positions, d], per block `ln_1`, `attn.c_attn`
(Conv1D, x @ W: [d, 3d] = q | k | v, head-major), `attn.c_proj` [d, d], `ln_2`, `mlp.c_fc` [d, 4d],
`mlp.c_proj` [4d, d], then `ln_f`; the LM head is tied to `wte`. llmjax has no bias vectors on
its projections, so GPT-2's are zero. Only models with GPT-2's choices convert; `gpt2_config`
names the first field that differs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmjax.errors import UserError

# llmjax ModelConfig field -> the value GPT-2 needs (GELU is GPT-2's tanh approximation in both).
GPT2_FIELDS = {"positions": "learned", "norm": "layernorm", "mlp": "gelu",
               "tie_embeddings": True, "parametrization": "sp", "n_kv_heads": None}


def gpt2_config(cfg: Any) -> dict[str, Any]:
    """transformers.GPT2Config keyword arguments for ModelConfig `cfg`; UserError naming the
    first model field GPT-2 cannot express."""
    for name, want in GPT2_FIELDS.items():
        got = getattr(cfg, name)
        if name == "n_kv_heads" and got in (None, cfg.n_heads):
            continue
        if got != want:
            raise UserError(f"model.{name}={got!r}: GPT-2 needs {want!r}")
    if cfg.ff_dim != 4 * cfg.d_model:
        raise UserError(f"model.d_ff={cfg.ff_dim}: GPT-2 needs 4 * d_model = {4 * cfg.d_model}")
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                n_layer=cfg.n_layers, n_head=cfg.n_heads, layer_norm_epsilon=cfg.norm_eps,
                activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=None,
                eos_token_id=None)


def _layers(params: Any, cfg: Any) -> list[dict[str, Any]]:
    """Per-layer parameter dicts, from either layer layout (stacked for scan, or a list)."""
    blocks = params["blocks"]
    if cfg.scan_layers:
        return [_index(blocks, i) for i in range(cfg.n_layers)]
    return [blocks[i] for i in range(cfg.n_layers)]


def _index(tree: Any, i: int) -> Any:
    if isinstance(tree, dict):
        return {k: _index(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]


def gpt2_state_dict(params: Any, cfg: Any) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's state dict (float32 numpy) from llmjax params (a pure dict)."""
    gpt2_config(cfg)
    f32 = lambda a: np.asarray(a, np.float32)
    d = cfg.d_model
    out = {"transformer.wte.weight": f32(params["embed"]),
           "transformer.wpe.weight": f32(params["pos_embed"]),
           "transformer.ln_f.weight": f32(params["final_norm"]["scale"]),
           "transformer.ln_f.bias": f32(params["final_norm"]["bias"])}
    for i, layer in enumerate(_layers(params, cfg)):
        p = f"transformer.h.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        qkv = [f32(attn[w]).reshape(d, -1) for w in ("wq", "wk", "wv")]
        out.update({
            p + "ln_1.weight": f32(layer["attn_norm"]["scale"]),
            p + "ln_1.bias": f32(layer["attn_norm"]["bias"]),
            p + "attn.c_attn.weight": np.concatenate(qkv, axis=1),
            p + "attn.c_attn.bias": np.zeros(3 * d, np.float32),
            p + "attn.c_proj.weight": f32(attn["wo"]).reshape(-1, d),
            p + "attn.c_proj.bias": np.zeros(d, np.float32),
            p + "ln_2.weight": f32(layer["mlp_norm"]["scale"]),
            p + "ln_2.bias": f32(layer["mlp_norm"]["bias"]),
            p + "mlp.c_fc.weight": f32(mlp["w_up"]),
            p + "mlp.c_fc.bias": np.zeros(cfg.ff_dim, np.float32),
            p + "mlp.c_proj.weight": f32(mlp["w_down"]),
            p + "mlp.c_proj.bias": np.zeros(d, np.float32),
        })
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
