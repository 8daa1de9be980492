"""tiny: a 2-layer, 64-wide byte-level model on a small synthetic corpus.

Trains in ~25 s of CPU time on 2 cores.

What the tests train. It must really learn: its loss ends far below the unigram entropy of its
data (~4.3 bits / 3 nats per byte for this corpus), which needs context, not just frequencies.

    llmjax train --config=experiments/configs/tiny.py --workdir=runs/tiny
    llmjax train --config=experiments/configs/tiny.py:steps=50 --workdir=runs/tiny50
"""

from llmjax.config import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.seed = 0
    config.steps = 300
    config.log_every = 10
    config.eval_every = 100
    config.eval_batches = 2
    config.checkpoint_every = 100
    config.keep_checkpoints = 2

    m = config.model
    m.vocab_size = 0  # 0 = the tokenizer's (byte: 256 bytes + BOS/EOS/PAD = 259)
    m.d_model = 64
    m.n_layers = 2
    m.n_heads = 4
    m.max_seq_len = 64
    m.mlp = "swiglu"
    m.positions = "rope"
    m.scan_layers = True

    d = config.data
    d.dataset = "synthetic"
    d.tokenizer = "byte"
    d.seq_len = 64
    d.batch_size = 16
    d.seed = 0
    d.worker_count = 0
    # Small corpus: built in about a second; 2k docs are ~1M bytes, 3x what 300 steps read.
    d.synthetic.num_train_docs = 2000
    d.synthetic.num_validation_docs = 100

    o = config.optimizer
    o.lr = 1e-2
    o.warmup_steps = 10
    o.schedule = "cosine"
    o.min_lr_ratio = 0.1
    o.weight_decay = 0.1
    o.grad_clip = 1.0

    config.mesh.data = -1

    # Variants: "steps=N" (a shorter/longer run).
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key.strip() != "steps":
            raise ValueError(f"tiny.py: unknown variant {item!r}; allowed: steps=N")
        config.steps = int(value)
    return config
