"""demo: what `make demo` trains — a scaling study and two emergence studies, in one sweep.

    llmjax sweep --config=experiments/configs/demo.py --workdir=demo --parallel=2
    llmjax sweep --config=experiments/configs/demo.py:study=scaling --workdir=demo_scaling
    llmjax train --config=experiments/configs/demo.py:point=e_d64_l2 --workdir=runs/e64

Scaling study (points `s_d<w>`, meta.study = "scaling"): one shape family — 2 layers, head_dim
16, width w in SCALING_WIDTHS (every other setting follows from w) — on the default corpus's prose
and facts families (SCALING_CORPUS: a Zipfian grammar and a Zipfian knowledge base, whose loss
falls smoothly with scale, and whose entropy rate the generator computes exactly: `llmjax data
stats`, so a fitted E can be checked against the truth). Each width is ONE run at a constant
learning rate after warmup, with the same batch for every width, evaluated 10 times: with no decay
in the schedule, the eval loss after D tokens is the loss of a run that stops at D, so the curves
give the D axis of Approach 3's L(N, D) = E + A/N^a + B/D^b with log N and log D uncorrelated, at
the cost of one run per size. The report holds out the widest model and predicts its final loss.
(A grid of cosine runs at 10/20/40 tokens per parameter, 15 runs, took 9.3 min and mispredicted
the held-out width by -6% to +20%: batch and step counts changed with D. See
experiments/demo_design.md.)

Emergence study (points `e_d<w>_l<L>`, meta.study = "emergence"): multi-query associative recall
(Zoology's MQAR; the `assoc` episode kind, "ar: a3 f7 q1 | f7 a3 ...", a fresh letter-digit store
in every document, so every rule a probe meets is new), at one token budget (2500 steps of 16 x 128
tokens, 5.1M) for every model: widths EMERGENCE_WIDTHS with 2 layers and 4 heads each, and width
64 with 1 layer as the control that cannot compose the two attention steps a lookup needs.
Learned positions, constant lr after a short warmup, one lr for every width (3e-3; 1e-2 never
formed the lookup).
Checkpoints every 1/6 of training are kept, so `llmjax probe --all_steps` follows the ability
through training. Its probes: the lookup at k = 0 and 4 shots, 352 held-out episodes per cell.

Induction study (points `i_d64_l<L>`, meta.study = "induction"): experiments/configs/induction.py's
setting, 2 layers against 1: the 2-layer model forms induction heads (prefix matching, ICL score)
after a plateau, the 1-layer one cannot. A checkpoint every 100 steps locates the phase change.

Design choices and the designs that failed, with their numbers: experiments/demo_design.md.

Variants after the colon, comma-separated:
  study=scaling|emergence|induction|both   which study's points `get_sweep` returns (default
                                          both: all three)
  point=NAME                     (get_config only) the full config of one point, for a single run
"""

import importlib.util
import os

from ml_collections import ConfigDict

_spec = importlib.util.spec_from_file_location(
    "llmjax_configs_scaling_demo",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "scaling_demo.py"))
_scaling_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_scaling_demo)

HEAD_DIM = _scaling_demo.HEAD_DIM

# ---- scaling study
SCALING_WIDTHS = (16, 24, 32, 48, 64)
SCALING_LAYERS = 2
SCALING_STEPS = 500
SCALING_BATCH = 16
SCALING_EVALS = 10
LR_BASE = _scaling_demo.LR_BASE  # at d_model 64; Adam's best lr falls as 1/width here
EVAL_ROWS = 256  # validation sequences per evaluation, identical across sizes
SCALING_CORPUS = {"prose": 0.25, "facts": 0.15, "episodes": 0.0, "repeats": 0.0}

# ---- emergence study
# 6 sizes: the transition test needs >= 5 distinct x, and with 5 (16-64) its F test on the
# sigmoid's one spare degree of freedom could not tell the jump from a line (p = 0.31-0.55).
# Width 80 (4.6 CPU-min at 2000 steps) did not fit the budget at 3000 steps.
EMERGENCE_WIDTHS = (16, 24, 32, 40, 48, 64)
EMERGENCE_CONTROL = (64, 1)  # (width, layers): one layer cannot compose an induction head
# 4 heads at every width (head_dim = width / 4). With the scaling study's head_dim 16 (1-4 heads)
# the lookup formed at widths 24, 32, 48, 64 and not at 40 (3 lrs, 2 seeds): not monotone in
# width. With 4 heads, seed 0: not at 16, 24, 32 (nor 32 with seed 1), at 40, 48, 64 (40 with
# seed 1: not). experiments/demo_design.md has the runs.
EMERGENCE_HEADS = 4
# 2500 steps (5.1M tokens): in the 3000-step demo the lookup's phase changes fell at steps 1510
# (width 64), 1920 (40) and 2180 (48), and a constant-lr run is the prefix of a longer one. At
# 2000 steps whether a run had formed it depended on when its phase change fell.
EMERGENCE_STEPS = 2500
EMERGENCE_BATCH = 16
EMERGENCE_LR = 3e-3
EMERGENCE_CHECKPOINTS = 6  # kept every 416 steps, + the last: 7 probed checkpoints
EMERGENCE_CORPUS = {"prose": 0.0, "facts": 0.0, "episodes": 1.0, "repeats": 0.0}
# The probe suite of an emergence run: the associative-recall lookup at k = 0 and 4 shots with
# n = 352 held-out episodes per cell (at k = 4 about 250 of them are in the hard subset, where
# the standard error is <= 0.032, so a gap of 0.1 is >= 3 SE),
# induction heads (prefix matching, copying) and the ICL score.
EMERGENCE_EVALS = {
    "assoc": {"type": "episode", "kind": "assoc", "ks": [0, 4], "n": 352},
    "induction": {"type": "induction", "n_seqs": 16},
    "icl": {"type": "icl", "n": 64},
}
# ---- induction study: experiments/configs/induction.py's setting (attention-only, learned
# positions, one random-letter span repeated 8 times per document), 2 layers against 1
INDUCTION_LAYERS = (2, 1)
INDUCTION_STEPS = 1600
INDUCTION_EVERY = 100  # a kept checkpoint every 100 steps: the phase change falls between two
INDUCTION_TASKS = ("induction", "icl")  # the probes of an induction run
STUDIES = ("scaling", "emergence", "induction")


def _parse(arg):
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"demo.py: variant {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    allowed = {"study", "point"}
    if set(out) - allowed:
        raise ValueError(f"demo.py: unknown variant(s) {sorted(set(out) - allowed)}; "
                         f"allowed: {sorted(allowed)}")
    study = out.get("study", "both")
    if study not in (*STUDIES, "both"):
        raise ValueError(f"demo.py: study={study!r}; allowed: {', '.join(STUDIES)}, both")
    return out


def _base():
    """Settings every point shares (scaling_demo.py's: byte tokens, 128-token rows, SwiGLU,
    untied embeddings, RoPE, AdamW), plus the emergence probe suite; each point sets the rest."""
    config = _scaling_demo._base()
    config.evals = ConfigDict(EMERGENCE_EVALS)
    return config


def _corpus(weights):
    return {f"data.synthetic.{k}": v for k, v in weights.items()}


def _shape(d_model, n_layers):
    return {"model.d_model": d_model, "model.n_layers": n_layers,
            "model.n_heads": max(1, d_model // HEAD_DIM)}


def scaling_point(width):
    """Every setting of one scaling run, as dotted overrides (plus name and meta.*)."""
    steps = SCALING_STEPS
    return {
        "name": f"s_d{width}",
        **_shape(width, SCALING_LAYERS),
        **_corpus(SCALING_CORPUS),
        "data.batch_size": SCALING_BATCH,
        "steps": steps,
        "optimizer.lr": round(LR_BASE * 64 / width, 6),
        "optimizer.schedule": "constant",
        "optimizer.warmup_steps": steps // 10,
        "eval_every": steps // SCALING_EVALS,
        "eval_batches": max(1, EVAL_ROWS // SCALING_BATCH),
        "log_every": max(1, steps // 25),
        "checkpoint_every": steps,
        "meta.study": "scaling",
    }


def emergence_point(width, n_layers):
    """Every setting of one emergence point (module doc)."""
    every = EMERGENCE_STEPS // EMERGENCE_CHECKPOINTS
    return {
        "name": f"e_d{width}_l{n_layers}",
        **_shape(width, n_layers),
        "model.n_heads": EMERGENCE_HEADS,
        **_corpus(EMERGENCE_CORPUS),
        # Episodes are associative recall only.
        **{f"data.synthetic.episode_{k}": 0.0
           for k in ("translation", "recall", "modular", "copy", "reverse", "sequence")},
        "data.synthetic.episode_assoc": 1.0,
        "data.synthetic.num_train_docs": 60_000,
        "model.positions": "learned",
        "model.init_std": round(width ** -0.5, 6),
        "data.batch_size": EMERGENCE_BATCH,
        "steps": EMERGENCE_STEPS,
        "optimizer.lr": EMERGENCE_LR,
        "optimizer.schedule": "constant",
        "optimizer.warmup_steps": 50,
        "optimizer.weight_decay": 0.0,
        "eval_every": EMERGENCE_STEPS // 4,
        "eval_batches": 4,
        "log_every": 100,
        "checkpoint_every": every,
        "keep_every": every,
        "meta.study": "emergence",
    }


def induction_point(n_layers):
    """One run of the induction study (see experiments/configs/induction.py for the choices)."""
    seq = 64
    return {
        "name": f"i_d64_l{n_layers}",
        **_shape(64, n_layers),
        "model.n_heads": 4,
        "model.mlp": "none",
        "model.positions": "learned",
        "model.scan_layers": False,
        "model.max_seq_len": seq,
        "model.init_std": 0.125,
        "data.seq_len": seq,
        "data.batch_size": 16,
        **_corpus({"prose": 0.0, "facts": 0.0, "episodes": 0.0, "repeats": 1.0}),
        "data.synthetic.repeat_char_prob": 1.0,
        "data.synthetic.repeat_spans_min": 1, "data.synthetic.repeat_spans_max": 1,
        "data.synthetic.repeat_count_min": 8, "data.synthetic.repeat_count_max": 8,
        "data.synthetic.repeat_gap_max": 0,
        "data.synthetic.num_train_docs": 4000,
        "data.synthetic.num_validation_docs": 200,
        "steps": INDUCTION_STEPS,
        "optimizer.lr": 3e-3,
        "optimizer.schedule": "constant",
        "optimizer.warmup_steps": 50,
        "optimizer.weight_decay": 0.0,
        "eval_every": INDUCTION_STEPS // 4,
        "eval_batches": 2,
        "log_every": 100,
        "checkpoint_every": INDUCTION_EVERY,
        "keep_every": INDUCTION_EVERY,
        "meta.study": "induction",
    }


def points(study="both"):
    out = []
    if study in ("scaling", "both"):
        out += [scaling_point(w) for w in SCALING_WIDTHS]
    if study in ("emergence", "both"):
        out += [emergence_point(w, 2) for w in EMERGENCE_WIDTHS]
        out.append(emergence_point(*EMERGENCE_CONTROL))
    if study in ("induction", "both"):
        out += [induction_point(n) for n in INDUCTION_LAYERS]
    return out


def get_config(arg=None):
    args = _parse(arg)
    from llmjax.sweep.spec import apply_overrides, is_config_key

    name = args.get("point", "s_d32")
    by_name = {p["name"]: p for p in points()}
    if name not in by_name:
        raise ValueError(f"demo.py: point={name!r}; allowed: {', '.join(by_name)}")
    return apply_overrides(_base(), {k: v for k, v in by_name[name].items() if is_config_key(k)})


def get_sweep(arg=None):
    return points(_parse(arg).get("study", "both"))
