"""llmjax's training step against Hugging Face GPT-2 + torch AdamW on identical shapes, one process.

    .venv/bin/pip install -e '.[bench]'        # torch + transformers (bring your own torch build)
    .venv/bin/python experiments/bench/compare_torch.py [--rounds 5] [--steps 10]
        [--shape LAYERS,HEADS,D_MODEL,SEQ,BATCH,VOCAB ...] [--bf16] [--json]

Both sides train a GPT-2-shaped decoder (learned positions, LayerNorm, GELU MLP of 4*d_model, tied
embeddings, no dropout, init std 0.02) with AdamW (b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1,
constant lr, global-norm clip 1.0) on the same random token batch, in float32 on the CPU.
--bf16: bfloat16 compute with float32 parameters and optimizer on both sides (llmjax
model.compute_dtype=bfloat16; HF forward and loss under torch.autocast('cpu', torch.bfloat16)).
  llmjax: the real compiled step of `llmjax train` (llmjax.train.loop.build), state donated.
  HF:     transformers.GPT2LMHeadModel(labels=...) + torch.optim.AdamW + clip_grad_norm_.
Differences in the models, stated: GPT-2 has bias vectors (llmjax has none) and a final
LayerNorm like llmjax; GPT-2's loss is the mean over the batch exactly as llmjax's is.

Timing: rounds alternate (llmjax K steps, then HF K steps, R times) so both see the same machine
state; each side's tokens/s is the median over rounds, after one untimed warm-up round. The loss
after all steps is printed as a sanity check (both start near ln(vocab) and must fall).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from llmjax.config import base_config, parse_experiment  # noqa: E402
from llmjax.train.info import SizeOnlyTokenizer  # noqa: E402
from llmjax.train.loop import abstract_batch, build, compile_train_step  # noqa: E402

# (n_layers, n_heads, d_model, seq_len, batch, vocab): the three GPT-2 shapes.
SHAPES = ((2, 4, 128, 128, 32, 512), (4, 4, 256, 128, 16, 4096), (6, 6, 384, 256, 8, 4096))
LR = 3e-4


def parse_shape(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 6 or min(parts) < 1:
        raise SystemExit(f"--shape={text!r}: expected LAYERS,HEADS,D_MODEL,SEQ,BATCH,VOCAB")
    return tuple(parts)


class LlmjaxSide:
    def __init__(self, shape: tuple[int, ...], tokens: np.ndarray, bf16: bool = False):
        n_layers, n_heads, d_model, seq, batch, vocab = shape
        c = base_config()
        c.model.update(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       max_seq_len=seq, positions="learned", norm="layernorm", mlp="gelu",
                       tie_embeddings=True, init_std=0.02,
                       compute_dtype="bfloat16" if bf16 else "float32")
        c.data.update(seq_len=seq, batch_size=batch)
        c.optimizer.update(lr=LR, warmup_steps=0, schedule="constant", b1=0.9, b2=0.95,
                           eps=1e-8, weight_decay=0.1, grad_clip=1.0)
        c.mesh.update(data=-1)
        exp = parse_experiment(c, jax.device_count())
        self.setup = build(exp, SizeOnlyTokenizer(vocab))
        self.step = compile_train_step(self.setup, exp)
        self.state = self.setup.init_fn()
        shapes = abstract_batch(exp, self.setup.batch_sharding)
        host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                "loss_mask": np.ones((batch, seq), np.float32)}
        self.batch = {k: jax.device_put(jnp.asarray(v), shapes[k].sharding)
                      for k, v in host.items()}
        self.loss = float("nan")

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        self.loss = float(metrics["loss"])
        return time.perf_counter() - t0


class TorchSide:
    def __init__(self, shape: tuple[int, ...], tokens: np.ndarray, bf16: bool = False):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        n_layers, n_heads, d_model, seq, batch, vocab = shape
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=d_model, n_layer=n_layers,
                         n_head=n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         initializer_range=0.02, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None)
        self.torch = torch
        self.model = GPT2LMHeadModel(cfg).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.95),
                                     eps=1e-8, weight_decay=0.1)
        self.inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64))
        self.labels = torch.from_numpy(tokens[:, 1:].astype(np.int64))
        self.bf16 = bf16
        self.loss = float("nan")

    def run(self, steps: int) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(input_ids=self.inputs).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(),
                                                         self.labels.flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        self.loss = float(loss.detach())
        return time.perf_counter() - t0


def compare(shape: tuple[int, ...], rounds: int, steps: int, bf16: bool = False) -> dict:
    n_layers, n_heads, d_model, seq, batch, vocab = shape
    tokens = np.random.default_rng(0).integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
    sides = {"llmjax": LlmjaxSide(shape, tokens, bf16), "hf": TorchSide(shape, tokens, bf16)}
    for side in sides.values():
        side.run(1)  # warm-up (compile / allocator)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            rates[name].append(steps * batch * seq / side.run(steps))
    med = {name: statistics.median(r) for name, r in rates.items()}
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sides["llmjax"].state.params))
    return {"shape": dict(zip(("n_layers", "n_heads", "d_model", "seq", "batch", "vocab"), shape,
                              strict=True)),
            "llmjax_params": params,
            "hf_params": sum(p.numel() for p in sides["hf"].model.parameters()),
            "llmjax_tokens_per_s": med["llmjax"], "hf_tokens_per_s": med["hf"],
            "ratio": med["llmjax"] / med["hf"],
            "llmjax_tokens_per_s_rounds": rates["llmjax"], "hf_tokens_per_s_rounds": rates["hf"],
            "dtype": "bfloat16" if bf16 else "float32",
            "steps_trained": 1 + rounds * steps, "ln_vocab": math.log(vocab),
            "llmjax_loss": sides["llmjax"].loss, "hf_loss": sides["hf"].loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per side (alternating)")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    ap.add_argument("--shape", action="append", type=parse_shape,
                    help="LAYERS,HEADS,D_MODEL,SEQ,BATCH,VOCAB (repeatable; default: 3 shapes)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 compute (float32 params) on both sides; HF under autocast")
    ap.add_argument("--json", action="store_true", help="one JSON object per shape")
    args = ap.parse_args()
    import torch
    import transformers

    if not args.json:
        print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} "
              f"device(s)) | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
              f"transformers {transformers.__version__} | "
              f"{'bfloat16 compute' if args.bf16 else 'float32'}")
        print(f"{'shape (L,H,d,seq,B,V)':>24} {'params':>8} {'llmjax tok/s':>13} "
              f"{'HF tok/s':>10} {'ratio':>6}  loss after N steps (llmjax / HF; ln V)")
    for shape in args.shape or SHAPES:
        r = compare(shape, args.rounds, args.steps, args.bf16)
        if args.json:
            print(json.dumps(r), flush=True)
            continue
        print(f"{','.join(map(str, shape)):>24} {r['llmjax_params'] / 1e6:>7.2f}M "
              f"{r['llmjax_tokens_per_s']:>13,.0f} {r['hf_tokens_per_s']:>10,.0f} "
              f"{r['ratio']:>5.2f}x  N={r['steps_trained']}: {r['llmjax_loss']:.3f} / "
              f"{r['hf_loss']:.3f} ({r['ln_vocab']:.3f})", flush=True)


if __name__ == "__main__":
    main()
