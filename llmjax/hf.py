"""Hugging Face interchange: GPT-2 and Llama checkpoints <-> llmjax run directories.

    import_hf("hf/gpt2", "runs/gpt2")      # llmjax convert --from_hf=hf/gpt2 --workdir=runs/gpt2
    export_hf("runs/tiny", "hf/tiny")      # llmjax convert --to_hf=hf/tiny --workdir=runs/tiny

Import reads a local directory (config.json; model.safetensors, or shards listed in
model.safetensors.index.json; tokenizer.json when there is one) with `safetensors` (numpy: no
torch, and nothing is ever unpickled: a directory with only pytorch_model.bin / .pt / .pth is
refused) and writes a run directory like a trained one: config.json (the model section from the
HF config, data = the default synthetic corpus with data.tokenizer 'hf:<V>', seq_len =
min(max_position_embeddings, 2048)), metadata.json (the HF source), status.json (complete),
tokenizer/ (the HF tokenizer as it is, `llmjax.data.tokenizer.ImportedTokenizer`) and a
checkpoint at step 0 holding the parameters (no optimizer state: for inference and as a start
for fine-tuning, not for `llmjax train` to resume). Everything is read and checked before the
first file is written; the run is assembled in a temporary sibling and renamed into place, so a
refused or failed import leaves --workdir untouched. A model directory without tokenizer.json
converts (the run has no tokenizer/, and the commands that need text say so).

Export writes what `transformers.AutoModelForCausalLM` / `AutoTokenizer.from_pretrained` load:
config.json, model.safetensors (the parameters' dtype), tokenizer.json, tokenizer_config.json and
special_tokens_map.json. For an llmjax tokenizer the exported tokenizer.json gets a post-processor
that prepends BOS, since every llmjax sequence starts with it: `tok(text).input_ids` is then the
prompt `llmjax generate` feeds. An imported tokenizer is written back as it came.

Families and their layouts (llmjax params: module docstring of llmjax/model/transformer.py):

  llmjax choice                           HF family   HF tensors (per layer i)
  learned positions, layernorm, gelu  <-> gpt2        transformer.h.i.{ln_1, attn.c_attn (Conv1D,
                                                      x @ W, [d, 3d] = q | k | v, head-major),
                                                      attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj},
                                                      wte, wpe, ln_f; biases everywhere
  rope, rmsnorm, swiglu               <-> llama       model.layers.i.{input_layernorm,
                                                      self_attn.{q,k,v,o}_proj (nn.Linear,
                                                      [out, in]), post_attention_layernorm,
                                                      mlp.{gate,up,down}_proj}, embed_tokens,
                                                      norm; lm_head when untied

RoPE rotates (x[i], x[i + head_dim/2]) in both (HF's rotate_half), so q/k need no permutation;
grouped-query attention reads kv head h // (heads / kv_heads) in both. GPT-2's gelu_new /
gelu_pytorch_tanh is llmjax's gelu (tanh approximation). Import of GPT-2 sets use_bias=True; of
Llama, use_bias = attention_bias or mlp_bias (a family without the other's biases gets zeros).
Export of use_bias=False to GPT-2 writes zero biases; use_bias=True to Llama sets attention_bias
= mlp_bias = True, except for a group whose biases are all exactly zero, which is left out (the
same function; a Llama imported with attention_bias only exports as it came).

Refused (UserError naming the field): import of other model_types; GPT-2 with exact 'gelu' (or
another activation), scale_attn_weights=false, scale_attn_by_inverse_layer_idx,
add_cross_attention; Llama with hidden_act other than silu, rope_scaling / a rope_type other
than 'default', head_dim != hidden_size / num_attention_heads; a missing tensor, a tensor of the
wrong shape, or a tensor neither family has. Export of model.mlp='none' (attention-only
blocks), mixed choices (learned positions with rmsnorm, rope with gelu, ...), GPT-2 with grouped
kv heads, and muP with tied embeddings (its logit multiplier cannot be folded into a matrix
that is also the input embedding: `model.parametrization`). muP otherwise folds exactly: the
attention scale's extra sqrt(mup_base_d_head / head_dim) into the query weights and bias, the
output multiplier into the untied unembedding.

LoRA adapters and classification heads (llmjax finetune): export writes the base transformer
only. Its parameters come from `llmjax.eval.probe.load_params`, the one place that turns a run's
checkpoint into the model's own params (for a fine-tuning run, as llmjax.finetune defines it:
LoRA adapters merged into the weights, a classification head left out, since it has no
causal-LM equivalent). `export_hf(run, out, params=tree)` exports any other params tree of the
run's model config instead (the hook for a custom merge).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from llmjax.errors import UserError

FAMILIES = ("gpt2", "llama")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
# GPT-2 activations that are exactly llmjax's gelu (the tanh approximation).
GPT2_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Tensors some checkpoints carry that are buffers, not parameters (causal masks, rope tables).
IGNORED_TENSORS = re.compile(r"(^|\.)(attn\.(masked_)?bias|rotary_emb\.inv_freq)$")
# data.seq_len of an imported run: the model's window, capped here (override with seq_len=).
DEFAULT_SEQ_LEN_CAP = 2048
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


# =============================================================================== reading HF files


def read_hf_config(directory: str) -> dict[str, Any]:
    """config.json of a Hugging Face model directory; UserError when missing or not an object."""
    if not os.path.isdir(directory):
        raise UserError(f"--from_hf={directory}: no such directory")
    path = os.path.join(directory, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise UserError(f"--from_hf={directory}: no config.json (not a Hugging Face model "
                        "directory)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object")
    return cfg


def _weight_files(directory: str) -> list[str]:
    """The safetensors files holding a model's weights; UserError for pickles only or none."""
    index = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{index}: cannot read its weight_map ({e})") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.isfile(os.path.join(directory, name)):
                raise UserError(f"{index}: names shard {name}, which is missing")
        return [os.path.join(directory, name) for name in files]
    single = os.path.join(directory, SAFETENSORS)
    if os.path.isfile(single):
        return [single]
    others = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if others:
        return others
    pickles = sorted(os.path.basename(p) for p in os.listdir(directory)
                     if p.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UserError(
            f"--from_hf={directory}: only pickled PyTorch weights ({', '.join(pickles[:3])}); "
            "llmjax never unpickles: convert them to safetensors first (e.g. in Python, "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR, "
            "safe_serialization=True), if you trust the file)")
    raise UserError(f"--from_hf={directory}: no {SAFETENSORS} (or {SAFETENSORS_INDEX} and its "
                    "shards)")


class Tensors:
    """The tensors of a model directory's safetensors files, read as numpy arrays on demand;
    `get` checks the shape and names the tensor when it is missing or wrong."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self.directory = directory
        self._where: dict[str, Any] = {}
        self._handles = []
        for path in _weight_files(directory):
            try:
                handle = safe_open(path, framework="numpy")
            except Exception as e:  # a damaged header: one line
                raise UserError(f"{path}: cannot read safetensors file ({e})") from None
            self._handles.append(handle)
            for name in handle.keys():
                self._where[name] = handle
        self.used: set[str] = set()

    def names(self) -> list[str]:
        return sorted(self._where)

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self._where:
            raise UserError(f"--from_hf={self.directory}: tensor {name} is missing")
        handle = self._where[name]
        got = tuple(handle.get_slice(name).get_shape())
        if got != tuple(shape):
            raise UserError(f"--from_hf={self.directory}: tensor {name} has shape "
                            f"{list(got)}, the config needs {list(shape)}")
        self.used.add(name)
        return handle.get_tensor(name)

    def dtype(self, name: str) -> str:
        if name not in self._where:
            raise UserError(f"--from_hf={self.directory}: tensor {name} is missing")
        return str(self._where[name].get_slice(name).get_dtype())

    def check_all_used(self, family: str) -> None:
        """UserError naming the tensors that no llmjax parameter took (a part llmjax lacks)."""
        extra = [n for n in self.names() if n not in self.used and not IGNORED_TENSORS.search(n)]
        if extra:
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3
                                            else "")
            raise UserError(f"--from_hf={self.directory}: tensor {shown} is not part of a plain "
                            f"{family} model (llmjax has no parameter for it)")


# =============================================================================== configs


def _field(hf: Mapping[str, Any], name: str, default: Any = None, *, required: bool = False
           ) -> Any:
    if name not in hf or hf[name] is None:
        if required:
            raise UserError(f"config.json: field {name} is missing")
        return default
    return hf[name]


def _int_field(hf: Mapping[str, Any], name: str, default: Any = None) -> int:
    value = _field(hf, name, default, required=default is None)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"config.json: {name}={value!r} must be a positive integer")
    return value


def _refuse(name: str, value: Any, why: str) -> UserError:
    return UserError(f"config.json: {name}={value!r}: {why}")


def gpt2_model_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig fields of a GPT-2 config.json; UserError naming what llmjax cannot express."""
    act = _field(hf, "activation_function", "gelu_new")
    if act not in GPT2_TANH_GELUS:
        raise _refuse("activation_function", act, "llmjax's gelu is the tanh approximation "
                      f"(allowed: {', '.join(GPT2_TANH_GELUS)})")
    for name, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False)):
        value = _field(hf, name, want)
        if value != want:
            raise _refuse(name, value, f"llmjax's attention needs {want!r}")
    d = _int_field(hf, "n_embd")
    positions = _field(hf, "n_positions") or _field(hf, "n_ctx", required=True)
    return dict(vocab_size=_int_field(hf, "vocab_size"), d_model=d,
                n_layers=_int_field(hf, "n_layer"), n_heads=_int_field(hf, "n_head"),
                d_ff=_int_field(hf, "n_inner", 4 * d), max_seq_len=int(positions),
                positions="learned", norm="layernorm",
                norm_eps=float(_field(hf, "layer_norm_epsilon", 1e-5)), mlp="gelu",
                tie_embeddings=bool(_field(hf, "tie_word_embeddings", True)), use_bias=True)


def llama_model_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig fields of a Llama config.json; UserError naming what llmjax cannot express."""
    act = _field(hf, "hidden_act", "silu")
    if act != "silu":
        raise _refuse("hidden_act", act, "llmjax's swiglu gates with silu")
    scaling = _field(hf, "rope_scaling")
    if scaling:
        raise _refuse("rope_scaling", scaling, "llmjax has plain RoPE only")
    params = _field(hf, "rope_parameters") or {}
    if not isinstance(params, Mapping):
        raise _refuse("rope_parameters", params, "expected an object")
    if params.get("rope_type", "default") not in ("default", None):
        raise _refuse("rope_parameters.rope_type", params["rope_type"],
                      "llmjax has plain RoPE only ('default')")
    theta = params.get("rope_theta") or _field(hf, "rope_theta", 10000.0)
    d, heads = _int_field(hf, "hidden_size"), _int_field(hf, "num_attention_heads")
    head_dim = _field(hf, "head_dim")
    if head_dim is not None and d % heads == 0 and head_dim != d // heads:
        raise _refuse("head_dim", head_dim, f"llmjax needs hidden_size / num_attention_heads = "
                      f"{d // heads}")
    kv = _int_field(hf, "num_key_value_heads", heads)
    return dict(vocab_size=_int_field(hf, "vocab_size"), d_model=d,
                n_layers=_int_field(hf, "num_hidden_layers"), n_heads=heads,
                n_kv_heads=None if kv == heads else kv,
                d_ff=_int_field(hf, "intermediate_size"),
                max_seq_len=_int_field(hf, "max_position_embeddings", 2048),
                positions="rope", norm="rmsnorm", norm_eps=float(_field(hf, "rms_norm_eps", 1e-6)),
                mlp="swiglu", rope_theta=float(theta),
                tie_embeddings=bool(_field(hf, "tie_word_embeddings", False)),
                use_bias=bool(_field(hf, "attention_bias", False) or _field(hf, "mlp_bias", False)))


def model_config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> tuple[str, Any]:
    """(family, ModelConfig) of an HF config.json's contents; UserError naming the field."""
    from llmjax.model import ModelConfig

    family = hf.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"config.json: model_type={family!r} is not supported; llmjax convert "
                        f"imports {' and '.join(FAMILIES)}")
    fields = gpt2_model_fields(hf) if family == "gpt2" else llama_model_fields(hf)
    try:
        cfg = ModelConfig(**fields, param_dtype=dtype, compute_dtype=dtype, scan_layers=True)
    except UserError as e:
        raise UserError(f"config.json ({family}): {e}") from None
    return family, cfg


# =============================================================================== HF -> llmjax


def _gpt2_prefix(t: Tensors) -> str:
    return "transformer." if t.has("transformer.wte.weight") else ""


def _gpt2_params(t: Tensors, cfg: Any) -> dict[str, Any]:
    d, h, dh, f, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.ff_dim, cfg.vocab_size
    p = _gpt2_prefix(t)
    norm = lambda name: {"scale": t.get(f"{name}.weight", (d,)),
                         "bias": t.get(f"{name}.bias", (d,))}
    layers = []
    for i in range(cfg.n_layers):
        b = f"{p}h.{i}."
        qkv = t.get(b + "attn.c_attn.weight", (d, 3 * d))
        qkv_b = t.get(b + "attn.c_attn.bias", (3 * d,))
        wq, wk, wv = (w.reshape(d, h, dh) for w in np.split(qkv, 3, axis=1))
        bq, bk, bv = (x.reshape(h, dh) for x in np.split(qkv_b, 3))
        layers.append({
            "attn_norm": norm(b + "ln_1"),
            "attn": {"wq": wq, "wk": wk, "wv": wv,
                     "wo": t.get(b + "attn.c_proj.weight", (d, d)).reshape(h, dh, d),
                     "bq": bq, "bk": bk, "bv": bv, "bo": t.get(b + "attn.c_proj.bias", (d,))},
            "mlp_norm": norm(b + "ln_2"),
            "mlp": {"w_up": t.get(b + "mlp.c_fc.weight", (d, f)),
                    "b_up": t.get(b + "mlp.c_fc.bias", (f,)),
                    "w_down": t.get(b + "mlp.c_proj.weight", (f, d)),
                    "b_down": t.get(b + "mlp.c_proj.bias", (d,))},
        })
    params = {"embed": t.get(f"{p}wte.weight", (v, d)),
              "pos_embed": t.get(f"{p}wpe.weight", (cfg.max_seq_len, d)),
              "blocks": _stack(layers), "final_norm": norm(f"{p}ln_f")}
    if not cfg.tie_embeddings:
        params["unembed"] = t.get("lm_head.weight", (v, d)).T
    elif t.has("lm_head.weight"):
        t.used.add("lm_head.weight")  # a tied copy some files store; HF ties it to wte too
    return params


def _llama_params(t: Tensors, cfg: Any, hf: Mapping[str, Any]) -> dict[str, Any]:
    d, h, kv, dh, f, v = (cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim,
                          cfg.vocab_size)
    attn_bias, mlp_bias = bool(hf.get("attention_bias")), bool(hf.get("mlp_bias"))

    def linear(name: str, n_out: int, n_in: int) -> np.ndarray:  # nn.Linear [out, in] -> [in, out]
        return t.get(name + ".weight", (n_out, n_in)).T

    def bias(name: str, n: int, present: bool) -> np.ndarray:
        return t.get(name + ".bias", (n,)) if present else np.zeros((n,), np.float32)

    layers = []
    for i in range(cfg.n_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        attn = {"wq": linear(a + "q_proj", h * dh, d).reshape(d, h, dh),
                "wk": linear(a + "k_proj", kv * dh, d).reshape(d, kv, dh),
                "wv": linear(a + "v_proj", kv * dh, d).reshape(d, kv, dh),
                "wo": linear(a + "o_proj", d, h * dh).reshape(h, dh, d)}
        mlp = {"w_gate": linear(m + "gate_proj", f, d), "w_up": linear(m + "up_proj", f, d),
               "w_down": linear(m + "down_proj", d, f)}
        if cfg.use_bias:
            attn.update(bq=bias(a + "q_proj", h * dh, attn_bias).reshape(h, dh),
                        bk=bias(a + "k_proj", kv * dh, attn_bias).reshape(kv, dh),
                        bv=bias(a + "v_proj", kv * dh, attn_bias).reshape(kv, dh),
                        bo=bias(a + "o_proj", d, attn_bias))
            mlp.update(b_gate=bias(m + "gate_proj", f, mlp_bias),
                       b_up=bias(m + "up_proj", f, mlp_bias),
                       b_down=bias(m + "down_proj", d, mlp_bias))
        layers.append({
            "attn_norm": {"scale": t.get(f"model.layers.{i}.input_layernorm.weight", (d,))},
            "attn": attn,
            "mlp_norm": {"scale": t.get(f"model.layers.{i}.post_attention_layernorm.weight",
                                        (d,))},
            "mlp": mlp})
    params = {"embed": t.get("model.embed_tokens.weight", (v, d)), "blocks": _stack(layers),
              "final_norm": {"scale": t.get("model.norm.weight", (d,))}}
    if not cfg.tie_embeddings:
        params["unembed"] = t.get("lm_head.weight", (v, d)).T
    elif t.has("lm_head.weight"):
        t.used.add("lm_head.weight")
    return params


def _stack(layers: list[Any]) -> Any:
    """Per-layer dicts -> one dict with a leading layer axis (the scan_layers layout)."""
    if isinstance(layers[0], dict):
        return {k: _stack([layer[k] for layer in layers]) for k in layers[0]}
    return np.stack(layers)


def _check_tree(params: Any, abstract: Any, path: str = "") -> None:
    """Our tree has exactly the model's parameters, shapes included (a bug here, not the user)."""
    if isinstance(abstract, Mapping):
        assert isinstance(params, Mapping) and set(params) == set(abstract), (
            path, sorted(params) if isinstance(params, Mapping) else type(params),
            sorted(abstract))
        for k in abstract:
            _check_tree(params[k], abstract[k], f"{path}/{k}")
    else:
        assert tuple(params.shape) == tuple(abstract.shape), (path, params.shape, abstract.shape)


def _tensor_dtype(t: Tensors, family: str) -> str:
    name = ("model.embed_tokens.weight" if family == "llama"
            else f"{_gpt2_prefix(t)}wte.weight")
    return {"BF16": "bfloat16", "F16": "float16"}.get(t.dtype(name).upper(), "float32")


def read_hf(directory: str, dtype: str = "auto") -> tuple[str, Any, dict[str, Any], Any]:
    """(family, ModelConfig, params as a numpy pure dict in the scan layout, the Tensors) of an
    HF model directory; every tensor is read and checked. UserError naming what is wrong."""
    hf = read_hf_config(directory)
    family, _ = model_config_from_hf(hf)  # refuses unknown model_types before any weight
    t = Tensors(directory)
    if dtype == "auto":
        dtype = _tensor_dtype(t, family)
    if dtype not in DTYPES:
        raise UserError(f"--dtype={dtype}: allowed: auto, {', '.join(DTYPES)}")
    family, cfg = model_config_from_hf(hf, dtype)
    params = _gpt2_params(t, cfg) if family == "gpt2" else _llama_params(t, cfg, hf)
    t.check_all_used(family)
    np_dtype = _np_dtype(dtype)
    params = _tree_map(lambda a: np.ascontiguousarray(a, dtype=np_dtype), params)
    from llmjax.eval.probe import _abstract_params

    _check_tree(params, _abstract_params(cfg)[1])
    return family, cfg, params, t


def _np_dtype(dtype: str) -> Any:
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def _tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _count(tree: Any) -> int:
    if isinstance(tree, Mapping):
        return sum(_count(v) for v in tree.values())
    return int(np.prod(tree.shape))


def _experiment(model_cfg: Any, seq_len: int, tokenizer_spec: str) -> Any:
    """The Experiment an imported run's config.json holds: its model, the default synthetic
    data read with its own tokenizer, one (notional) step."""
    from llmjax.config import base_config, parse_experiment

    c = base_config()
    for key, value in dataclasses.asdict(model_cfg).items():
        c.model[key] = value
    c.data.tokenizer = tokenizer_spec
    c.data.seq_len = seq_len
    c.steps = 1
    c.checkpoint_every = 0
    c.eval_every = 0
    return parse_experiment(c)


def _staging(target: str, what: str) -> str:
    """A fresh temporary sibling of `target` (renamed onto it when complete). UserError unless
    `target` is absent or an empty directory."""
    target = os.path.abspath(target)
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise UserError(f"{what}={target}: already exists and is not empty; choose a new "
                        "directory")
    parent = os.path.dirname(target)
    from llmjax.rundir import check_dir_path

    check_dir_path(parent, what)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(target)}.converting-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def _publish(staging: str, target: str) -> None:
    target = os.path.abspath(target)
    if os.path.isdir(target):
        os.rmdir(target)  # empty (checked by _staging)
    os.rename(staging, target)


def write_run(workdir: str, exp: Any, params: Any, tokenizer: Any, metadata: dict[str, Any]
              ) -> None:
    """A complete run directory at `workdir` (must be new): config.json, metadata.json,
    tokenizer/ (when there is a tokenizer), a checkpoint of `params` at step 0 (the params
    subtree and the step: what `load_params` reads), status complete."""
    import jax
    import jax.numpy as jnp

    from llmjax.rundir import RunDir, Status, atomic_write, atomic_write_json
    from llmjax.train.checkpoint import Checkpointer

    run = RunDir(workdir).create()
    atomic_write(run.config_path, exp.to_json() + "\n")
    atomic_write_json(run.metadata_path, metadata)
    if tokenizer is not None:
        tokenizer.save(run.tokenizer_dir)
    device = jax.devices()[0]
    state = {"step": jnp.zeros((), jnp.int32),
             "params": _tree_map(lambda a: jax.device_put(a, device), params)}
    ckpt = Checkpointer(run.path, keep_last=1, async_save=False)
    try:
        ckpt.save(0, state, {}, {"step": 0, "tokens": 0, "source": metadata.get("source")})
    finally:
        ckpt.close()
    run.write_status(Status.COMPLETE, step=0, steps=0, pid=None)


def import_hf(src: str, workdir: str, *, dtype: str = "auto", seq_len: int | None = None,
              argv: list[str] | None = None, say: Callable[[str], Any] = print
              ) -> dict[str, Any]:
    """Converts the HF model directory `src` into a new run directory `workdir` (module
    docstring); returns a summary. UserError (and nothing written) for what it cannot convert."""
    from llmjax.data.tokenizer import ImportedTokenizer

    src = os.path.abspath(src)
    family, cfg, params, tensors = read_hf(src, dtype)
    hf = read_hf_config(src)
    tokenizer = None
    if os.path.isfile(os.path.join(src, "tokenizer.json")):
        tokenizer = ImportedTokenizer.from_hf_dir(src, hf)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise UserError(f"{src}/tokenizer.json: {tokenizer.vocab_size} tokens, more than the "
                            f"model's vocab_size={cfg.vocab_size}")
    if seq_len is not None and not 2 <= seq_len <= cfg.max_seq_len:
        raise UserError(f"--seq_len={seq_len}: allowed 2..{cfg.max_seq_len} (the model's window)")
    window = seq_len or min(cfg.max_seq_len, DEFAULT_SEQ_LEN_CAP)
    spec = tokenizer.name if tokenizer is not None else f"hf:{cfg.vocab_size}"
    exp = _experiment(cfg, window, spec)
    source = {"hf_dir": src, "model_type": family, "files": sorted(
        os.path.basename(p) for p in _weight_files(src)), "config": hf,
        "tokenizer": "tokenizer.json" if tokenizer is not None else None}
    metadata = {"source": source, "converted_by": "llmjax convert --from_hf",
                "start_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "argv": list(sys.argv if argv is None else argv), "dataset": None}
    staging = _staging(workdir, "--workdir")
    try:
        write_run(staging, exp, params, tokenizer, metadata)
        _publish(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n = _count(params)
    summary = {"family": family, "workdir": os.path.abspath(workdir), "params": n,
               "dtype": cfg.param_dtype, "tokenizer": spec if tokenizer is not None else None}
    say(f"imported {family} ({cfg.n_layers} layers, d_model {cfg.d_model}, {n / 1e6:.2f}M "
        f"params, {cfg.param_dtype}) from {src} into {summary['workdir']} (checkpoint step 0; "
        + (f"tokenizer {spec})" if tokenizer is not None else
           "no tokenizer.json: the run has no tokenizer, so generate/probe/serve cannot read "
           "text)"))
    return summary


# =============================================================================== llmjax -> HF


def export_family(cfg: Any) -> str:
    """'gpt2' or 'llama' for ModelConfig `cfg`; UserError naming the first field neither
    family can express."""
    if cfg.mlp == "none":
        raise UserError("model.mlp='none': attention-only blocks have no Hugging Face "
                        "equivalent (GPT-2 and Llama blocks have an MLP)")
    if cfg.positions == "learned":
        family, want = "gpt2", {"norm": "layernorm", "mlp": "gelu"}
    else:
        family, want = "llama", {"norm": "rmsnorm", "mlp": "swiglu"}
    for name, value in want.items():
        if getattr(cfg, name) != value:
            raise UserError(f"model.{name}={getattr(cfg, name)!r}: model.positions="
                            f"{cfg.positions!r} exports as {family}, which needs {value!r}")
    if family == "gpt2" and cfg.kv_heads != cfg.n_heads:
        raise UserError(f"model.n_kv_heads={cfg.n_kv_heads}: GPT-2 has no grouped-query "
                        "attention (use None = n_heads, or rope + rmsnorm + swiglu for Llama)")
    from llmjax.model.config import logit_multiplier

    if cfg.tie_embeddings and logit_multiplier(cfg) != 1.0:
        raise UserError(f"model.parametrization={cfg.parametrization!r}: with tied embeddings "
                        f"the output multiplier {logit_multiplier(cfg):g} cannot be folded into "
                        "the weights (it would scale the input embedding too)")
    return family


def _layers(params: Any, cfg: Any) -> list[dict[str, Any]]:
    """Per-layer parameter dicts, from either layer layout (stacked for scan, or a list)."""
    blocks = params["blocks"]
    if cfg.scan_layers:
        return [_index(blocks, i) for i in range(cfg.n_layers)]
    if isinstance(blocks, Mapping):  # nnx.List as a pure dict: {0: ..., 1: ...}
        return [blocks[i] if i in blocks else blocks[str(i)] for i in range(cfg.n_layers)]
    return [blocks[i] for i in range(cfg.n_layers)]


def _index(tree: Any, i: int) -> Any:
    if isinstance(tree, Mapping):
        return {k: _index(v, i) for k, v in tree.items()}
    return np.asarray(tree)[i]


def _folds(cfg: Any) -> tuple[float, float]:
    """(query factor, unembedding factor) that fold muP's attention scale and output multiplier
    into the weights (1, 1 under 'sp')."""
    from llmjax.model.config import attention_scale, logit_multiplier

    return attention_scale(cfg) * math.sqrt(cfg.head_dim), logit_multiplier(cfg)


def _scaled(a: Any, factor: float) -> np.ndarray:
    a = np.asarray(a)
    if factor == 1.0:
        return a
    return (a.astype(np.float32) * np.float32(factor)).astype(a.dtype)


def gpt2_state_dict(params: Any, cfg: Any) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's state dict (numpy, the params' dtype) from llmjax params (a pure dict);
    zeros for biases a use_bias=False model lacks; lm_head.weight is wte when tied (as in
    `model.state_dict()`; the saved file leaves it out, as HF's does)."""
    export_family(cfg)
    q_fold, out_fold = _folds(cfg)
    d, f = cfg.d_model, cfg.ff_dim
    arr = np.asarray
    dtype = arr(params["embed"]).dtype
    zeros = lambda n: np.zeros((n,), dtype)
    bias = lambda group, name, n: arr(group[name]).reshape(-1) if name in group else zeros(n)
    out = {"transformer.wte.weight": arr(params["embed"]),
           "transformer.wpe.weight": arr(params["pos_embed"]),
           "transformer.ln_f.weight": arr(params["final_norm"]["scale"]),
           "transformer.ln_f.bias": arr(params["final_norm"]["bias"])}
    for i, layer in enumerate(_layers(params, cfg)):
        p = f"transformer.h.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        qkv = [_scaled(attn["wq"], q_fold).reshape(d, -1), arr(attn["wk"]).reshape(d, -1),
               arr(attn["wv"]).reshape(d, -1)]
        qkv_b = [_scaled(bias(attn, "bq", d), q_fold), bias(attn, "bk", d), bias(attn, "bv", d)]
        out.update({
            p + "ln_1.weight": arr(layer["attn_norm"]["scale"]),
            p + "ln_1.bias": arr(layer["attn_norm"]["bias"]),
            p + "attn.c_attn.weight": np.concatenate(qkv, axis=1),
            p + "attn.c_attn.bias": np.concatenate(qkv_b),
            p + "attn.c_proj.weight": arr(attn["wo"]).reshape(-1, d),
            p + "attn.c_proj.bias": bias(attn, "bo", d),
            p + "ln_2.weight": arr(layer["mlp_norm"]["scale"]),
            p + "ln_2.bias": arr(layer["mlp_norm"]["bias"]),
            p + "mlp.c_fc.weight": arr(mlp["w_up"]),
            p + "mlp.c_fc.bias": bias(mlp, "b_up", f),
            p + "mlp.c_proj.weight": arr(mlp["w_down"]),
            p + "mlp.c_proj.bias": bias(mlp, "b_down", d),
        })
    out["lm_head.weight"] = (out["transformer.wte.weight"] if cfg.tie_embeddings
                             else _scaled(params["unembed"], out_fold).T)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def gpt2_config(cfg: Any) -> dict[str, Any]:
    """transformers.GPT2Config keyword arguments for ModelConfig `cfg` (what `hf_config` writes
    to config.json); UserError naming the field when it does not export as GPT-2."""
    if export_family(cfg) != "gpt2":
        raise UserError(f"model.positions={cfg.positions!r}: GPT-2 needs 'learned'")
    return {k: v for k, v in hf_config(cfg).items()
            if k not in ("architectures", "model_type", "dtype")}


def llama_biases(params: Any, cfg: Any) -> tuple[bool, bool]:
    """(attention_bias, mlp_bias) of a Llama export: use_bias, except that a group whose biases
    are all exactly zero is left out (the same function; so a Llama with attention_bias only
    comes back as it was imported)."""
    if not cfg.use_bias:
        return False, False
    blocks = params["blocks"]
    layers = [blocks] if cfg.scan_layers else _layers(params, cfg)
    nonzero = lambda group, names: any(np.any(np.asarray(layer[group][n]) != 0)
                                       for layer in layers for n in names)
    return (nonzero("attn", ("bq", "bk", "bv", "bo")),
            nonzero("mlp", ("b_gate", "b_up", "b_down")))


def llama_state_dict(params: Any, cfg: Any) -> dict[str, np.ndarray]:
    """LlamaForCausalLM's state dict (numpy, the params' dtype) from llmjax params; biases only
    with use_bias (and not all zero, `llama_biases`); lm_head.weight is the embedding when tied
    (the saved file leaves it out)."""
    export_family(cfg)
    q_fold, out_fold = _folds(cfg)
    d = cfg.d_model
    arr = np.asarray
    attention_bias, mlp_bias = llama_biases(params, cfg)
    out = {"model.embed_tokens.weight": arr(params["embed"]),
           "model.norm.weight": arr(params["final_norm"]["scale"])}
    for i, layer in enumerate(_layers(params, cfg)):
        p = f"model.layers.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out.update({
            p + "input_layernorm.weight": arr(layer["attn_norm"]["scale"]),
            p + "self_attn.q_proj.weight": _scaled(attn["wq"], q_fold).reshape(d, -1).T,
            p + "self_attn.k_proj.weight": arr(attn["wk"]).reshape(d, -1).T,
            p + "self_attn.v_proj.weight": arr(attn["wv"]).reshape(d, -1).T,
            p + "self_attn.o_proj.weight": arr(attn["wo"]).reshape(-1, d).T,
            p + "post_attention_layernorm.weight": arr(layer["mlp_norm"]["scale"]),
            p + "mlp.gate_proj.weight": arr(mlp["w_gate"]).T,
            p + "mlp.up_proj.weight": arr(mlp["w_up"]).T,
            p + "mlp.down_proj.weight": arr(mlp["w_down"]).T,
        })
        if attention_bias:
            out.update({
                p + "self_attn.q_proj.bias": _scaled(attn["bq"], q_fold).reshape(-1),
                p + "self_attn.k_proj.bias": arr(attn["bk"]).reshape(-1),
                p + "self_attn.v_proj.bias": arr(attn["bv"]).reshape(-1),
                p + "self_attn.o_proj.bias": arr(attn["bo"])})
        if mlp_bias:
            out.update({
                p + "mlp.gate_proj.bias": arr(mlp["b_gate"]),
                p + "mlp.up_proj.bias": arr(mlp["b_up"]),
                p + "mlp.down_proj.bias": arr(mlp["b_down"]),
            })
    out["lm_head.weight"] = (out["model.embed_tokens.weight"] if cfg.tie_embeddings
                             else _scaled(params["unembed"], out_fold).T)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_state_dict(params: Any, cfg: Any) -> dict[str, np.ndarray]:
    """The HF state dict of the family `export_family(cfg)` names."""
    family = export_family(cfg)
    return gpt2_state_dict(params, cfg) if family == "gpt2" else llama_state_dict(params, cfg)


def hf_config(cfg: Any, tokenizer: Any = None, params: Any = None) -> dict[str, Any]:
    """config.json for `transformers` (GPT2LMHeadModel or LlamaForCausalLM) of ModelConfig
    `cfg`; the special token ids from `tokenizer` when given; Llama's attention_bias/mlp_bias
    from `params` (`llama_biases`; use_bias for both without them)."""
    family = export_family(cfg)
    biases = (llama_biases(params, cfg) if params is not None and family == "llama"
              else (cfg.use_bias, cfg.use_bias))
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if tokenizer is not None:
        ids = {"bos_token_id": int(tokenizer.bos_id), "eos_token_id": int(tokenizer.eos_id),
               "pad_token_id": int(tokenizer.pad_id)}
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "dtype": cfg.param_dtype, "initializer_range": cfg.init_std, **ids}
    if family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
                "n_inner": cfg.ff_dim, "n_positions": cfg.max_seq_len,
                "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0, **common}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.head_dim, "intermediate_size": cfg.ff_dim, "hidden_act": "silu",
            "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_scaling": None, "attention_bias": biases[0], "mlp_bias": biases[1],
            "attention_dropout": 0.0, "pretraining_tp": 1, **common}


def save_hf_tokenizer(tokenizer: Any, directory: str) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for AutoTokenizer.
    llmjax's own tokenizers get a post-processor prepending BOS (module docstring)."""
    from llmjax.data.tokenizer import ImportedTokenizer
    from llmjax.rundir import atomic_write

    path = tokenizer.save(directory)
    names = {role: tokenizer.decode([getattr(tokenizer, f"{role}_id")],
                                    skip_special_tokens=False) for role in ("bos", "eos", "pad")}
    if not isinstance(tokenizer, ImportedTokenizer):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import processors

        hf = HFTokenizer.from_file(path)
        bos = (names["bos"], int(tokenizer.bos_id))
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1", special_tokens=[bos])
        atomic_write(path, hf.to_str())
    special_map = os.path.join(directory, "special_tokens_map.json")
    if not os.path.exists(special_map):
        atomic_write(special_map, json.dumps(
            {f"{role}_token": name for role, name in names.items()}, indent=1))


def export_hf(workdir: str, out: str, *, step: int | None = None, params: Any = None,
              say: Callable[[str], Any] = print) -> dict[str, Any]:
    """Writes run `workdir`'s model at `step` (default: its latest checkpoint) as a Hugging Face
    directory `out` (must be new or empty). `params`: a params tree to export instead of the
    checkpoint's (the hook for merged LoRA weights; module docstring). Returns a summary."""
    from safetensors.numpy import save_file

    from llmjax import rundir
    from llmjax.eval.probe import load_params, load_run

    run = load_run(workdir, need_tokenizer=False)
    tokenizer, cfg = run.tokenizer, run.model_cfg
    family = export_family(cfg)
    if params is None:
        _, params, step = load_params(workdir, step, cfg)  # LoRA merged, heads dropped
    params = _tree_map(np.asarray, params)
    state = hf_state_dict(params, cfg)
    if cfg.tie_embeddings:
        del state["lm_head.weight"]  # HF ties it to the embedding on load; its files omit it
    config = hf_config(cfg, tokenizer, params)
    staging = _staging(out, "--to_hf")
    try:
        save_file(state, os.path.join(staging, SAFETENSORS), metadata={"format": "pt"})
        rundir.atomic_write(os.path.join(staging, "config.json"),
                            json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            save_hf_tokenizer(tokenizer, staging)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = {"family": family, "out": os.path.abspath(out), "step": step,
               "tensors": len(state), "tokenizer": tokenizer is not None}
    say(f"exported {os.path.abspath(workdir)} (step {step}) as {family} to {summary['out']} "
        f"({len(state)} tensors, {cfg.param_dtype}"
        + (")" if tokenizer is not None else "; the run has no tokenizer, none written)"))
    return summary
