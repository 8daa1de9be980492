"""Decode speed: llmjax's KV-cache decoder against Hugging Face `generate`, same weights.

    .venv/bin/pip install -e '.[bench]'        # torch + transformers
    .venv/bin/python experiments/bench/generate.py [--rounds 5] [--new_tokens 240]
        [--shape LAYERS,HEADS,D_MODEL,VOCAB ...] [--batch 1 --batch 8] [--json]

Both sides decode a GPT-2-shaped model (learned positions, LayerNorm, GELU MLP of 4*d_model,
tied embeddings; 256 positions), random init (std 0.02) made once in llmjax and copied into
`transformers.GPT2LMHeadModel` with `llmjax.hf.gpt2_state_dict` (GPT-2's bias vectors zero), in
float32 on the CPU. Greedy decoding of exactly --new_tokens tokens after a 16-token random
prompt (no EOS: HF with min_new_tokens, llmjax with no EOS id), batch 1 and batch 8.
  llmjax: llmjax.generate.decode.Generator (prefill + compiled while_loop over a KV cache).
  HF:     model.generate(do_sample=False) under torch.inference_mode() (its DynamicCache).
Tokens/s counts new tokens only (batch * new_tokens / wall time, prefill included). Rounds
alternate (llmjax, then HF, R times) after one untimed warm-up of each (compilation); the median
is reported. `agree` is the fraction of rows whose greedy tokens are identical on both sides
(random-init logits are nearly flat, so a float32 rounding difference can flip an argmax).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

# (n_layers, n_heads, d_model, vocab): the 0.48M and 12M shapes of compare_torch.py.
SHAPES = ((2, 4, 128, 512), (6, 6, 384, 4096))
POSITIONS = 256
PROMPT = 16


class IdsOnly:
    """A tokenizer stand-in: prompts are given as ids, nothing is decoded, no EOS stops a row."""

    def __init__(self, vocab: int):
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id = vocab, 0, -1, 0

    def encode(self, text: str) -> np.ndarray:
        return np.zeros(0, np.int32)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return ""


def parse_shape(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 4 or min(parts) < 1:
        raise SystemExit(f"--shape={text!r}: expected LAYERS,HEADS,D_MODEL,VOCAB")
    return tuple(parts)


def build(shape: tuple[int, ...]):
    import torch
    from flax import nnx
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmjax.generate.decode import CachedDecoder, Generator
    from llmjax.hf import gpt2_config, gpt2_state_dict
    from llmjax.model import ModelConfig, Transformer

    n_layers, n_heads, d_model, vocab = shape
    cfg = ModelConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      max_seq_len=POSITIONS, positions="learned", norm="layernorm", mlp="gelu",
                      tie_embeddings=True, init_std=0.02)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(params)
    gen = Generator(*CachedDecoder.build(graphdef, params), IdsOnly(vocab), POSITIONS, max_batch=8)
    hf = GPT2LMHeadModel(GPT2Config(**gpt2_config(cfg))).eval()
    state = {k: torch.from_numpy(v.copy()) for k, v in gpt2_state_dict(params, cfg).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if [m for m in missing if not m.endswith("attn.bias")] or unexpected:
        raise SystemExit(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    n_params = sum(int(np.prod(np.shape(x))) for x in __import__("jax").tree.leaves(params))
    return gen, hf, n_params


def run_llmjax(gen, prompts: np.ndarray, new: int) -> tuple[float, list[list[int]]]:
    from llmjax.generate.decode import Request

    reqs = [Request(p.tolist(), new) for p in prompts]
    t0 = time.perf_counter()
    out = gen.generate(reqs)
    return time.perf_counter() - t0, [c.tokens for c in out]


def run_hf(hf, prompts: np.ndarray, new: int) -> tuple[float, list[list[int]]]:
    import torch

    ids = torch.from_numpy(prompts.astype(np.int64))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                          min_new_tokens=new, do_sample=False, pad_token_id=0)
    dt = time.perf_counter() - t0
    return dt, out[:, prompts.shape[1]:].tolist()


def compare(shape: tuple[int, ...], batch: int, rounds: int, new: int, built) -> dict:
    gen, hf, n_params = built
    prompts = np.random.default_rng(batch).integers(0, shape[3], (batch, PROMPT), np.int32)
    _, ours = run_llmjax(gen, prompts, new)  # warm-up: compiles
    _, theirs = run_hf(hf, prompts, new)
    rates: dict[str, list[float]] = {"llmjax": [], "hf": []}
    for _ in range(rounds):
        rates["llmjax"].append(batch * new / run_llmjax(gen, prompts, new)[0])
        rates["hf"].append(batch * new / run_hf(hf, prompts, new)[0])
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"shape": dict(zip(("n_layers", "n_heads", "d_model", "vocab"), shape, strict=True)),
            "params": n_params, "batch": batch, "new_tokens": new, "prompt_tokens": PROMPT,
            "llmjax_tokens_per_s": med["llmjax"], "hf_tokens_per_s": med["hf"],
            "ratio": med["llmjax"] / med["hf"], "rounds": rates,
            "agree": float(np.mean([a == b for a, b in zip(ours, theirs, strict=True)]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (alternating)")
    ap.add_argument("--new_tokens", type=int, default=240)
    ap.add_argument("--shape", action="append", type=parse_shape,
                    help="LAYERS,HEADS,D_MODEL,VOCAB (repeatable; default: 2 shapes)")
    ap.add_argument("--batch", action="append", type=int, help="repeatable; default 1 and 8")
    ap.add_argument("--json", action="store_true", help="one JSON object per (shape, batch)")
    args = ap.parse_args()
    if args.new_tokens + PROMPT > POSITIONS:
        raise SystemExit(f"--new_tokens: at most {POSITIONS - PROMPT}")
    import jax
    import torch
    import transformers

    if not args.json:
        print(f"jax {jax.__version__} ({jax.devices()[0].platform}) | torch {torch.__version__} "
              f"({torch.get_num_threads()} threads) | transformers {transformers.__version__} | "
              f"float32, greedy, {PROMPT}-token prompt, {args.new_tokens} new tokens")
        print(f"{'shape (L,H,d,V)':>16} {'params':>8} {'batch':>5} {'llmjax tok/s':>13} "
              f"{'HF tok/s':>10} {'ratio':>6} {'agree':>6}")
    for shape in args.shape or SHAPES:
        built = build(shape)
        for batch in args.batch or (1, 8):
            r = compare(shape, batch, args.rounds, args.new_tokens, built)
            if args.json:
                print(json.dumps(r), flush=True)
                continue
            print(f"{','.join(map(str, shape)):>16} {r['params'] / 1e6:>7.2f}M {batch:>5} "
                  f"{r['llmjax_tokens_per_s']:>13,.0f} {r['hf_tokens_per_s']:>10,.0f} "
                  f"{r['ratio']:>5.2f}x {r['agree']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
