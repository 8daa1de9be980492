"""`llmjax serve --workdir=RUN [--step=S] [--host=127.0.0.1] [--port=8000]`: OpenAI-compatible HTTP.

    llmjax serve --workdir=runs/tiny --port=8000
    curl -s 127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "The quick brown fox", "max_tokens": 20}'
    lm_eval --model local-completions \
        --model_args base_url=http://127.0.0.1:8000/v1/completions,model=tiny --tasks ...

Endpoints (FastAPI on uvicorn):
  GET  /v1/models             the one model served; its id is the run directory's name
  POST /v1/completions        prompt (string, list of strings, token ids, or lists of them),
                              max_tokens (16), temperature (1.0), top_p (1), top_k (0 = off; an
                              extension), n (1), stop (string or list), seed (0), logprobs (0-5:
                              the top alternatives per token), echo (the prompt and, with
                              logprobs, its tokens' log-probabilities: what lm-eval's
                              loglikelihood requests read)
  POST /v1/chat/completions   messages; no chat template: the contents joined by newlines, and
                              the continuation returned as the assistant message
  GET  /tokenizer_info, POST /tokenize, POST /detokenize   lm-eval's `remote` tokenizer backend
  GET  /health

Conventions. Every prompt is preceded by BOS, as every training document was (not echoed, not
counted in usage); so every prompt token, the first included, has a log-probability. Text
prompts are tokenized with the run's tokenizer, where the special tokens' names (<|eos|> ...) are
special, as in the Hugging Face tokenizer of the run (RUN/tokenizer/tokenizer.json). Log-
probabilities are natural logs of the model's distribution before temperature and truncation.
`text_offset` counts characters of the returned `text`.

Serving: requests wait in a bounded queue (--max_queue; full: HTTP 503); one worker thread takes
what is queued, up to --max_batch sequences, and decodes it as one batch (llmjax.generate.decode),
so concurrent requests share the model's passes. Bad requests get HTTP 400 with OpenAI's error
body {"error": {"message", "type", "param", "code"}} naming the field; the server never dies on
one. Binds 127.0.0.1 unless --host says otherwise; SIGTERM (or Ctrl-C) stops it cleanly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse

from llmjax.errors import ArgParser, UserError
from llmjax.generate.decode import TOP_LOGPROBS, Completion, Request, Sampling

MAX_STOP_STRINGS = 16  # more than OpenAI's 4 (lm-eval tasks may give several); 4 end the loop


class BadRequest(Exception):
    """A request the server refuses: HTTP `status`, OpenAI's error body naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status == 400 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param,
                          "code": None}}


@dataclasses.dataclass(frozen=True)
class Limits:
    max_tokens: int  # per completion (and prompt + max_tokens <= the model's window)
    max_n: int = 16
    max_batch: int = 32  # sequences decoded together
    max_queue: int = 64  # requests waiting


# ----------------------------------------------------------------------------- the engine


class Engine:
    """The model behind the server: a worker thread decoding batches from a bounded queue."""

    def __init__(self, generator: Any, name: str, limits: Limits, *, step: int | None = None):
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.name = name
        self.step = step
        self.limits = limits
        self.queue: queue.Queue = queue.Queue(maxsize=limits.max_queue)
        self._stop = threading.Event()
        self.batches = self.sequences = 0  # decoded so far (GET /health)
        self._specials = {self.tokenizer.decode([i], skip_special_tokens=False): i
                          for i in (self.tokenizer.pad_id, self.tokenizer.bos_id,
                                    self.tokenizer.eos_id)}
        self._special_re = re.compile("|".join(re.escape(s) for s in self._specials))
        self._thread = threading.Thread(target=self._work, name="llmjax-decode", daemon=True)
        self._thread.start()

    # -- tokens
    def encode(self, text: str) -> list[int]:
        """The run's tokenizer, with the special tokens' names as the special ids."""
        out: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            out += self.tokenizer.encode(text[pos:m.start()]).tolist()
            out.append(self._specials[m.group()])
            pos = m.end()
        return out + self.tokenizer.encode(text[pos:]).tolist()

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([int(token)], skip_special_tokens=False)

    # -- work
    def submit(self, requests: list[Request], logprobs: bool
               ) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self.queue.put_nowait((requests, logprobs, fut))
        except queue.Full:
            raise BadRequest(f"the server is busy ({self.limits.max_queue} requests queued); "
                             f"retry later", None, 503) from None
        return fut

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            jobs, rows = [first], len(first[0])
            while rows < self.limits.max_batch:  # whatever else is waiting joins this batch
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                rows += len(job[0])
            self._run(jobs)

    def _run(self, jobs: list[tuple[list[Request], bool, concurrent.futures.Future]]) -> None:
        requests = [r for reqs, _, _ in jobs for r in reqs]
        self.batches += 1
        self.sequences += len(requests)
        try:
            out = self.generator.generate(requests, logprobs=any(lp for _, lp, _ in jobs))
        except Exception as e:  # noqa: BLE001 - reported to every waiting request, not fatal
            for _, _, fut in jobs:
                fut.set_exception(e)
            return
        i = 0
        for reqs, _, fut in jobs:
            fut.set_result(out[i:i + len(reqs)])
            i += len(reqs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- request parsing


def _int(body: dict, name: str, default: int, lo: int, hi: int | None = None) -> int:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise BadRequest(f"{name}: must be an integer {rng}, got {v!r}", name)
    return v


def _float(body: dict, name: str, default: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise BadRequest(f"{name}: must be a number, got {v!r}", name)
    return float(v)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop: must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise BadRequest(f"stop: at most {MAX_STOP_STRINGS} sequences, got {len(stops)}", "stop")
    return tuple(stops)


def _prompts(engine: Engine, prompt: Any) -> list[list[int]]:
    """OpenAI's prompt forms -> token id lists (without BOS)."""
    vocab = engine.tokenizer.vocab_size

    def ids(p: list) -> list[int]:
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in p):
            raise BadRequest(f"prompt: token ids must be integers in [0, {vocab})", "prompt")
        return list(p)

    if isinstance(prompt, str):
        return [engine.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [engine.encode(p) for p in prompt]
        if all(isinstance(p, int) for p in prompt):
            return [ids(prompt)]
        if all(isinstance(p, list) for p in prompt):
            return [ids(p) for p in prompt]
    raise BadRequest("prompt: must be a string, a list of strings, a list of token ids or a "
                     "list of such lists (non-empty)", "prompt")


@dataclasses.dataclass
class Parsed:
    prompts: list[list[int]]  # without BOS
    max_tokens: int
    n: int
    sampling: Sampling
    stop: tuple[str, ...]
    logprobs: int | None
    echo: bool


def parse_completion(engine: Engine, body: Any, *, default_max_tokens: int = 16) -> Parsed:
    """Validate a /v1/completions body (BadRequest naming the field)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != engine.name:
        raise BadRequest(f"model: {model!r} is not served here; GET /v1/models lists "
                         f"{engine.name!r}", "model", 404)
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported", "stream")
    if "prompt" not in body:
        raise BadRequest("prompt: required", "prompt")
    prompts = _prompts(engine, body["prompt"])
    window = engine.generator.max_len
    max_tokens = _int(body, "max_tokens", default_max_tokens, 0, engine.limits.max_tokens)
    n = _int(body, "n", 1, 1, engine.limits.max_n)
    if len(prompts) * n > engine.limits.max_batch * 4:
        raise BadRequest(f"prompt: {len(prompts)} prompts x n={n} exceed "
                         f"{engine.limits.max_batch * 4} sequences per request", "prompt")
    for p in prompts:
        if 1 + len(p) + max_tokens > window:
            raise BadRequest(f"prompt: {len(p)} prompt tokens + max_tokens={max_tokens} exceed "
                             f"the model's window of {window - 1} tokens", "prompt")
    temperature = _float(body, "temperature", 1.0)
    top_p = _float(body, "top_p", 1.0)
    if temperature < 0:
        raise BadRequest(f"temperature: must be >= 0, got {temperature}", "temperature")
    if not 0 < top_p <= 1:
        raise BadRequest(f"top_p: must be in (0, 1], got {top_p}", "top_p")
    top_k = _int(body, "top_k", 0, 0)
    seed = _int(body, "seed", 0, 0, 2 ** 32 - 1)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _int(body, "logprobs", 0, 0, TOP_LOGPROBS)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadRequest(f"echo: must be true or false, got {echo!r}", "echo")
    return Parsed(prompts, max_tokens, n, Sampling(temperature, top_k, top_p, seed),
                  _stops(body), logprobs, echo)


# ----------------------------------------------------------------------------- responses


def _offsets(engine: Engine, tokens: Sequence[int]) -> list[int]:
    return [len(engine.tokenizer.decode(list(tokens[:i]))) for i in range(len(tokens))]


def _top_dict(engine: Engine, pairs: list[tuple[int, float]] | None, k: int) -> dict | None:
    if pairs is None:
        return None
    out: dict[str, float] = {}
    for t, lp in pairs[:k]:
        out.setdefault(engine.token_text(t), lp)  # two ids with one text: keep the likelier
    return out


def _choice(engine: Engine, index: int, prompt: list[int], c: Completion, p: Parsed
            ) -> dict[str, Any]:
    prompt_text = engine.tokenizer.decode(prompt)
    text = (prompt_text if p.echo else "") + c.text
    choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None,
                              "finish_reason": c.finish_reason}
    if p.logprobs is not None:
        k = p.logprobs
        tokens = (prompt if p.echo else []) + c.tokens
        lps = (c.prompt_logprobs[1:] if p.echo else []) + c.logprobs
        tops = (c.prompt_top_logprobs[1:] if p.echo else []) + (c.top_logprobs or [])
        choice["logprobs"] = {
            "tokens": [engine.token_text(t) for t in tokens],
            "token_logprobs": lps,
            "top_logprobs": [_top_dict(engine, t, k) for t in tops] if k else None,
            "text_offset": _offsets(engine, tokens),
        }
    return choice


def complete(engine: Engine, p: Parsed) -> tuple[list[Request], Any]:
    """The decode requests of a parsed body, and a function of their completions -> choices."""
    bos = int(engine.tokenizer.bos_id)
    requests = [Request([bos, *prompt], p.max_tokens, p.sampling, p.stop, i)
                for prompt in p.prompts for i in range(p.n)]

    def choices(out: list[Completion]) -> tuple[list[dict], dict]:
        ch = [_choice(engine, j, p.prompts[j // p.n], c, p) for j, c in enumerate(out)]
        return ch, usage(p, out)

    return requests, choices


def usage(p: Parsed, out: list[Completion]) -> dict[str, int]:
    """OpenAI's usage block: prompt tokens (BOS not counted) and generated tokens."""
    prompt_tokens = sum(len(x) for x in p.prompts)
    completion_tokens = sum(len(c.tokens) for c in out)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ----------------------------------------------------------------------------- the app


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="llmjax", docs_url=None, redoc_url=None)

    def error(e: BadRequest) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def body_of(request: HTTPRequest) -> Any:
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None

    async def run(requests: list[Request], logprobs: bool) -> list[Completion]:
        fut = engine.submit(requests, logprobs)
        try:
            return await asyncio.wrap_future(fut)
        except UserError as e:
            raise BadRequest(str(e)) from None
        except Exception as e:  # noqa: BLE001 - a failed batch is a 500, not a dead server
            raise BadRequest(f"decoding failed: {type(e).__name__}: {e}", None, 500) from None

    @app.exception_handler(BadRequest)
    async def _bad(_: HTTPRequest, e: BadRequest) -> JSONResponse:
        return error(e)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "queued": engine.queue.qsize(), "batches": engine.batches,
                "sequences": engine.sequences}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": engine.name, "object": "model", "created": int(time.time()),
            "owned_by": "llmjax", "max_model_len": engine.generator.max_len - 1,
            "step": engine.step}]}

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> dict:
        p = parse_completion(engine, await body_of(request))
        reqs, choices = complete(engine, p)
        ch, counts = choices(await run(reqs, p.logprobs is not None))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": engine.name, "choices": ch,
                "usage": counts}

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest) -> dict:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        messages = body.get("messages")
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                           for m in messages)):
            raise BadRequest("messages: must be a non-empty list of {role, content} objects",
                             "messages")
        fields = {k: v for k, v in body.items() if k not in ("messages", "logprobs")}
        if "max_completion_tokens" in fields:
            fields["max_tokens"] = fields.pop("max_completion_tokens")
        fields["prompt"] = "".join(m["content"] + "\n" for m in messages)
        p = parse_completion(engine, fields)
        reqs, _ = complete(engine, p)
        out = await run(reqs, False)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": engine.name,
                "choices": [{"index": j, "finish_reason": c.finish_reason,
                             "message": {"role": "assistant", "content": c.text}}
                            for j, c in enumerate(out)],
                "usage": usage(p, out)}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        t = engine.tokenizer
        return {"eos_token": engine.token_text(t.eos_id), "bos_token": engine.token_text(t.bos_id),
                "pad_token": engine.token_text(t.pad_id), "vocab_size": t.vocab_size,
                "model_max_length": engine.generator.max_len - 1}

    @app.post("/tokenize")
    async def tokenize(request: HTTPRequest) -> dict:
        body = await body_of(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise BadRequest("prompt: must be a string", "prompt")
        tokens = engine.encode(text)
        if isinstance(body, dict) and body.get("add_special_tokens"):
            tokens = [int(engine.tokenizer.bos_id), *tokens]
        return {"tokens": tokens, "count": len(tokens),
                "max_model_len": engine.generator.max_len - 1}

    @app.post("/detokenize")
    async def detokenize(request: HTTPRequest) -> dict:
        body = await body_of(request)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise BadRequest("tokens: must be a list of integers", "tokens")
        return {"prompt": engine.tokenizer.decode(tokens)}

    return app


# ----------------------------------------------------------------------------- command line


def _parser() -> ArgParser:
    p = ArgParser(prog="llmjax serve", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="training run directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default=None, help="model id (default: the run directory's name)")
    p.add_argument("--max_tokens", type=int, default=None,
                   help="largest max_tokens a request may ask (default: the model's window)")
    p.add_argument("--max_n", type=int, default=16)
    p.add_argument("--max_batch", type=int, default=32, help="sequences decoded together")
    p.add_argument("--max_queue", type=int, default=64, help="requests waiting (then 503)")
    return p


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or UserError naming --port / --host."""
    if not 0 <= port < 65536:
        raise UserError(f"--port={port}: must be in [0, 65536)")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host={host}: {e.strerror}") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        raise UserError(f"--port={port}: cannot bind {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    return sock


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for name in ("max_n", "max_batch", "max_queue"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name}: must be >= 1, got {getattr(args, name)}")
    from llmjax.generate.api import load

    model, tokenizer = load(args.workdir, args.step)
    gen = model.generator(tokenizer, max_batch=args.max_batch)
    window = gen.max_len - 1
    max_tokens = window if args.max_tokens is None else args.max_tokens
    if not 1 <= max_tokens <= window:
        raise UserError(f"--max_tokens: must be in [1, {window}], got {max_tokens}")
    sock = bind(args.host, args.port)
    import uvicorn

    name = args.name or os.path.basename(os.path.normpath(args.workdir))
    engine = Engine(gen, name, Limits(max_tokens, args.max_n, args.max_batch, args.max_queue),
                    step=model.step)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(engine), log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    print(f"serving {name!r} ({args.workdir}, step {model.step}) at http://{host}:{port}/v1 "
          f"(SIGTERM or Ctrl-C stops)", file=sys.stderr, flush=True)
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then re-raises the signal to
    # the handler it found: with these no-op handlers, that ends here, and the process exits 0.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
    print("server stopped", file=sys.stderr, flush=True)
    return 0
