"""Hugging Face interchange (`llmjax convert`, llmjax/hf.py) against real `transformers` models:
random-init GPT-2 and Llama built locally (no hub), every tensor non-trivial (biases and norm
weights random, so a swapped or missing tensor shows), fp32 logits within 1e-4 both ways,
greedy decoding equal for 32 tokens, the round trip HF -> llmjax -> HF tensor for tensor, the
converted runs through `llmjax generate` and `llmjax serve`, and the refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import llmjax  # noqa: E402
from llmjax import cli, hf  # noqa: E402
from llmjax.errors import UserError  # noqa: E402
from llmjax.generate.decode import Request  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
NEW_TOKENS = 32
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a small model that learned to count.",
    "Hugging Face and llmjax exchange weights in safetensors files.",
    "A tiny tokenizer for tests: the cat sat on the mat, then the dog sat too.",
] * 4


def _tokenizer_json(specials: list[str]) -> str:
    """A GPT-2-style byte-level BPE trained on SENTENCES, with `specials` added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok.to_str()


def _randomize(model, seed: int) -> None:
    """Every parameter random: matrices N(0, 0.15), norm weights 1 + N(0, 0.2), biases N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("ln" in name or "norm" in name) and name.endswith("weight") else 0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def _hf_dir(path, family: str) -> str:
    """A saved random-init HF model (+ tokenizer) of `family`."""
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=320,
                                         n_positions=128, n_inner=96, bos_token_id=None,
                                         eos_token_id=None, layer_norm_epsilon=1e-5)
        model = transformers.GPT2LMHeadModel(config)
        specials, names = ["<|endoftext|>"], {"bos_token": "<|endoftext|>",
                                              "eos_token": "<|endoftext|>"}
    else:
        config = transformers.LlamaConfig(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
            num_hidden_layers=2, vocab_size=300, max_position_embeddings=128,
            tie_word_embeddings=False, rope_theta=5000.0, rms_norm_eps=1e-6,
            attention_bias=True, mlp_bias=False, bos_token_id=None, eos_token_id=None)
        model = transformers.LlamaForCausalLM(config)
        specials, names = ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}
    _randomize(model, seed=1 if family == "gpt2" else 2)
    model.save_pretrained(str(path))
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write(_tokenizer_json(specials))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", **names}, f)
    return str(path)


def _convert(*argv: str, capsys=None) -> tuple[int, str]:
    rc = cli.main(["convert", *argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    return {family: _hf_dir(base / family, family) for family in ("gpt2", "llama")}


@pytest.fixture(scope="module")
def runs(hf_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for family, src in hf_dirs.items():
        out[family] = str(base / family)
        assert cli.main(["convert", f"--from_hf={src}", f"--workdir={out[family]}"]) == 0
    return out


def _torch_model(directory: str):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model.eval()


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def _tokens(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(2, 40)).astype(np.int32)


# ------------------------------------------------------------------------------------ HF -> llmjax


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_imported_logits_match_transformers(family, hf_dirs, runs):
    model, tok = llmjax.load(runs[family])
    assert model.step == 0 and model.config.param_dtype == "float32"
    assert model.config.use_bias  # GPT-2's biases; the Llama here has attention_bias
    torch_model = _torch_model(hf_dirs[family])
    tokens = _tokens(model.config.vocab_size)
    diff = np.abs(np.asarray(model(tokens)) - _hf_logits(torch_model, tokens)).max()
    print(f"{family} HF -> llmjax max |logit diff| = {diff:.2e}")
    assert diff < TOL
    meta = json.load(open(os.path.join(runs[family], "metadata.json")))
    assert meta["source"]["model_type"] == family
    assert json.load(open(os.path.join(runs[family], "status.json")))["status"] == "complete"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_decoding_matches_transformers_generate(family, hf_dirs, runs):
    model, tok = llmjax.load(runs[family])
    gen = model.generator(tok)
    ids = gen.encode("The quick brown fox")
    assert ids[0] == tok.bos_id and len(ids) > 2
    [c] = gen.generate([Request(ids, NEW_TOKENS)])
    torch_model = _torch_model(hf_dirs[family])
    with torch.no_grad():
        out = torch_model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS,
                                   do_sample=False, eos_token_id=tok.eos_id,
                                   pad_token_id=tok.pad_id, attention_mask=torch.ones(
                                       1, len(ids), dtype=torch.long))
    want = out[0, len(ids):].tolist()
    if c.finish_reason == "stop":  # EOS: HF includes it, llmjax drops it
        want = want[:want.index(tok.eos_id)]
    assert c.tokens == want
    assert len(c.tokens) == NEW_TOKENS or c.finish_reason == "stop"


def test_imported_tokenizer_matches_the_hf_one(hf_dirs, runs):
    from llmjax.data.tokenizer import ImportedTokenizer, load_tokenizer_file

    _, tok = llmjax.load(runs["gpt2"])
    assert isinstance(tok, ImportedTokenizer) and tok.name == f"hf:{tok.vocab_size}"
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dirs["gpt2"])
    eot = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == tok.pad_id == eot
    for text in ["The quick brown fox", "  spaces\tand\nnewlines ", "ünïcödé ✓ 🦊", ""]:
        ids = tok.encode(text).tolist()
        assert ids == hf_tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    assert tok.encode("<|endoftext|>").tolist() != [eot]  # special text stays text
    assert tok.decode([eot]) == "" and tok.decode([eot], skip_special_tokens=False) != ""
    assert tok.token_byte_lengths()[tok.encode("fox").tolist()].sum() == 3
    again = load_tokenizer_file(os.path.join(runs["gpt2"], "tokenizer"))
    assert (again.name, again.bos_id, again.eos_id) == (tok.name, tok.bos_id, tok.eos_id)
    llama_tok = llmjax.load(runs["llama"])[1]
    assert llama_tok.decode([llama_tok.bos_id], skip_special_tokens=False) == "<s>"
    assert llama_tok.decode([llama_tok.eos_id], skip_special_tokens=False) == "</s>"


# ------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_round_trip_recovers_every_tensor(family, hf_dirs, runs, tmp_path, capsys):
    from safetensors.numpy import load_file

    out = str(tmp_path / "back")
    assert _convert(f"--to_hf={out}", f"--workdir={runs[family]}")[0] == 0
    original = load_file(os.path.join(hf_dirs[family], "model.safetensors"))
    back = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(back) == sorted(original)
    for name, value in original.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == family
    # what transformers reads back is the same model, with a working tokenizer
    torch_model = _torch_model(out)
    tokens = _tokens(torch_model.config.vocab_size, seed=3)
    np.testing.assert_array_equal(_hf_logits(torch_model, tokens),
                                  _hf_logits(_torch_model(hf_dirs[family]), tokens))
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("the cat", add_special_tokens=False).input_ids == transformers.AutoTokenizer \
        .from_pretrained(hf_dirs[family])("the cat", add_special_tokens=False).input_ids


def test_sharded_and_bfloat16_checkpoints_read_like_the_single_file(hf_dirs, tmp_path):
    import jax

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama"])
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    assert os.path.exists(tmp_path / "sharded" / hf.SAFETENSORS_INDEX)
    _, cfg, single, _ = hf.read_hf(hf_dirs["llama"])
    _, _, sharded, _ = hf.read_hf(str(tmp_path / "sharded"))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_array_equal(a, b)
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    _, cfg, params, _ = hf.read_hf(str(tmp_path / "bf16"))  # --dtype=auto: the file's
    assert cfg.param_dtype == cfg.compute_dtype == "bfloat16"
    assert {str(a.dtype) for a in jax.tree.leaves(params)} == {"bfloat16"}


# ------------------------------------------------------------------------------------ llmjax -> HF


def _random_run(workdir: str, seed: int, **model_fields) -> tuple[str, object]:
    """A run directory of a random llmjax model (byte tokenizer), every parameter non-trivial."""
    import jax

    from llmjax.data.tokenizer import ByteTokenizer
    from llmjax.eval.probe import _abstract_params
    from llmjax.model import ModelConfig
    from llmjax.model.config import BIAS_NAMES

    tok = ByteTokenizer()
    cfg = ModelConfig(**{**dict(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4,
                                max_seq_len=64), **model_fields})
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        name = str(path[-1].key)
        if name == "scale":
            return (1 + 0.2 * rng.standard_normal(a.shape)).astype(np.float32)
        if name == "bias" or name in BIAS_NAMES:
            return (0.2 * rng.standard_normal(a.shape)).astype(np.float32)
        return (0.15 * rng.standard_normal(a.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(leaf, _abstract_params(cfg)[1])
    exp = hf._experiment(cfg, cfg.max_seq_len, tok.name)
    hf.write_run(workdir, exp, params, tok, {"source": "test"})
    return workdir, cfg


EXPORTS = {
    # GPT-2 without biases (exported as zeros), untied, d_ff not 4 * d
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", tie_embeddings=False,
                 d_ff=128),
    # Llama with biases, grouped-query attention, muP (attention scale and output multiplier
    # folded into the weights), untied
    "llama_mup": dict(positions="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2,
                      use_bias=True, tie_embeddings=False, rope_theta=500.0, norm_eps=1e-6,
                      parametrization="mup", mup_base_d_model=32, mup_base_d_head=8),
    # Llama, tied, the unrolled layer layout
    "llama_tied": dict(positions="rope", norm="rmsnorm", mlp="swiglu", scan_layers=False),
}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_logits_match_llmjax(name, tmp_path):
    workdir, cfg = _random_run(str(tmp_path / "run"), seed=len(name), **EXPORTS[name])
    out = str(tmp_path / "hf")
    summary = hf.export_hf(workdir, out, say=lambda s: None)
    assert summary["family"] == name.split("_")[0]
    model, _ = llmjax.load(workdir)
    torch_model = _torch_model(out)
    tokens = _tokens(cfg.vocab_size, seed=4)
    diff = np.abs(np.asarray(model(tokens)) - _hf_logits(torch_model, tokens)).max()
    print(f"{name} llmjax -> HF max |logit diff| = {diff:.2e}")
    assert diff < TOL
    # the byte tokenizer: AutoTokenizer gives llmjax's prompt (BOS first) and its specials
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("héllo").input_ids == [257, *"héllo".encode()]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (257, 258, 256)
    assert torch_model.config.eos_token_id == 258


def test_export_refuses_what_hf_cannot_express(tmp_path):
    from llmjax.model import ModelConfig

    cases = {
        "model.mlp='none'": dict(mlp="none"),
        "model.norm='layernorm'": dict(positions="rope", norm="layernorm", mlp="swiglu"),
        "model.mlp='swiglu'": dict(positions="learned", norm="layernorm", mlp="swiglu"),
        "model.n_kv_heads=2": dict(positions="learned", norm="layernorm", mlp="gelu",
                                   n_kv_heads=2),
        "model.parametrization='mup'": dict(parametrization="mup", mup_base_d_model=32,
                                            mup_base_d_head=16, tie_embeddings=True),
    }
    for field, fields in cases.items():
        cfg = ModelConfig(**{**dict(d_model=64, n_heads=4), **fields})
        with pytest.raises(UserError) as e:
            hf.hf_state_dict({}, cfg)
        assert str(e.value).startswith(field), (field, str(e.value))
    # muP at its base width is sp: nothing to fold, tied is fine
    hf.export_family(ModelConfig(d_model=64, n_heads=4, parametrization="mup",
                                 mup_base_d_model=64, mup_base_d_head=16))


# ------------------------------------------------------------------------------------ the CLI


def test_converted_model_generates_through_the_cli(runs):
    model, tok = llmjax.load(runs["gpt2"])
    gen = model.generator(tok)
    [want] = gen.generate([Request(gen.encode("the cat"), 8)])
    r = subprocess.run([sys.executable, "-m", "llmjax", "generate", f"--workdir={runs['gpt2']}",
                        "--prompt=the cat", "--max_new_tokens=8", "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [line] = r.stdout.splitlines()
    assert json.loads(line)["tokens"] == want.tokens


def test_converted_model_serves_openai_completions(runs):
    from openai import OpenAI
    from test_serve import Server  # tests/ is on sys.path

    server = Server(runs["llama"])
    try:
        client = OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
        r = client.completions.create(model="llama", prompt="Once upon a time", max_tokens=6,
                                      temperature=0)
        [want] = llmjax.pipeline("text-generation", model=runs["llama"])(
            "Once upon a time", max_new_tokens=6, return_full_text=False)
        assert r.choices[0].text == want["generated_text"]
    finally:
        server.stop()


def test_import_without_tokenizer_converts_weights_only(hf_dirs, tmp_path, capsys):
    src = str(tmp_path / "bare")
    shutil.copytree(hf_dirs["llama"], src,
                    ignore=shutil.ignore_patterns("tokenizer.json", "tokenizer_config.json"))
    run = str(tmp_path / "run")
    rc, _ = _convert(f"--from_hf={src}", f"--workdir={run}", capsys=capsys)
    assert rc == 0 and not os.path.exists(os.path.join(run, "tokenizer"))
    rc = cli.main(["generate", f"--workdir={run}", "--prompt=x"])
    err = capsys.readouterr().err
    assert rc == 2 and "tokenizer" in err and len(err.strip().splitlines()) == 1
    # the weights export all the same (no tokenizer files)
    out = str(tmp_path / "back")
    assert _convert(f"--to_hf={out}", f"--workdir={run}", capsys=capsys)[0] == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def _edited(src: str, dst: str, config=None, drop=(), reshape=(), files=None) -> str:
    """A copy of HF dir `src` with config.json fields changed, tensors dropped or reshaped."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    if config:
        cfg = json.load(open(os.path.join(dst, "config.json")))
        cfg.update(config)
        json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    if drop or reshape:
        path = os.path.join(dst, "model.safetensors")
        tensors = load_file(path)
        for name in drop:
            del tensors[name]
        for name in reshape:
            tensors[name] = tensors[name][:-1]
        save_file(tensors, path)
    if files is not None:
        files(dst)
    return dst


def _bin_only(d: str) -> None:
    os.remove(os.path.join(d, "model.safetensors"))
    open(os.path.join(d, "pytorch_model.bin"), "wb").write(b"not read")


BAD_IMPORTS = {
    "model_type": ("gpt2", dict(config={"model_type": "bert"}), "model_type='bert'"),
    "missing": ("llama", dict(drop=["model.layers.1.self_attn.k_proj.weight"]),
                "tensor model.layers.1.self_attn.k_proj.weight is missing"),
    "shape": ("gpt2", dict(reshape=["transformer.h.0.mlp.c_fc.bias"]),
              "tensor transformer.h.0.mlp.c_fc.bias has shape [95]"),
    "bin": ("gpt2", dict(files=_bin_only), "pytorch_model.bin"),
    "gelu": ("gpt2", dict(config={"activation_function": "gelu"}),
             "activation_function='gelu'"),
    "layer_idx": ("gpt2", dict(config={"scale_attn_by_inverse_layer_idx": True}),
                  "scale_attn_by_inverse_layer_idx=True"),
    "rope_scaling": ("llama", dict(config={"rope_scaling": {"rope_type": "linear",
                                                            "factor": 2.0}}), "rope_scaling"),
    "head_dim": ("llama", dict(config={"head_dim": 32}), "head_dim=32"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_bad_imports_say_one_line_and_write_nothing(case, hf_dirs, tmp_path, capsys):
    family, edits, message = BAD_IMPORTS[case]
    src = _edited(hf_dirs[family], str(tmp_path / "src"), **edits)
    run = tmp_path / "run"
    rc, err = _convert(f"--from_hf={src}", f"--workdir={run}", capsys=capsys)
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not run.exists() and os.listdir(tmp_path) == ["src"]  # no staging directory left


def test_convert_flags(runs, tmp_path, capsys):
    rc, err = _convert(f"--workdir={tmp_path / 'x'}", capsys=capsys)
    assert rc == 2 and "exactly one of --from_hf" in err
    rc, err = _convert(f"--from_hf={tmp_path}", f"--workdir={runs['gpt2']}", capsys=capsys)
    assert rc == 2 and "no config.json" in err
    os.makedirs(tmp_path / "full")
    open(tmp_path / "full" / "f", "w").close()
    rc, err = _convert(f"--to_hf={tmp_path / 'full'}", f"--workdir={runs['gpt2']}",
                       capsys=capsys)
    assert rc == 2 and "not empty" in err


def test_converted_model_finetunes_with_lora_and_exports_merged(runs, tmp_path):
    """HF Llama -> llmjax -> LoRA classification fine-tune -> HF: transformers computes the
    fine-tuned (merged) model's logits."""
    config = os.path.join(REPO, "experiments", "configs", "finetune_sentiment.py")
    ft = str(tmp_path / "ft")
    assert cli.main(["finetune", f"--config={config}:lora", f"--init_from={runs['llama']}",
                     f"--workdir={ft}", "--config.steps=6", "--config.eval_every=6",
                     "--config.data.seq_len=64", "--config.data.batch_size=8",
                     "--config.finetune.train_examples=64",
                     "--config.finetune.validation_examples=16"]) == 0
    tuned, _ = llmjax.load(ft)
    base, _ = llmjax.load(runs["llama"])
    tokens = _tokens(tuned.config.vocab_size, seed=5)
    assert np.abs(np.asarray(tuned(tokens)) - np.asarray(base(tokens))).max() > 1e-6
    out = str(tmp_path / "hf")
    hf.export_hf(ft, out, say=lambda s: None)
    diff = np.abs(np.asarray(tuned(tokens)) - _hf_logits(_torch_model(out), tokens)).max()
    assert diff < TOL
