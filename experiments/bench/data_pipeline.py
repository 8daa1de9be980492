"""Packed tokens per second of the input pipeline, from a prepared dataset.

One result line per case (tokenizer x worker count), e.g.

    data_pipeline dataset=synthetic tokenizer=byte workers=0 seq_len=256 batch_size=32 ...
        tokens_per_s=4.1e+06 startup_s=0.21 index_s=0.00

`tokens_per_s` counts input tokens (batch rows x seq_len) delivered by `next()` in steady state
(after `--warmup` batches, which absorb worker start-up); `startup_s` is the time to the first
batch; `index_s` the one-time token-length index build (0 when cached). Preparing the dataset
and training the BPE happen before the timed cases and are reported on their own lines.

    .venv/bin/python experiments/bench/data_pipeline.py [--dataset=synthetic] [--data_dir=DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from llmjax.data import builders, pipeline


def _case(cfg: pipeline.DataConfig, tokenizer, *, num_batches: int, warmup: int) -> dict:
    start = time.perf_counter()
    it = pipeline.make_train_iterator(cfg, tokenizer)
    made = time.perf_counter()
    next(it)
    first = time.perf_counter()
    for _ in range(warmup - 1):
        next(it)
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(num_batches):
        tokens += next(it)["inputs"].size
    elapsed = time.perf_counter() - t0
    it.close()
    return {"tokens_per_s": tokens / elapsed, "startup_s": first - start,
            "index_s": made - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--source", default=None)
    parser.add_argument("--data_dir", default=None,
                        help="default: $TFDS_DATA_DIR, else a fresh temporary directory")
    parser.add_argument("--bpe", default="bpe:4096", help="the bpe tokenizer spec to measure")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_batches", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--workers", default="0,2")
    args = parser.parse_args(argv)

    tmp = None
    data_dir = args.data_dir or os.environ.get("TFDS_DATA_DIR")
    if not data_dir:
        tmp = tempfile.TemporaryDirectory(prefix="llmjax-bench-")
        data_dir = tmp.name
    start = time.perf_counter()
    prepared = builders.prepare(args.dataset, data_dir, source=args.source)
    print(f"data_pipeline prepare dataset={prepared.dataset} documents={prepared.num_documents} "
          f"already_prepared={prepared.already_prepared} seconds={time.perf_counter() - start:.2f}")
    for spec in ("byte", args.bpe):
        cfg = pipeline.DataConfig(dataset=args.dataset, source=args.source, tokenizer=spec,
                                  seq_len=args.seq_len, batch_size=args.batch_size,
                                  data_dir=data_dir)
        start = time.perf_counter()
        tokenizer = pipeline.get_data_tokenizer(cfg)
        print(f"data_pipeline tokenizer={spec} load_or_train_s={time.perf_counter() - start:.2f}")
        for workers in (int(w) for w in args.workers.split(",")):
            cfg = pipeline.DataConfig(**{**cfg.__dict__, "worker_count": workers})
            r = _case(cfg, tokenizer, num_batches=args.num_batches, warmup=args.warmup)
            print(f"data_pipeline dataset={args.dataset} tokenizer={spec} workers={workers} "
                  f"seq_len={args.seq_len} batch_size={args.batch_size} "
                  f"batches={args.num_batches} tokens_per_s={r['tokens_per_s']:.3g} "
                  f"startup_s={r['startup_s']:.2f} index_s={r['index_s']:.2f}", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
