"""induction: a small attention-only transformer on repeated random spans (Olsson et al. 2022).

The classic induction-head setting: no MLP, byte tokens, documents made only of the synthetic
corpus's `repeats` family, constant learning rate after warmup (a short cosine schedule cuts the
rate before the heads form). With 2 layers, a previous-token head in layer 0 and an induction head
in layer 1 form after a plateau, and the in-context-learning score drops; a 1-layer model can form
neither. Measured on 2 CPU cores (tests/test_induction.py, 1400 steps, ~15 s per model): the
2-layer model's prefix-matching score jumps from ~0.07 to ~0.7 between steps 1000 and 1200
(1.0-1.2M tokens, seeds 0 and 1) while its ICL score falls from ~+0.1 to ~-2.1 nats; the 1-layer
model stays at prefix matching ~0.05 and ICL ~+0.3.

Choices that matter (each measured at seq_len 64, lr 3e-3 unless stated): learned absolute
positions, not RoPE: with RoPE a layer-0 head has no content-independent direction to build a
previous-token head from, and no induction head formed within 2000 steps on this data. One
random-letter span per document repeated 8 times back to back: after its first occurrence every
token is predictable by induction, and the period changes with the span's length, so a
fixed-offset positional head cannot stand in for prefix matching; with the default repeats mix
(filler words, 2-4 occurrences; RoPE) none formed within 6000 steps. lr 1e-2 never left the
plateau within 1400 steps.

The default run (2000 steps, a checkpoint kept every 100) spans the phase change, so
`llmjax probe --all_steps` traces it.

    llmjax train --config=experiments/configs/induction.py --workdir=runs/induction
    llmjax train --config=experiments/configs/induction.py:layers=1 --workdir=runs/induction_1l
    llmjax probe --workdir=runs/induction --all_steps

Variants after the colon, comma-separated: layers=N (default 2), steps=N, seed=N, d_model=N,
seq_len=N, lr=X.
"""

from ml_collections import ConfigDict

from llmjax.config import base_config

VARIANTS = {"layers": int, "steps": int, "seed": int, "d_model": int, "seq_len": int,
            "lr": float}


def _parse(arg: str | None) -> dict:
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in VARIANTS:
            raise ValueError(f"induction.py: bad variant {item!r}; allowed: "
                             f"{', '.join(f'{k}=N' for k in VARIANTS)}")
        out[key] = VARIANTS[key](value)
    return out


def get_config(arg: str | None = None) -> ConfigDict:
    args = _parse(arg)
    seq_len = args.get("seq_len", 64)
    config = base_config()
    config.seed = args.get("seed", 0)
    config.steps = args.get("steps", 2000)
    config.log_every = 50
    config.eval_every = 200
    config.eval_batches = 2
    config.checkpoint_every = 100
    config.keep_checkpoints = 2
    config.keep_every = 100  # keep every checkpoint: probes trace the phase change

    m = config.model
    m.vocab_size = 0  # the byte tokenizer's 259
    m.d_model = args.get("d_model", 64)
    m.n_layers = args.get("layers", 2)
    m.n_heads = 4
    m.max_seq_len = seq_len
    m.mlp = "none"  # attention-only
    m.positions = "learned"  # layer 0 forms a previous-token head from positions alone
    m.scan_layers = False
    m.init_std = m.d_model ** -0.5  # fan-in init

    d = config.data
    d.dataset = "synthetic"
    d.tokenizer = "byte"
    d.seq_len = seq_len
    d.batch_size = 16
    d.seed = config.seed
    d.worker_count = 0
    s = d.synthetic
    s.prose, s.facts, s.episodes, s.repeats = 0.0, 0.0, 0.0, 1.0
    s.repeat_char_prob = 1.0  # random-letter spans: only copying predicts them
    # One span per document, repeated 8 times back to back: after its first occurrence every
    # token is predictable by induction, and the period varies with the span's length.
    s.repeat_spans_min, s.repeat_spans_max = 1, 1
    s.repeat_count_min, s.repeat_count_max = 8, 8
    s.repeat_gap_max = 0
    s.num_train_docs = 4000
    s.num_validation_docs = 200

    o = config.optimizer
    o.lr = args.get("lr", 3e-3)
    o.warmup_steps = 50
    o.schedule = "constant"
    o.weight_decay = 0.0
    o.grad_clip = 1.0

    config.mesh.data = -1

    # Probes (`llmjax probe`): the ICL score on validation documents, prefix-matching and copying
    # scores of every head, and perplexity. Positions/lengths 0 = scaled to data.seq_len.
    config.evals = ConfigDict({
        "icl": {"type": "icl", "n": 64},
        "induction": {"type": "induction", "n_seqs": 16},
        "perplexity": {"type": "perplexity", "n": 32},
    })
    return config
