"""`llmjax generate --workdir=RUN --prompt="The quick brown fox" [--max_new_tokens=50] ...`.

Continues each prompt with the run's model (KV-cache decoding, llmjax.generate.decode) and prints
prompt + continuation, one block per sample (`--json`: one JSON object per line with the prompt,
the continuation, its tokens and finish_reason). Prompts: --prompt (repeatable) and/or
--prompt_file (one prompt per line, blank lines skipped; `-` reads stdin); all of them are decoded
together in batches. --temperature 0 (the default) is greedy; --top_k 0 and --top_p 1 are off;
--stop (repeatable) ends a continuation before the first occurrence of that text. A prompt that
does not fit the window with --max_new_tokens is an error unless --truncate (cut from the left).
A line on stderr gives the count, time and tokens/s.
"""

from __future__ import annotations

import json
import sys
import time

from llmjax.errors import ArgParser, UserError
from llmjax.generate.api import load
from llmjax.generate.decode import Request, Sampling


def _parser() -> ArgParser:
    p = ArgParser(prog="llmjax generate", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompt_file", default=None, help="one prompt per line; - for stdin")
    p.add_argument("--max_new_tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=0, help="0 = off")
    p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_return_sequences", type=int, default=1)
    p.add_argument("--stop", action="append", default=[], help="stop text (repeatable)")
    p.add_argument("--truncate", action="store_true",
                   help="cut prompts that do not fit from the left instead of failing")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    return p


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompt_file is not None:
        try:
            text = (sys.stdin.read() if args.prompt_file == "-"
                    else open(args.prompt_file, encoding="utf-8").read())
        except OSError as e:
            raise UserError(f"--prompt_file={args.prompt_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"--prompt_file={args.prompt_file}: not UTF-8 text") from None
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError("give --prompt=TEXT or --prompt_file=FILE")
    return prompts


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.num_return_sequences < 1:
        raise UserError(f"--num_return_sequences: must be >= 1, got {args.num_return_sequences}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens: must be >= 1, got {args.max_new_tokens}")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed).check()
    prompts = _prompts(args)
    model, tokenizer = load(args.workdir, args.step)
    gen = model.generator(tokenizer)
    requests = []
    for text in prompts:
        ids = gen.encode(text)
        if args.truncate:
            ids = gen.fit(ids, args.max_new_tokens)
        for i in range(args.num_return_sequences):
            requests.append(Request(ids, args.max_new_tokens, sampling, tuple(args.stop), i))
    t0 = time.perf_counter()
    out = gen.generate(requests)
    dt = time.perf_counter() - t0
    for r, c in enumerate(out):
        prompt = prompts[r // args.num_return_sequences]
        if args.json:
            print(json.dumps({"prompt": prompt, "index": r % args.num_return_sequences,
                              "completion": c.text, "tokens": c.tokens,
                              "finish_reason": c.finish_reason}), flush=True)
        else:
            print(("\n" if r else "") + prompt + c.text, flush=True)
    n = sum(len(c.tokens) for c in out)
    print(f"generated {n} tokens for {len(out)} sequence(s) in {dt:.2f} s "
          f"({n / max(dt, 1e-9):,.0f} tokens/s, compilation included)", file=sys.stderr)
    return 0
