"""`llmjax convert`: Hugging Face GPT-2 / Llama directories <-> llmjax run directories.

    llmjax convert --from_hf=DIR --workdir=RUN [--dtype=auto] [--seq_len=N]   # import
    llmjax convert --to_hf=DIR --workdir=RUN [--step=S]                       # export

Import: a local HF model directory (config.json, model.safetensors or its shards, tokenizer.json
when present; never a pickle) becomes a run directory that `llmjax generate`, `probe`, `serve`
and `llmjax.load` use like a trained one. Export: a run's checkpoint becomes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load.
What converts, what is refused and why: llmjax/hf.py.
"""

from __future__ import annotations

from llmjax.errors import ArgParser, UserError


def _parser() -> ArgParser:
    p = ArgParser(prog="llmjax convert", description=__doc__.splitlines()[0])
    p.add_argument("--from_hf", default=None, help="import this HF model directory")
    p.add_argument("--to_hf", default=None, help="export to this (new) HF model directory")
    p.add_argument("--workdir", required=True, help="the llmjax run directory (new for import)")
    p.add_argument("--step", type=int, default=None,
                   help="export: checkpoint step (default: latest)")
    p.add_argument("--dtype", default="auto",
                   help="import: parameter/compute dtype: auto (the checkpoint's), float32, "
                        "bfloat16 or float16")
    p.add_argument("--seq_len", type=int, default=None,
                   help="import: the run's window, data.seq_len (default: the model's, at most "
                        "2048)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if (args.from_hf is None) == (args.to_hf is None):
        raise UserError("llmjax convert: give exactly one of --from_hf=DIR (import) or "
                        "--to_hf=DIR (export)")
    from llmjax import hf

    if args.from_hf is not None:
        if args.step is not None:
            raise UserError("--step: only for export (--to_hf); an import writes step 0")
        hf.import_hf(args.from_hf, args.workdir, dtype=args.dtype, seq_len=args.seq_len,
                     argv=["llmjax", "convert", *argv])
    else:
        if args.dtype != "auto" or args.seq_len is not None:
            raise UserError("--dtype/--seq_len: only for import (--from_hf); export keeps the "
                            "run's dtype and window")
        hf.export_hf(args.workdir, args.to_hf, step=args.step)
    return 0
