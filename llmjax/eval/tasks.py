"""The probe tasks: few-shot episodes with rules the model has never seen, and their scoring.

Every document comes from the synthetic corpus's episode generators (`llmjax.data.synthetic`)
through `probe_rng`, whose seed domain is disjoint from the training data's, and with
`heldout=True`, so each rule (word mapping, symbol permutation, key-value store, successor map)
is new to the model. One episode is one document; the document under test is the episode's last
example, its k shots are drawn from the episode's other examples with a seeded
`random.Random` (lm-eval's rule: never the document itself), and the prompt is the episode's own
training format (header [+ store] + shots joined by the episode's separator + query + qa_sep), so
a k-shot prompt reads exactly like the start of a training episode.

Tasks (`TASK_TYPES`):
  episode   kind in translation | recall | modular | copy | reverse | sequence, k in `ks`
  sentence  word-by-word translation of a 4-8 word sentence under an in-context dictionary
            (k dictionary shots), scored with BLEU, chrF and ROUGE
  facts     zero-shot recall of the knowledge base the model was trained on (k = 0, no context
            help): knowledge held in the weights, for contrast

Scoring (`evaluate`), per (task, k), each metric averaged over documents:
  generation (greedy, until the episode separator): exact_match, token_edit_distance and
    normalized_token_edit_distance (target tokens; Schaeffer et al.'s smooth counterpart of exact
    match), chrf (corpus); the sentence task adds bleu, rouge1, rouge2, rougeL
  target log-likelihood: target_logprob (nats), target_cross_entropy (nats / token)
  multiple choice over the episode's answer set (where finite): acc, acc_norm, brier_score
  baselines: baseline_chance (a uniform guess over the answer set), baseline_freq (the answer most
    frequent among the shots in the context, ties -> the one seen first; no shots -> no answer);
    the *hard* subset is the documents where baseline_freq is wrong: exact_match_hard, acc_hard,
    hard_fraction. A model that repeats frequent values scores well overall but at chance on the
    hard subset; in-context lookup lifts both.
  window: k_effective (shots kept) and truncated (fraction of documents that lost shots). When a
    prompt does not fit the model's window, whole shots are dropped from the front (the header and
    store stay) until it fits.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmjax.data import synthetic
from llmjax.errors import UserError
from llmjax.eval import metrics
from llmjax.eval.prompts import SAMPLERS, Doc, episode_docs, render_fewshot_prompt, sample_fewshot

KS = (0, 1, 2, 4, 8, 16)
_FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a probe type in `config.evals`: an integer >= lo (<= hi when set), one of
    `choices`, or (kind 'ks') a non-empty list of distinct shot counts from `KS`."""

    kind: str  # 'int' | 'choice' | 'ks'
    lo: int = 0
    hi: int | None = None
    choices: tuple[Any, ...] = ()
    required: bool = False

    def allowed(self) -> str:
        if self.kind == "int":
            return (f"an integer >= {self.lo}" if self.hi is None
                    else f"an integer in {self.lo}..{self.hi}")
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return f"a non-empty list of distinct shot counts from {list(KS)}"

    def ok(self, value: Any) -> bool:
        if self.kind == "int":
            return (not isinstance(value, bool) and isinstance(value, int | np.integer)
                    and value >= self.lo and (self.hi is None or value <= self.hi))
        if self.kind == "choice":
            return any(type(value) is type(c) and value == c for c in self.choices)
        return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
                and all(not isinstance(k, bool) and isinstance(k, int | np.integer) and k in KS
                        for k in value)
                and len(set(value)) == len(value))


def _int(lo: int, hi: int | None = None) -> Option:
    return Option("int", lo=lo, hi=hi)


_N, _SEED, _KS = _int(1), _int(0), Option("ks")
# The options of every probe type of `config.evals` (besides `type`): the tasks here and the
# probes `llmjax.eval.probe` runs itself (icl, induction, perplexity). 0 means "scaled to the
# window" for icl.early / icl.late and "automatic" for induction.seq_len.
SCHEMAS: dict[str, dict[str, Option]] = {
    "episode": {"kind": Option("choice", choices=synthetic.EPISODE_KINDS, required=True),
                "n": _N, "seed": _SEED, "ks": _KS, "num_examples": _int(1),
                "sampler": Option("choice", choices=SAMPLERS)},
    "sentence": {"n": _N, "seed": _SEED, "ks": _KS, "min_words": _int(1), "max_words": _int(1)},
    "facts": {"n": _N, "seed": _SEED, "top_entities": _int(0)},
    "icl": {"n": _N, "early": _int(0), "late": _int(0)},
    "induction": {"n_seqs": _N, "seq_len": _int(0), "seed": _SEED},
    "perplexity": {"n": _N},
}
# Options of each task type in `config.evals` (besides `type`).
TASK_OPTIONS: dict[str, set[str]] = {t: set(SCHEMAS[t]) for t in ("episode", "sentence", "facts")}
TASK_TYPES = tuple(TASK_OPTIONS)


@dataclasses.dataclass(frozen=True)
class ProbeItem:
    """One document of a task at one k: its prompt and what scoring needs.

    context: the prompt (generation continues it; continuations are scored after it).
    target: the reference answer. choices: the answer set for multiple choice (None: open).
    freq_pred: the frequency baseline's answer (None: nothing to predict from).
    chance: probability that a uniform guess over the answer set is right.
    stops / max_tokens: where greedy generation ends.
    """

    doc: Doc
    context: str
    target: str
    choices: tuple[str, ...] | None
    k: int
    k_effective: int
    freq_pred: str | None
    chance: float
    stops: tuple[str, ...]
    max_tokens: int = 16


def task_seed(name: str, seed: int) -> int:
    """The probe seed of one task: distinct tasks with the same `seed` draw distinct episodes."""
    return int.from_bytes(hashlib.sha256(f"{name}:{int(seed)}".encode()).digest()[:4], "little")


def frequency_baseline(answers: Sequence[str]) -> str | None:
    """The most frequent answer in `answers` (context order); ties -> the earliest; [] -> None."""
    if not answers:
        return None
    counts = collections.Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def answer_set(ep: synthetic.Episode) -> tuple[str, ...] | None:
    """Every answer the episode's rule can give, sorted; None when unbounded (copy, reverse)."""
    if ep.kind in ("translation", "recall", "assoc"):
        return tuple(sorted({v for _, v in ep.rule}))
    if ep.kind == "modular":
        return tuple(sorted(set(ep.rule)))
    if ep.kind == "sequence":
        succ = dict(ep.rule)

        def ahead(s: str, n: int) -> str:
            for _ in range(n):
                s = succ[s]
            return s

        return tuple(sorted({ahead(s, 3) + ahead(s, 4) for s in succ}))
    return None


def _chance(ep: synthetic.Episode, target: str, choices: tuple[str, ...] | None) -> float:
    if choices is not None:
        return 1.0 / len(choices)
    return 26.0 ** -len(target)  # copy / reverse: random lowercase letters


def _fit(context_of: Any, shots: list[Doc], budget: int, n_tokens: Any) -> tuple[str, list[Doc]]:
    """Drops shots from the front until n_tokens(context) <= budget (or no shot is left)."""
    context = context_of(shots)
    while shots and n_tokens(context) > budget:
        shots = shots[1:]
        context = context_of(shots)
    return context, shots


def _fit_episode_prompt(doc: Doc, shots: list[Doc], description: str, fmt: Any,
                        tokenizer: Any, budget: int) -> tuple[str, list[Doc]]:
    """The episode-format k-shot context for `doc`, dropping shots from the front until it and
    BOS fit in `budget` tokens; returns (context, shots kept)."""

    def context_of(s: list[Doc]) -> str:
        return render_fewshot_prompt(doc, s, description=description, target_delimiter=fmt.qa_sep,
                                     fewshot_delimiter=fmt.ex_sep, append_target_delimiter=True)

    return _fit(context_of, shots, budget, lambda c: 1 + len(tokenizer.encode(c)))


class Task:
    """Base: a named probe with its ks; `items(k, tokenizer, max_len)` builds the documents."""

    name: str
    ks: tuple[int, ...]
    generation_metrics: tuple[str, ...] = ("exact_match", "normalized_token_edit_distance",
                                           "chrf")
    has_context: bool = True  # False: no in-context help, so no frequency baseline

    def docs(self) -> list[Doc]:
        raise NotImplementedError

    def items(self, k: int, tokenizer: Any, max_len: int) -> list[ProbeItem]:
        raise NotImplementedError


class EpisodeTask(Task):
    """k-shot probes of one episode kind (module doc). n episodes of `num_examples` examples;
    the last example is the query. sampler 'first_n' takes the episode's first k examples as the
    shots (the training rendering's order) instead of a seeded random draw."""

    def __init__(self, name: str, kind: str, world: synthetic.World, *, n: int = 32,
                 seed: int = 0, ks: Sequence[int] = KS, num_examples: int | None = None,
                 sampler: str = "default"):
        if kind not in synthetic.EPISODE_KINDS:
            raise UserError(f"evals.{name}.kind={kind!r}: choose from "
                            f"{', '.join(synthetic.EPISODE_KINDS)}")
        self.name, self.kind, self.world, self.n, self.seed = name, kind, world, int(n), int(seed)
        self.ks = tuple(int(k) for k in ks)
        self.num_examples = int(num_examples or max(self.ks) + 1)
        self.sampler = sampler  # 'default' (seeded draw) or 'first_n' (the episode's first k)
        if self.num_examples < max(self.ks) + 1:
            raise UserError(f"evals.{name}.num_examples={self.num_examples} leaves fewer than "
                            f"max(ks)={max(self.ks)} shots besides the query")
        self._episodes: list[synthetic.Episode] | None = None

    def episodes(self) -> list[synthetic.Episode]:
        if self._episodes is None:
            rng = synthetic.probe_rng(task_seed(self.name, self.seed))
            self._episodes = [synthetic.sample_episode(self.kind, rng, self.world,
                                                       self.num_examples, heldout=True)
                              for _ in range(self.n)]
        return self._episodes

    def docs(self) -> list[Doc]:
        out = []
        for i, ep in enumerate(self.episodes()):
            query, answer = ep.examples[-1]
            out.append(Doc(text=query, target=answer, choices=answer_set(ep), id=i))
        return out

    def items(self, k: int, tokenizer: Any, max_len: int) -> list[ProbeItem]:
        """The documents at k shots, prompts fitted to a window of max_len tokens."""
        fmt = synthetic.EPISODE_FORMATS[self.kind]
        rng = random.Random(_FEWSHOT_SEED)  # one stream walked over the documents, as lm-eval
        eps = self.episodes()
        answer_tokens = max(len(tokenizer.encode(a)) for ep in eps for _, a in ep.examples)
        max_tokens = answer_tokens + 1  # the answer and the separator after it
        out = []
        for ep in eps:
            description, docs = episode_docs(ep)
            doc = docs[-1]
            shots = sample_fewshot(doc, docs, k, rng, self.sampler)
            context, kept = _fit_episode_prompt(doc, shots, description, fmt, tokenizer,
                                                max_len - max_tokens)
            choices = answer_set(ep)
            out.append(ProbeItem(
                doc=dataclasses.replace(doc, choices=choices), context=context,
                target=doc.target, choices=choices, k=k, k_effective=len(kept),
                freq_pred=frequency_baseline([s.target for s in kept]),
                chance=_chance(ep, doc.target, choices), stops=(fmt.ex_sep, "\n"),
                max_tokens=max_tokens))
        return out


class SentenceTask(Task):
    """Word-by-word translation of a sentence of 4-8 dictionary words: prompt = a translation
    episode's header and k dictionary shots ("word>translation") + the sentence + ">"; the target
    is the translated words joined by spaces. Scored by BLEU / chrF / ROUGE (partial credit)."""

    generation_metrics = ("exact_match", "normalized_token_edit_distance", "chrf", "bleu",
                          "rouge1", "rouge2", "rougeL")

    def __init__(self, name: str, world: synthetic.World, *, n: int = 16, seed: int = 0,
                 ks: Sequence[int] = KS, min_words: int = 4, max_words: int = 8):
        self.name, self.world, self.n, self.seed = name, world, int(n), int(seed)
        self.ks = tuple(int(k) for k in ks)
        self.min_words, self.max_words = int(min_words), int(max_words)
        self._data: list[tuple[synthetic.Episode, str, str]] | None = None

    def episodes(self) -> list[tuple[synthetic.Episode, str, str]]:
        """(dictionary episode, sentence, reference translation) per document."""
        if self._data is None:
            rng = synthetic.probe_rng(task_seed(self.name, self.seed))
            self._data = []
            for _ in range(self.n):
                ep = synthetic.sample_episode("translation", rng, self.world, max(self.ks) + 1,
                                              heldout=True)
                mapping = dict(ep.rule)
                keys = sorted(mapping)
                words = [keys[i] for i in rng.integers(0, len(keys),
                                                       rng.integers(self.min_words,
                                                                    self.max_words + 1))]
                self._data.append((ep, " ".join(words), " ".join(mapping[w] for w in words)))
        return self._data

    def docs(self) -> list[Doc]:
        return [Doc(text=s, target=t, id=i) for i, (_, s, t) in enumerate(self.episodes())]

    def items(self, k: int, tokenizer: Any, max_len: int) -> list[ProbeItem]:
        fmt = synthetic.EPISODE_FORMATS["translation"]
        rng = random.Random(_FEWSHOT_SEED)
        out = []
        for doc, (ep, _, target) in zip(self.docs(), self.episodes(), strict=True):
            description, pool = episode_docs(ep)
            shots = rng.sample(pool, k)  # the sentence is not in the pool: plain draw (lm-eval)
            max_tokens = len(tokenizer.encode(target)) + 1
            context, kept = _fit_episode_prompt(doc, shots, description, fmt, tokenizer,
                                                max_len - max_tokens)
            n_words = len(target.split())
            freq = frequency_baseline([s.target for s in kept])
            out.append(ProbeItem(
                doc=doc, context=context, target=target, choices=None, k=k,
                k_effective=len(kept),
                freq_pred=None if freq is None else " ".join([freq] * n_words),
                chance=float(len(ep.rule)) ** -n_words, stops=("\n",), max_tokens=max_tokens))
        return out


class FactsTask(Task):
    """Zero-shot knowledge-base recall: prompt `fact_prompt(entity, attribute)` ("E a is"), target
    " value"; choices = every value the attribute takes. n facts drawn uniformly at random, from
    every entity or (top_entities > 0) from the top_entities most popular ones: with Zipfian
    popularity those are the facts training repeats most, where knowledge shows first."""

    has_context = False

    def __init__(self, name: str, world: synthetic.World, *, n: int = 64, seed: int = 0,
                 top_entities: int = 0):
        self.name, self.world, self.n, self.seed = name, world, int(n), int(seed)
        self.top_entities = int(top_entities)
        self.ks = (0,)

    def docs(self) -> list[Doc]:
        rng = synthetic.probe_rng(task_seed(self.name, self.seed))
        facts = self.world.facts
        pool = np.arange(len(facts))
        if self.top_entities:  # world.entities are in popularity order
            top = set(self.world.entities[:self.top_entities])
            pool = np.asarray([i for i, f in enumerate(facts) if f[0] in top])
        picks = pool[rng.choice(len(pool), size=min(self.n, len(pool)), replace=False)]
        out = []
        for i in picks.tolist():
            entity, attribute, value = facts[i]
            values = self.world.attribute_values[self.world.attributes.index(attribute)]
            out.append(Doc(text=synthetic.fact_prompt(entity, attribute), target=" " + value,
                           choices=tuple(" " + v for v in values), id=i))
        return out

    def items(self, k: int, tokenizer: Any, max_len: int) -> list[ProbeItem]:
        if k != 0:
            raise UserError(f"task {self.name!r} is zero-shot only (k=0), got k={k}")
        docs = self.docs()
        max_tokens = max(len(tokenizer.encode(c + ".")) for d in docs for c in d.choices or ())
        return [ProbeItem(doc=d, context=d.text, target=d.target, choices=d.choices, k=0,
                          k_effective=0, freq_pred=None, chance=1.0 / len(d.choices or (1,)),
                          stops=(".", "\n"), max_tokens=max_tokens) for d in docs]


# ----------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class Score:
    """One aggregated metric of one (task, k): value over n documents."""

    metric: str
    value: float
    n: int


def evaluate(lm: Any, task: Task, k: int, items: Sequence[ProbeItem] | None = None
             ) -> list[Score]:
    """Scores `task` at k shots with `lm` (an `llmjax.eval.harness.LM`); metrics in module doc.
    items: `task.items(k, lm.tokenizer, lm.max_len)` when the caller already has them."""
    if items is None:
        items = task.items(k, lm.tokenizer, lm.max_len)
    if not items:
        return []
    n = len(items)
    out: list[Score] = []

    def add(metric: str, value: float, count: int = n) -> None:
        out.append(Score(metric, float(value), int(count)))

    preds = lm.generate_until([(it.context, it.stops, it.max_tokens) for it in items])
    refs = [it.target for it in items]
    em = np.array([metrics.exact_match(p, r) for p, r in zip(preds, refs, strict=True)])
    add("exact_match", em.mean())
    pairs = [(lm.tokenizer.encode(p), lm.tokenizer.encode(r)) for p, r in zip(preds, refs,
                                                                             strict=True)]
    add("token_edit_distance", np.mean([metrics.token_edit_distance(p, r) for p, r in pairs]))
    add("normalized_token_edit_distance",
        np.mean([metrics.normalized_token_edit_distance(p, r) for p, r in pairs]))
    for name in task.generation_metrics:
        if name in ("chrf", "bleu", "rouge1", "rouge2", "rougeL"):
            add(name, metrics.aggregate(name, list(zip(preds, refs, strict=True))))

    # Log-likelihood of the target; for multiple choice, of every choice (gold's is the target's).
    choice_items = [it for it in items if it.choices]
    if choice_items:
        flat = [(it.context, c) for it in choice_items for c in it.choices]
        scores = lm.loglikelihood_tokens(flat)
        acc, acc_norm, brier, gold_scores, i = [], [], [], [], 0
        for it in choice_items:
            s = scores[i:i + len(it.choices)]
            i += len(it.choices)
            lls = np.array([x.loglikelihood for x in s])
            gold = it.choices.index(it.target)
            mc = metrics.multiple_choice(lls, it.choices, gold)
            acc.append(mc["acc"])
            acc_norm.append(mc["acc_norm"])
            brier.append(metrics.brier_score(metrics.choice_probs(lls)[None], [gold]))
            gold_scores.append(s[gold])
        add("acc", np.mean(acc), len(choice_items))
        add("acc_norm", np.mean(acc_norm), len(choice_items))
        add("brier_score", np.mean(brier), len(choice_items))
        target_scores = gold_scores if len(choice_items) == n else None
    else:
        acc, target_scores = [], None
    if target_scores is None:
        target_scores = lm.loglikelihood_tokens([(it.context, it.target) for it in items])
    add("target_logprob", np.mean([s.loglikelihood for s in target_scores]))
    add("target_cross_entropy", metrics.aggregate(
        "target_cross_entropy", [(s.loglikelihood, len(s.logprobs)) for s in target_scores]))

    add("baseline_chance", np.mean([it.chance for it in items]))
    if task.has_context:
        freq_ok = np.array([it.freq_pred == it.target for it in items])
        add("baseline_freq", freq_ok.mean())
        hard = ~freq_ok
        add("hard_fraction", hard.mean())
        if hard.any():
            add("exact_match_hard", em[hard].mean(), int(hard.sum()))
            if choice_items and len(acc) == n:
                add("acc_hard", np.asarray(acc)[hard].mean(), int(hard.sum()))
            add("baseline_chance_hard", np.mean([it.chance for it, h in zip(items, hard,
                                                                            strict=True) if h]),
                int(hard.sum()))
        if isinstance(task, SentenceTask):
            fp = [it.freq_pred or "" for it in items]
            add("baseline_freq_chrf", metrics.chrf(fp, refs))
    add("k_effective", np.mean([it.k_effective for it in items]))
    add("truncated", np.mean([it.k_effective < it.k for it in items]))
    return out


# ----------------------------------------------------------------------------- from config


def check_options(name: str, kind: str, spec: Mapping[str, Any], allowed: set[str]) -> None:
    """UserError naming the options of `config.evals.<name>` (of type `kind`) not in `allowed`."""
    unknown = set(spec) - allowed - {"type"}
    if unknown:
        raise UserError(f"evals.{name}: unknown option(s) {', '.join(sorted(unknown))}; "
                        f"allowed for type {kind!r}: {', '.join(sorted(allowed))}")


def _bad(name: str, key: str, value: Any, allowed: str) -> UserError:
    return UserError(f"evals.{name}.{key}={value!r}: allowed: {allowed}")


def check_spec(name: str, spec: Mapping[str, Any]) -> None:
    """Checks `config.evals.<name>` against its type's schema (`SCHEMAS`): the type, unknown and
    missing options, each option's type and range, and the rules between options. UserError
    naming ``evals.<name>.<option>=<value>`` and the allowed values. Needs no world or model:
    the limits that depend on them (facts' top_entities, the window) are checked where they are
    known (`build_task`, `llmjax.eval.probe.check_evals`)."""
    if not isinstance(spec, Mapping):
        raise UserError(f"evals.{name}={spec!r}: allowed: a mapping {{type: ..., options}}")
    kind = spec.get("type")
    if kind not in SCHEMAS:
        raise UserError(f"evals.{name}.type={kind!r}: choose from {', '.join(SCHEMAS)}")
    schema = SCHEMAS[kind]
    check_options(name, kind, spec, set(schema))
    for key, option in schema.items():
        if key not in spec:
            if option.required:
                raise UserError(f"evals.{name}.{key} is required for type {kind!r}: "
                                f"{option.allowed()}")
            continue
        if not option.ok(spec[key]):
            raise _bad(name, key, spec[key], option.allowed())
    ks = [int(k) for k in spec.get("ks", KS)]
    if kind == "episode" and "num_examples" in spec and spec["num_examples"] < max(ks) + 1:
        raise _bad(name, "num_examples", spec["num_examples"],
                   f"an integer >= max(ks) + 1 = {max(ks) + 1} (the query plus max(ks) shots)")
    if kind == "sentence" and spec.get("min_words", 4) > spec.get("max_words", 8):
        raise _bad(name, "max_words", spec.get("max_words", 8),
                   f"an integer >= min_words = {spec.get('min_words', 4)}")
    if kind == "icl" and spec.get("early") and spec.get("late") and (
            spec["early"] >= spec["late"]):
        raise _bad(name, "late", spec["late"],
                   f"an integer > early = {spec['early']} (or 0 = scaled to the window)")


def build_task(name: str, spec: Mapping[str, Any], world: synthetic.World) -> Task:
    """A task from its `config.evals.<name>` entry (type + options); UserError names bad keys."""
    if isinstance(spec, Mapping) and spec.get("type") in SCHEMAS and (
            spec.get("type") not in TASK_OPTIONS):
        raise UserError(f"evals.{name}.type={spec.get('type')!r} is not a task; task types: "
                        f"{', '.join(TASK_TYPES)}")
    check_spec(name, spec)
    spec = dict(spec)
    kind = spec.pop("type")
    top = spec.get("top_entities", 0)
    if top > len(world.entities):
        raise _bad(name, "top_entities", top,
                   f"an integer in 0..{len(world.entities)} (0 = every entity)")
    if "ks" in spec:
        spec["ks"] = tuple(int(k) for k in spec["ks"])
    if kind == "episode":
        return EpisodeTask(name, spec.pop("kind"), world, **spec)
    if kind == "sentence":
        return SentenceTask(name, world, **spec)
    return FactsTask(name, world, **spec)
