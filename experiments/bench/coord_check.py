"""muP coordinate check: mean |activation| per layer against width, standard vs muP parametrization.

    .venv/bin/python experiments/bench/coord_check.py --out runs/coord_check \
        [--widths 32,64,128,256,512] [--steps 8] [--lr 0.01] [--base 32] [--seeds 2]

For each parametrization and width, a tiny transformer (depth 2, byte vocabulary, 4 heads, so
head_dim grows with width) trains `--steps` Adam steps at a large constant learning rate on ONE
fixed random batch, with the real optimizer (`make_optimizer` + `lr_multiplier_tree`) and the real
train step. After every step the model runs once more on that batch under nnx.capture, which
records every module's output without changing the forward pass; the mean |x| of each of these
is one "coordinate size":
  embed        token embeddings (the residual stream entering block 0)   [batch, seq, d_model]
  attn{i}      block i's attention output, before the residual add       [batch, seq, d_model]
  mlp{i}       block i's MLP output, before the residual add             [batch, seq, d_model]
  block{i}     the residual stream after block i                         [batch, seq, d_model]
  logits       the output logits                                         [batch, seq, vocab]
Under muP every row stays flat in width; under standard parametrization (SP) the hidden rows and
the logits grow with width (Tensor Programs V, Fig. 5). Prints a table of the values after the
last step and the ratio widest/narrowest per row, and saves `coord_check.png` (one panel per
parametrization, log-log, one line per layer) and `coord_check.json` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from llmjax.config import OptimizerConfig  # noqa: E402
from llmjax.model import ModelConfig, Transformer  # noqa: E402
from llmjax.train.optimizer import lr_multiplier_tree, make_optimizer  # noqa: E402
from llmjax.train.step import TrainState, make_train_step  # noqa: E402

VOCAB = 259  # the byte tokenizer's: 256 bytes + BOS/EOS/PAD


def layer_names(n_layers: int) -> list[str]:
    """Rows of the coordinate check, input to output."""
    names = ["embed"]
    for i in range(n_layers):
        names += [f"attn{i}", f"mlp{i}", f"block{i}"]
    return names + ["logits"]


def _captured_path_to_name(path: tuple) -> str | None:
    """nnx.capture path of a method output -> coordinate-check row (None = not a row)."""
    keys = [str(k) for k in path]
    if keys == ["__call__"]:
        return "logits"
    if keys == ["embed_dropout", "__call__"]:
        return "embed"  # dropout is the identity here (rate 0): this is the embedding output
    if len(keys) == 3 and keys[0] == "blocks" and keys[2] == "__call__":
        return f"block{keys[1]}"
    if len(keys) == 4 and keys[0] == "blocks" and keys[2] in ("attn", "mlp"):
        return f"{keys[2]}{keys[1]}"
    return None


def make_config(parametrization: str, width: int, base_width: int, *, n_layers: int = 2,
                n_heads: int = 4, seq_len: int = 32, **overrides) -> ModelConfig:
    """The coordinate-check model at one width (layers unrolled so each is captured by name).

    n_heads is fixed, so head_dim grows with width and the base head_dim is base_width/n_heads.
    """
    return ModelConfig(
        vocab_size=VOCAB, d_model=width, n_layers=n_layers, n_heads=n_heads, max_seq_len=seq_len,
        scan_layers=False, parametrization=parametrization, mup_base_d_model=base_width,
        mup_base_d_head=base_width // n_heads, **overrides)


def fixed_batch(batch: int, seq_len: int, seed: int) -> dict[str, jax.Array]:
    """One batch of random byte tokens [batch, seq_len], every target counted."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, size=(batch, seq_len + 1), dtype=np.int32)
    return {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
            "loss_mask": jnp.ones((batch, seq_len), jnp.float32)}


def measure(cfg: ModelConfig, *, steps: int, lr: float, batch: int = 8, seed: int = 0,
            data_seed: int = 0, use_lr_multipliers: bool = True, delta: bool = False
            ) -> dict[str, list[float]]:
    """Row name -> mean |activation| at steps 0 (init), 1, ..., `steps`.

    delta=True: mean |activation - activation at init| instead (0 at step 0).

    Adam (b1 0.9, b2 0.95, eps 1e-8) at constant `lr`, no warmup, clipping or weight decay.
    use_lr_multipliers=False drops muP's per-parameter learning rates (to see the check fail).
    """
    tokens = fixed_batch(batch, cfg.max_seq_len, data_seed)
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    opt = OptimizerConfig(lr=lr, warmup_steps=0, schedule="constant", min_lr_ratio=1.0, b1=0.9,
                          b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=0.0)
    mults = lr_multiplier_tree(params, cfg) if use_lr_multipliers else None
    tx, schedule = make_optimizer(opt, steps, lr_multipliers=mults)
    step_fn = jax.jit(make_train_step(graphdef, tx, schedule))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(seed))

    @jax.jit
    def activations(params: dict) -> dict[str, jax.Array]:
        forward = nnx.capture(nnx.merge(graphdef, params), nnx.Intermediate,
                              method_outputs=nnx.Intermediate)
        _, captured = forward(tokens["inputs"])
        out = {}
        for path, value in nnx.to_flat_state(captured):
            name = _captured_path_to_name(path)
            if name is not None:
                value = value.get_value() if isinstance(value, nnx.Variable) else value
                out[name] = value[0]  # sown values are 1-tuples
        return out

    init = activations(state.params)
    history = {name: [] for name in layer_names(cfg.n_layers)}
    for t in range(steps + 1):
        if t:
            state, _ = step_fn(state, tokens)
        acts = activations(state.params)
        for name, x in acts.items():
            history[name].append(float(jnp.mean(jnp.abs(x - init[name] if delta else x))))
    return history


def coord_check(parametrization: str, widths: list[int], *, base_width: int, steps: int,
                lr: float, seeds: int = 1, **kwargs) -> dict[int, dict[str, list[float]]]:
    """width -> row -> mean |activation| per step, averaged over `seeds` init seeds."""
    out = {}
    for width in widths:
        cfg = make_config(parametrization, width, base_width)
        runs = [measure(cfg, steps=steps, lr=lr, seed=s, **kwargs) for s in range(seeds)]
        out[width] = {k: list(np.mean([r[k] for r in runs], axis=0)) for k in runs[0]}
    return out


def growth(result: dict[int, dict[str, list[float]]], step: int = -1) -> dict[str, float]:
    """Row -> mean |act| at the widest width / at the narrowest, at `step`."""
    lo, hi = min(result), max(result)
    return {k: result[hi][k][step] / result[lo][k][step] for k in result[lo]}


def plot(results: dict[str, dict[int, dict[str, list[float]]]], path: str, step: int = -1) -> None:
    """One log-log panel per parametrization: mean |act| after `step` against width, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), sharey=True)
    for ax, (name, result) in zip(np.atleast_1d(axes), results.items(), strict=True):
        widths = sorted(result)
        for row in result[widths[0]]:
            ax.plot(widths, [result[w][row][step] for w in widths], marker="o", label=row)
        steps = len(result[widths[0]]["logits"]) - 1
        ax.set(xscale="log", yscale="log", xlabel="width (d_model)",
               title=f"{name}: after {steps} Adam steps")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("mean |activation|")
    np.atleast_1d(axes)[-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for coord_check.png / .json")
    p.add_argument("--widths", default="32,64,128,256,512")
    p.add_argument("--base", type=int, default=32, help="muP base width (mup_base_d_model)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name, param in (("SP", "sp"), ("muP", "mup")):
        results[name] = coord_check(param, widths, base_width=args.base, steps=args.steps,
                                    lr=args.lr, seeds=args.seeds, batch=args.batch)
    rows = list(results["SP"][widths[0]])
    print(f"mean |activation| after {args.steps} Adam steps (lr {args.lr}, base width "
          f"{args.base}); last column: widest / narrowest")
    for name, result in results.items():
        g = growth(result)
        print(f"\n{name:6s}" + "".join(f"{w:>10d}" for w in widths) + "     ratio")
        for row in rows:
            print(f"{row:6s}" + "".join(f"{result[w][row][-1]:10.4f}" for w in widths)
                  + f"{g[row]:10.2f}")
    plot(results, os.path.join(args.out, "coord_check.png"))
    with open(os.path.join(args.out, "coord_check.json"), "w") as f:
        json.dump({"args": vars(args), "results": {n: {str(w): r for w, r in res.items()}
                                                   for n, res in results.items()}}, f, indent=1)
    print(f"\nwrote {os.path.join(args.out, 'coord_check.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
