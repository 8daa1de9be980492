"""k-shot prompts as lm-evaluation-harness builds them (lm_eval/api/samplers.py, fewshot_context).

A prompt (the *context* of a request) is

    description + Σ_shots (text + target_delimiter + target + fewshot_delimiter) + doc.text

- `description` is prepended verbatim: end it with its own separator (lm-eval does the same).
- The query carries no target delimiter: the scored continuation is `target_delimiter + target`
  (see `continuation`), or, for multiple choice, `target_delimiter + choice` for each choice.
  `append_target_delimiter=True` moves the delimiter into the context instead, for generation
  from a format whose delimiter is a symbol (our episodes' ">"), as `synthetic.render_prompt` does.
- Shots are drawn with `random.Random(seed).sample`. When the pool holds the document under test
  (few-shot split == evaluation split) lm-eval draws k+1, drops the document (by equality) and
  keeps the first k; otherwise it draws k. We apply the same rule, deciding by membership.
  k = 0 draws nothing, so the RNG stream is untouched.
- lm-eval keeps ONE `random.Random(seed)` per task and walks the documents in order, so each
  document gets different shots: `build_fewshot_prompts` does exactly that. `build_fewshot_prompt`
  with only a seed gives a prompt that is a pure function of (doc, pool, k, seed).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from llmjax.data.synthetic import EPISODE_FORMATS, Episode
from llmjax.errors import UserError

SAMPLERS = ("default", "first_n")  # lm-eval's sampler registry names


@dataclasses.dataclass(frozen=True)
class Doc:
    """One evaluation document.

    text: the query as the model sees it (lm-eval's doc_to_text). target: the answer text (for
    multiple choice, the correct choice's text). choices: the candidate answers, or None.
    id: distinguishes documents whose text and target coincide; exclusion of the document under
    test compares whole Docs, id included (lm-eval compares whole docs).
    """

    text: str
    target: str
    choices: tuple[str, ...] | None = None
    id: int | str | None = None

    @property
    def gold(self) -> int:
        """Index of `target` in `choices` (multiple choice only)."""
        if self.choices is None or self.target not in self.choices:
            raise ValueError(f"doc {self.id!r}: target {self.target!r} is not one of its choices")
        return self.choices.index(self.target)


def sample_fewshot(doc: Doc, pool: Sequence[Doc], k: int, rng: random.Random,
                   sampler: str = "default") -> list[Doc]:
    """k shots from `pool`, never `doc` itself. 'default': seeded random draw (see module doc);
    'first_n': the first k pool documents other than `doc`, in order (consumes no randomness)."""
    if k < 0:
        raise UserError(f"num_fewshot must be >= 0, got {k}")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown few-shot sampler {sampler!r}; expected one of {SAMPLERS}")
    if k == 0:
        return []
    pool = list(pool)
    others = [d for d in pool if d != doc]
    if len(others) < k:
        raise UserError(f"num_fewshot={k} exceeds the {len(others)} few-shot documents available")
    if sampler == "first_n":
        return others[:k]
    if doc in pool:
        # One extra draw so that k remain after dropping the document under test (lm-eval).
        shots = [d for d in rng.sample(pool, k + 1) if d != doc][:k]
        if len(shots) < k:  # the pool holds copies of doc; lm-eval asserts here too
            raise UserError(f"few-shot pool holds doc {doc.id!r} more than once; give docs ids")
        return shots
    return rng.sample(pool, k)


def render_fewshot_prompt(doc: Doc, shots: Sequence[Doc], *, description: str = "",
                          target_delimiter: str = " ", fewshot_delimiter: str = "\n\n",
                          append_target_delimiter: bool = False) -> str:
    """The context string for `doc` given already chosen shots (layout in the module doc)."""
    parts = [description]
    for shot in shots:
        # lm-eval writes a shot with an empty target as bare text, without either delimiter.
        parts.append(shot.text + (target_delimiter + shot.target + fewshot_delimiter
                                  if shot.target != "" else ""))
    parts.append(doc.text)
    if append_target_delimiter:
        parts.append(target_delimiter)
    return "".join(parts)


def build_fewshot_prompt(doc: Doc, pool: Sequence[Doc], k: int, *, description: str = "",
                         target_delimiter: str = " ", fewshot_delimiter: str = "\n\n",
                         seed: int = 1234, rng: random.Random | None = None,
                         sampler: str = "default", append_target_delimiter: bool = False) -> str:
    """k-shot context for `doc` with shots drawn from `pool`.

    rng: a task-wide `random.Random` to advance (lm-eval's stream); when None a fresh
    `random.Random(seed)` is used, so the prompt is a pure function of the arguments.
    """
    rng = random.Random(seed) if rng is None else rng
    shots = sample_fewshot(doc, pool, k, rng, sampler)
    return render_fewshot_prompt(doc, shots, description=description,
                                 target_delimiter=target_delimiter,
                                 fewshot_delimiter=fewshot_delimiter,
                                 append_target_delimiter=append_target_delimiter)


def build_fewshot_prompts(docs: Sequence[Doc], pool: Sequence[Doc], k: int, *,
                          seed: int = 1234, **kwargs) -> list[str]:
    """Contexts for a whole task: one `random.Random(seed)` walked over `docs` in order, as
    lm-eval does, so documents get different shots and the list is fixed by the seed."""
    rng = random.Random(seed)
    return [build_fewshot_prompt(doc, pool, k, rng=rng, **kwargs) for doc in docs]


def continuation(target: str, target_delimiter: str = " ") -> str:
    """The text a loglikelihood request scores after the context: delimiter + target."""
    return target_delimiter + target


# ----------------------------------------------------------------------------- episodes


def episode_docs(ep: Episode) -> tuple[str, list[Doc]]:
    """An episode as (description, docs): description = header [+ context + context_sep],
    one Doc per example with id = its index in the episode."""
    fmt = EPISODE_FORMATS[ep.kind]
    description = fmt.header + (ep.context + fmt.context_sep if ep.context else "")
    docs = [Doc(text=q, target=a, id=i) for i, (q, a) in enumerate(ep.examples)]
    return description, docs


def build_episode_prompt(ep: Episode, index: int, k: int, *, seed: int = 1234,
                         rng: random.Random | None = None,
                         sampler: str = "default") -> tuple[str, str]:
    """(prompt, answer) for example `index` of an episode with k shots from its other examples,
    in the episode's own format: shots joined by ex_sep, query + qa_sep at the end (ready for
    generation; score `answer` as the continuation). With sampler='first_n' and k = index this
    equals `synthetic.render_prompt(ep, index)`.
    """
    fmt = EPISODE_FORMATS[ep.kind]
    if not 0 <= index < len(ep.examples):
        raise ValueError(f"index {index} outside the episode's {len(ep.examples)} examples")
    description, docs = episode_docs(ep)
    prompt = build_fewshot_prompt(docs[index], docs, k, description=description,
                                  target_delimiter=fmt.qa_sep, fewshot_delimiter=fmt.ex_sep,
                                  seed=seed, rng=rng, sampler=sampler,
                                  append_target_delimiter=True)
    return prompt, docs[index].target
