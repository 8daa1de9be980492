"""The Python way to use a trained run: `llmjax.load` and `llmjax.pipeline`.

    import llmjax
    model, tokenizer = llmjax.load("runs/tiny")             # latest checkpoint; step=S for another
    logits = model(tokens)                                   # int32 [batch, seq] -> float32 logits
    gen = llmjax.pipeline("text-generation", model="runs/tiny")
    gen("The quick brown fox", max_length=50)                # [{"generated_text": "The quick ..."}]

`pipeline` mirrors Hugging Face's text-generation pipeline: the same call, keywords and output
shape. Lengths count tokens of the text, as in HF (the BOS every llmjax prompt starts with is not
counted): max_length = prompt tokens + new tokens (HF's default 20 when neither it nor
max_new_tokens is given). do_sample=False is greedy; do_sample=True samples with temperature,
top_k (HF's default 50) and top_p, from `seed` (default 0: the same call gives the same text).
A list of prompts gives a list of lists. Beyond HF: `stop` (strings that end a continuation).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from llmjax.errors import UserError
from llmjax.eval.probe import load_params, load_run
from llmjax.generate.decode import CachedDecoder, Generator, Request, Sampling


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: Any, params: Any, tokens: jax.Array) -> jax.Array:
    from flax import nnx

    return nnx.merge(graphdef, params)(tokens)


@dataclasses.dataclass(frozen=True)
class Model:
    """A run's model at one checkpoint: `model(tokens)` maps int32 [batch, seq] to float32 logits
    [batch, seq, vocab] (one compiled program per shape). `config` is its ModelConfig; `module`
    the nnx Transformer itself; `params` the parameters as a pure dict; `max_len` the window the
    run was trained on (data.seq_len)."""

    graphdef: Any
    params: Any
    config: Any
    workdir: str
    step: int
    max_len: int

    def __call__(self, tokens: Any) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers [batch, seq], got {tokens.dtype} "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's "
                             f"max_seq_len={self.config.max_seq_len}")
        return _forward(self.graphdef, self.params, tokens.astype(jnp.int32))

    @property
    def module(self) -> Any:
        from flax import nnx

        return nnx.merge(self.graphdef, self.params)

    def generator(self, tokenizer: Any, **kwargs: Any) -> Generator:
        """A KV-cache Generator (llmjax.generate.decode) over this model."""
        return Generator(*CachedDecoder.build(self.graphdef, self.params), tokenizer,
                         self.max_len, **kwargs)


def load(run: str, step: int | None = None) -> tuple[Model, Any]:
    """(model, tokenizer) of a training run directory at `step` (default: its latest checkpoint).
    UserError naming the problem for a missing run, checkpoint or step."""
    r = load_run(run)
    graphdef, params, step = load_params(run, step, r.model_cfg)
    return Model(graphdef, params, r.model_cfg, r.workdir, int(step), r.max_len), r.tokenizer


class TextGenerationPipeline:
    """HF's `pipeline("text-generation")` over an llmjax model (module doc)."""

    task = "text-generation"

    def __init__(self, model: Model, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.generator = model.generator(tokenizer)

    def __call__(self, text_inputs: str | Sequence[str], *, max_length: int | None = None,
                 max_new_tokens: int | None = None, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0,
                 num_return_sequences: int = 1, return_full_text: bool = True,
                 seed: int = 0, stop: Sequence[str] | str = (), truncation: bool = False
                 ) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("text_inputs must be a string or a list of strings")
        if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
            raise UserError(f"num_return_sequences: must be an integer >= 1, got "
                            f"{num_return_sequences!r}")
        sampling = (Sampling(float(temperature), int(top_k or 0), float(top_p), int(seed))
                    if do_sample else Sampling(seed=int(seed))).check("")
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        requests = []
        for text in prompts:
            ids = self.generator.encode(text)
            if max_new_tokens is not None:
                new = int(max_new_tokens)
            else:
                new = (20 if max_length is None else int(max_length)) - (len(ids) - 1)
            new = max(new, 0)
            if truncation:
                ids = self.generator.fit(ids, new)
            for i in range(num_return_sequences):
                requests.append(Request(ids, new, sampling, stops, index=i))
        out = self.generator.generate(requests)
        grouped = []
        for p, text in enumerate(prompts):
            done = out[p * num_return_sequences:(p + 1) * num_return_sequences]
            grouped.append([{"generated_text": (text if return_full_text else "") + c.text}
                            for c in done])
        return grouped[0] if single else grouped


def pipeline(task: str, model: str | Model, tokenizer: Any = None, *, step: int | None = None
             ) -> TextGenerationPipeline:
    """`pipeline("text-generation", model=RUN)`; `model` may also be a loaded Model (then give
    its tokenizer)."""
    if task != "text-generation":
        raise UserError(f"task={task!r}: llmjax pipelines support 'text-generation'")
    if isinstance(model, str):
        loaded, tok = load(model, step)
        return TextGenerationPipeline(loaded, tokenizer or tok)
    if tokenizer is None:
        raise UserError("pipeline: give the tokenizer with a loaded model "
                        "(model, tokenizer = llmjax.load(RUN))")
    return TextGenerationPipeline(model, tokenizer)

