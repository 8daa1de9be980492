"""isoflop: Chinchilla Approach 2 on CPU — for each FLOP budget, five model sizes trained on
tokens = budget / (training FLOPs per token).

Same models, data and per-size rules (batch, lr, untied byte-level embeddings) as
scaling_demo.py; only the token count differs: it is set by the budget, so small models train on
many tokens per parameter and large ones on few. Fitting a parabola to loss vs log N per budget
gives the loss-optimal N for that budget (Hoffmann et al. 2022, sec. 3.2).

    llmjax sweep --config=experiments/configs/isoflop.py --workdir=isoflop --parallel=2
    llmjax sweep --config=experiments/configs/isoflop.py:budgets=1e11+3e11 --workdir=iso_small

Variants after the colon, comma-separated:
  budgets=C1+C2+...    training FLOP budgets (default 1e11+3e11+1e12+3e12; ~22 TFLOPs in all,
                       about 15-20 minutes on 2 CPU cores)
  per_budget=K         model sizes per budget (default 5), centred in log N on the
                       Chinchilla-optimal N = sqrt(C / 120) (C = 6 N D with D = 20 N)
Each point's overrides carry `budget` (the results table's budget column); steps are rounded so
that steps x batch x seq_len x FLOPs/token is the budget to within half a step.
"""

import importlib.util
import math
import os

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("llmjax_configs_scaling_demo",
                                               os.path.join(_here, "scaling_demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

# Candidate shapes (d_model, n_layers), smallest first; head_dim 16 as in scaling_demo.
SHAPES = ((16, 1), (16, 2), (24, 2), (32, 2), (48, 2), (64, 2), (64, 3), (80, 3), (96, 3),
          (128, 3), (128, 4))
BUDGETS = (1e11, 3e11, 1e12, 3e12)
PER_BUDGET = 5
MIN_STEPS = 50


def _parse(arg):
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"isoflop.py: variant {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    unknown = sorted(set(out) - {"budgets", "per_budget"})
    if unknown:
        raise ValueError(f"isoflop.py: unknown variant(s) {unknown}; allowed: budgets, per_budget")
    budgets = tuple(float(b) for b in out["budgets"].split("+")) if "budgets" in out else BUDGETS
    return budgets, int(out.get("per_budget", PER_BUDGET))


def get_config(arg=None):
    _parse(arg)
    return demo.get_config()


def _shape_overrides(d_model, n_layers):
    return {"model.d_model": d_model, "model.n_layers": n_layers,
            "model.n_heads": max(1, d_model // demo.HEAD_DIM)}


def _size(d_model, n_layers):
    """(non-embedding params, training FLOPs per token) of a shape."""
    from llmjax.sweep.spec import apply_overrides, cost

    c = cost(apply_overrides(demo._base(), _shape_overrides(d_model, n_layers)))
    return c.n_non_embedding, c.flops_per_token


def _budget_name(c):
    mantissa, exponent = f"{c:.0e}".split("e")
    return f"c{mantissa}e{int(exponent)}"


def get_sweep(arg=None):
    budgets, per_budget = _parse(arg)
    sizes = [(d, n, *_size(d, n)) for d, n in SHAPES]
    points = []
    for budget in budgets:
        n_opt = math.sqrt(budget / 120.0)
        nearest = min(range(len(sizes)), key=lambda i: abs(math.log(sizes[i][2] / n_opt)))
        lo = max(0, min(nearest - per_budget // 2, len(sizes) - per_budget))
        for d_model, n_layers, n, fpt in sizes[lo:lo + per_budget]:
            tokens = budget / fpt
            batch = 2 ** round(math.log2(max(1.0, tokens / (demo.SEQ_LEN * demo.TARGET_STEPS))))
            batch = min(demo.MAX_BATCH, max(demo.MIN_BATCH, batch))
            steps = max(MIN_STEPS, round(tokens / (batch * demo.SEQ_LEN)))
            points.append({
                "name": f"{_budget_name(budget)}_d{d_model}_l{n_layers}",
                "budget": budget,
                **_shape_overrides(d_model, n_layers),
                "data.batch_size": batch,
                "steps": steps,
                "optimizer.lr": round(demo.LR_BASE * 64 / d_model, 6),
                "optimizer.warmup_steps": max(1, steps // 10),
                "eval_every": max(1, steps // 4),
                "eval_batches": max(1, demo.EVAL_ROWS // batch),
                "log_every": max(1, steps // 25),
                "checkpoint_every": max(1, steps // 2),
                "meta.tokens_per_param": round(steps * batch * demo.SEQ_LEN / n, 2),
            })
    return points
