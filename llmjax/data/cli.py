"""`llmjax data prepare | sample | stats`: build datasets, print packed batches, count tokens.

    llmjax data prepare --dataset=NAME [--data_dir=DIR] [--source=PATH] [--synthetic.KEY=V ...]
    llmjax data sample --dataset=NAME --tokenizer=byte|bpe:V --seq_len=L --batch_size=B
        --num_batches=K --seed=S [--skip=J] [--process_index=I --process_count=P] [--data_dir=DIR]
    llmjax data stats --dataset=NAME [--tokenizer=byte|bpe:V] [--data_dir=DIR]
        (for synthetic, also the entropy the generator computes for its validation split)

NAME is a dataset spec (see `llmjax.data.builders`): synthetic, pystdlib, text_files (with
--source), tfds:<catalog name>. `--synthetic.KEY=VALUE` overrides one SyntheticConfig field
(e.g. --synthetic.num_train_docs=300); any subcommand accepts them, and --source.

`sample` prepares the dataset when it is not built yet (a note goes to stderr) and prints one JSON
array per batch row on stdout: the packed row of seq_len + 1 token ids, rows of batch J first.
With --skip=J it starts from batch J by restoring the iterator state {"next_batch": J}, which
reads nothing before batch J.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmjax.errors import ArgParser, UserError

_SYNTHETIC_PREFIX = "--synthetic."


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _split_synthetic(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Pulls --synthetic.KEY=VALUE flags out of argv (values parsed as JSON when they parse)."""
    from llmjax.data.builders import parse_overrides

    rest, overrides = [], {}
    for arg in argv:
        if arg.startswith(_SYNTHETIC_PREFIX):
            key, eq, value = arg[len(_SYNTHETIC_PREFIX):].partition("=")
            if not eq:
                raise UserError(f"{arg}: expected --synthetic.KEY=VALUE")
            overrides.update(parse_overrides(f"{key}={value}"))
        else:
            rest.append(arg)
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = ArgParser(prog="llmjax data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", required=True, help="dataset spec (see llmjax.data.builders)")
        p.add_argument("--data_dir", default=None, help="default: $TFDS_DATA_DIR or "
                       "~/tensorflow_datasets")
        p.add_argument("--source", default=None, help="file, directory or glob for text_files")

    common(sub.add_parser("prepare", help="build a dataset (a no-op when already built)"))
    sample = sub.add_parser("sample", help="print packed batch rows as JSON lines")
    common(sample)
    sample.add_argument("--tokenizer", required=True, help="byte | bpe:<vocab_size>")
    sample.add_argument("--seq_len", type=int, required=True)
    sample.add_argument("--batch_size", type=int, required=True, help="global batch, in rows")
    sample.add_argument("--num_batches", type=int, required=True)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--skip", type=int, default=0, help="first batch to print")
    sample.add_argument("--process_index", type=int, default=0)
    sample.add_argument("--process_count", type=int, default=1)
    sample.add_argument("--shuffle", type=_bool, default=True)
    sample.add_argument("--num_epochs", type=int, default=None, help="default: repeat forever")
    sample.add_argument("--worker_count", type=int, default=0)
    stats = sub.add_parser("stats", help="documents, bytes, tokens and bytes/token per split")
    common(stats)
    stats.add_argument("--tokenizer", default="byte", help="byte | bpe:<vocab_size>")
    return parser


def _prepare(args: argparse.Namespace, synthetic: dict[str, Any]) -> int:
    from llmjax.data import builders

    cfg = _data_config(args, synthetic)  # bad flags fail here, naming the flag
    result = builders.prepare(cfg.dataset_spec, cfg.data_dir)
    docs = ", ".join(f"{k}={v}" for k, v in result.num_documents.items())
    if result.already_prepared:
        print(f"already prepared: {result.dataset} at {result.path} ({docs}); nothing to do")
    else:
        print(f"prepared {result.dataset} at {result.path} ({docs}) in {result.seconds:.1f}s")
    return 0


def _data_config(args: argparse.Namespace, synthetic: dict[str, Any], *, process_count: int = 1,
                 **fields: Any):
    """The flags as a validated DataConfig; a UserError names the flag (``--<field>``)."""
    from llmjax.data.pipeline import DataConfig

    values = {"dataset": args.dataset, "data_dir": args.data_dir, "source": args.source,
              "synthetic": synthetic, **fields}
    return DataConfig.from_config(values, process_count=process_count, prefix="--")


def _ensure_prepared(cfg) -> None:
    from llmjax.data import builders

    result = builders.prepare(cfg.dataset_spec, cfg.data_dir)
    if not result.already_prepared:
        print(f"prepared {result.dataset} at {result.path} in {result.seconds:.1f}s",
              file=sys.stderr)


def _sample(args: argparse.Namespace, synthetic: dict[str, Any]) -> int:
    from llmjax.data import pipeline

    for name in ("num_batches", "skip"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(args, name)}")
    cfg = _data_config(
        args, synthetic, tokenizer=args.tokenizer, seq_len=args.seq_len,
        batch_size=args.batch_size, seed=args.seed, shuffle=args.shuffle,
        num_epochs=args.num_epochs, worker_count=args.worker_count,
        process_count=args.process_count)
    _ensure_prepared(cfg)
    tokenizer = pipeline.get_data_tokenizer(cfg)
    it = pipeline.make_train_iterator(cfg, tokenizer, process_index=args.process_index,
                                      process_count=args.process_count)
    if args.skip:
        state = it.get_state()
        state["next_batch"] = args.skip
        it.set_state(state)
    try:
        for _ in range(args.num_batches):
            try:
                batch = next(it)
            except StopIteration:
                break
            rows = pipeline.rows_of(batch)
            sys.stdout.write("".join(json.dumps(r, separators=(",", ":")) + "\n"
                                     for r in rows.tolist()))
    finally:
        it.close()
    sys.stdout.flush()
    return 0


def _stats(args: argparse.Namespace, synthetic: dict[str, Any]) -> int:
    from llmjax.data import builders, pipeline

    cfg = _data_config(args, synthetic, tokenizer=args.tokenizer)
    _ensure_prepared(cfg)
    tokenizer = pipeline.get_data_tokenizer(cfg)
    spec = cfg.dataset_spec
    meta = builders.dataset_metadata(spec, cfg.data_dir)
    print(f"dataset={spec} version={builders.dataset_version(spec, cfg.data_dir)} "
          f"path={meta['path']}")
    for split in builders.SPLITS:
        if not meta["num_documents"].get(split):
            print(f"split={split} documents=0 bytes=0 tokens=0 bytes_per_token=nan "
                  f"tokenizer={tokenizer.name}")
            continue
        index = pipeline.token_index(spec, split, tokenizer, cfg.data_dir)
        ratio = index.num_bytes / index.num_tokens if index.num_tokens else float("nan")
        print(f"split={split} documents={index.num_docs} bytes={index.num_bytes} "
              f"tokens={index.num_tokens} bytes_per_token={ratio:.4f} tokenizer={tokenizer.name}")
    entropy = meta.get("entropy")
    if entropy:  # synthetic: the generator's own log-loss (llmjax.data.entropy), byte tokens
        rows = [*entropy.get("families", {}).items()]
        if "corpus" in entropy:
            rows.append(("corpus", entropy["corpus"]))
        for family, e in rows:
            print(f"entropy split={entropy['split']} family={family} documents={e['documents']} "
                  f"nats_per_token={e['nats_per_token']:.4f} se={e['nats_per_token_se']:.4f} "
                  f"bits_per_byte={e['bits_per_byte']:.4f}")
        for family in entropy.get("not_computed", []):
            print(f"entropy split={entropy['split']} family={family} not computed")
    return 0


def main(argv: list[str]) -> int:
    argv, synthetic = _split_synthetic(list(argv))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if synthetic and not args.dataset.startswith("synthetic"):
        raise UserError(f"--synthetic.* flags given but --dataset={args.dataset}")
    return {"prepare": _prepare, "sample": _sample, "stats": _stats}[args.command](args, synthetic)
