"""The `synthetic` corpus: a generated language for scaling and in-context-learning research.

Fully determined by (version, seed) plus the knobs in `SyntheticConfig`; nothing is downloaded.
A `World` (lexicon, grammar tables, knowledge base) is built once from (version, seed); documents
are then drawn from four families mixed by configurable weights:

- prose:    sentences of a fixed probabilistic grammar over generated pseudo-words with Zipf
            frequencies. Structure at several ranges: word order (det adj* noun verb ...), number
            agreement between subject and verb across a relative clause with an attractor noun,
            nested parentheses and quotes, and a per-document topic that biases word choice.
- facts:    sentences "Entity attribute is value." from a fixed knowledge base; entity popularity
            is Zipf, so bigger models memorise further into the tail.
- episodes: one in-context task per document whose rule is drawn fresh for the document
            (translation, key-value recall, modular arithmetic over permuted symbols, copy,
            reverse, sequence continuation). Bursty: the same items recur within a document.
- repeats:  random spans (pseudo-words or random letters) that recur later in the same document,
            close enough to fall in one short context: material for induction heads.

Language spec (tests rely on it): pseudo-word stems are CV syllables over "bdfgklmnprtv"+"aeiou"
with an optional coda "n"/"r"/"l" (2-5 letters, never containing "s"); a plural noun is stem+"s",
a singular verb is stem+"s" (English-like: "the dog runs / the dogs run"). Nested sentences are
wrapped in "( )" or in quotes, '"' at even quote depth and "'" at odd depth.

Randomness: every stream is a numpy Generator seeded from a SHA-256 of a tuple whose first word
names its domain ("world", "data", "probe"), so training data and probes never share a seed.
Hard-mode episode rules are further split by a hash of the rule into a training half and a
held-out half: probe episodes (heldout=True) can never reproduce a rule seen in training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from llmjax.errors import UserError

FAMILIES = ("prose", "facts", "episodes", "repeats")
EPISODE_KINDS = ("translation", "recall", "modular", "copy", "reverse", "sequence", "assoc")
SPLITS = ("train", "validation")

# Kinds whose rule has no parameters (the examples themselves are fresh random strings).
PARAMETERLESS_KINDS = ("copy", "reverse")

_CONSONANTS = "bdfgklmnprtv"
_VOWELS = "aeiou"
_CODAS = "nrl"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
# Documents per independently seeded chunk: bounds memory and fixes the stream layout.
_CHUNK_DOCS = 1024
# Shares of the content lexicon by part of speech (nouns, verbs, adjectives).
_POS_SHARES = (0.5, 0.3, 0.2)
_NUM_PREPOSITIONS = 6
_NUM_SPEECH_VERBS = 4


def _knob(default: Any, help_: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_})


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Hashable and JSON-able (`dataclasses.asdict`).

    Validated on construction: a bad value raises UserError naming the field.
    """

    version: str = _knob("1.0.0", "generator version; part of every seed")
    seed: int = _knob(0, "seed of the world and of both splits (>= 0)")
    num_train_docs: int = _knob(30_000, "documents in the train split")
    num_validation_docs: int = _knob(1_000, "documents in the validation split")
    # Family weights (relative; need not sum to 1).
    prose: float = _knob(0.25, "weight of grammar prose documents")
    facts: float = _knob(0.15, "weight of knowledge-base fact documents")
    episodes: float = _knob(0.25, "weight of in-context episode documents")
    repeats: float = _knob(0.35, "weight of repeated-span (induction) documents")
    # World: lexicon and grammar.
    lexicon_size: int = _knob(1024, "content pseudo-words (50% nouns, 30% verbs, 20% adjectives)")
    zipf_exponent: float = _knob(1.1, "Zipf exponent s of word frequencies, p(rank r) ~ r^-s")
    num_topics: int = _knob(8, "topics partitioning the content words")
    topic_prob: float = _knob(0.5, "chance a prose content word comes from the document's topic")
    prose_sentences_min: int = _knob(3, "fewest sentences in a prose document")
    prose_sentences_max: int = _knob(8, "most sentences in a prose document")
    adjective_prob: float = _knob(0.3, "chance of each of up to two adjectives before a noun")
    relative_clause_prob: float = _knob(0.3, "chance a noun phrase takes a relative clause")
    prep_phrase_prob: float = _knob(0.3, "chance a verb phrase ends with a prepositional phrase")
    nesting_prob: float = _knob(0.12, "chance of a parenthetical / quoted nested sentence")
    max_nesting: int = _knob(2, "deepest nesting of parentheses and quotes")
    # World: knowledge base.
    num_entities: int = _knob(256, "entities in the knowledge base")
    num_attributes: int = _knob(8, "attributes per entity")
    values_per_attribute: int = _knob(32, "distinct values each attribute can take")
    entity_zipf_exponent: float = _knob(1.0, "Zipf exponent of entity popularity in facts docs")
    facts_per_doc_min: int = _knob(3, "fewest facts in a facts document")
    facts_per_doc_max: int = _knob(10, "most facts in a facts document")
    # Episodes: kind weights (relative).
    episode_translation: float = _knob(1.0, "weight of word-to-word translation episodes")
    episode_recall: float = _knob(1.0, "weight of key-value recall episodes")
    episode_modular: float = _knob(0.5, "weight of modular-addition-over-symbols episodes")
    episode_copy: float = _knob(1.0, "weight of copy episodes")
    episode_reverse: float = _knob(0.5, "weight of reverse episodes")
    episode_sequence: float = _knob(1.0, "weight of sequence-continuation episodes")
    episode_assoc: float = _knob(
        0.0, "weight of associative-recall episodes (Zoology's MQAR: 'ar: a3 f7 | f7 a3')")
    assoc_keys_min: int = _knob(4, "fewest distinct letter keys in an associative-recall episode")
    assoc_keys_max: int = _knob(8, "most distinct letter keys in an associative-recall episode")
    episode_examples_min: int = _knob(8, "fewest examples in an episode")
    episode_examples_max: int = _knob(24, "most examples in an episode")
    episode_keys_min: int = _knob(3, "fewest distinct keys in translation / recall episodes")
    episode_keys_max: int = _knob(6, "most distinct keys in translation / recall episodes")
    easy_fraction: float = _knob(
        0.5, "curriculum: share of easy episodes (2 keys, digits in natural order, short strings)")
    modulus_min: int = _knob(3, "smallest modulus / symbol-alphabet size (modular, sequence)")
    modulus_max: int = _knob(7, "largest modulus / symbol-alphabet size (modular, sequence)")
    copy_len_min: int = _knob(2, "shortest string in copy / reverse episodes (letters)")
    copy_len_max: int = _knob(6, "longest string in copy / reverse episodes (letters)")
    # Repeats.
    repeat_spans_min: int = _knob(1, "fewest distinct spans in a repeats document")
    repeat_spans_max: int = _knob(3, "most distinct spans in a repeats document")
    repeat_count_min: int = _knob(2, "fewest occurrences of each span (>= 2)")
    repeat_count_max: int = _knob(4, "most occurrences of each span")
    repeat_span_words_min: int = _knob(3, "fewest words in a span")
    repeat_span_words_max: int = _knob(8, "most words in a span")
    repeat_char_prob: float = _knob(0.5, "chance a span is random letters instead of lexicon words")
    repeat_gap_max: int = _knob(6, "most filler words between consecutive span occurrences")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_knob_value(f.name, f.type, getattr(self, f.name), "synthetic")
        for name in ("topic_prob", "adjective_prob", "relative_clause_prob", "prep_phrase_prob",
                     "nesting_prob", "easy_fraction", "repeat_char_prob"):
            if getattr(self, name) > 1:
                raise UserError(f"synthetic.{name} is a probability, got {getattr(self, name)!r}")
        if sum(self.family_weights().values()) <= 0:
            raise UserError("synthetic family weights (prose, facts, episodes, repeats) are all 0")
        if self.episodes > 0 and sum(self.episode_weights().values()) <= 0:
            raise UserError("synthetic episode_* kind weights are all 0 but episodes > 0")
        for lo, hi in (("prose_sentences_min", "prose_sentences_max"),
                       ("facts_per_doc_min", "facts_per_doc_max"),
                       ("episode_examples_min", "episode_examples_max"),
                       ("episode_keys_min", "episode_keys_max"),
                       ("modulus_min", "modulus_max"),
                       ("copy_len_min", "copy_len_max"),
                       ("assoc_keys_min", "assoc_keys_max"),
                       ("repeat_spans_min", "repeat_spans_max"),
                       ("repeat_count_min", "repeat_count_max"),
                       ("repeat_span_words_min", "repeat_span_words_max")):
            if getattr(self, lo) < 1:
                raise UserError(f"synthetic.{lo} must be >= 1, got {getattr(self, lo)!r}")
            if getattr(self, lo) > getattr(self, hi):
                raise UserError(f"synthetic.{hi} must be >= {lo} ({getattr(self, lo)}), "
                                f"got {getattr(self, hi)!r}")
        if self.repeat_count_min < 2:
            raise UserError(f"synthetic.repeat_count_min must be >= 2 (a span must recur), "
                            f"got {self.repeat_count_min}")
        for name in ("zipf_exponent", "entity_zipf_exponent"):
            if getattr(self, name) <= 0:
                raise UserError(f"synthetic.{name} must be > 0, got {getattr(self, name)!r}")
        if self.num_topics < 1:
            raise UserError(f"synthetic.num_topics must be >= 1, got {self.num_topics}")
        if self.lexicon_size < 10 * self.num_topics:
            raise UserError(f"synthetic.lexicon_size must be >= 10 * num_topics "
                            f"({10 * self.num_topics}), got {self.lexicon_size}")
        for name in ("num_entities", "num_attributes", "values_per_attribute"):
            if getattr(self, name) < 1:
                raise UserError(f"synthetic.{name} must be >= 1, got {getattr(self, name)}")
        if self.facts_per_doc_max > self.num_entities * self.num_attributes:
            raise UserError(f"synthetic.facts_per_doc_max={self.facts_per_doc_max} exceeds "
                            f"num_entities * num_attributes "
                            f"({self.num_entities * self.num_attributes})")
        if self.modulus_min < 2:
            raise UserError(f"synthetic.modulus_min must be in [2, 10], got {self.modulus_min}")
        if self.modulus_max > 10:
            raise UserError(f"synthetic.modulus_max must be in [2, 10], got {self.modulus_max}")
        if self.assoc_keys_max > 26:
            raise UserError(f"synthetic.assoc_keys_max must be <= 26 (letter keys), "
                            f"got {self.assoc_keys_max}")
        if self.episode_keys_max > 10:
            raise UserError(
                f"synthetic.episode_keys_max must be <= 10, got {self.episode_keys_max}")
        pool_needed = (self.lexicon_size + _NUM_SPEECH_VERBS + self.num_entities
                       + self.num_attributes * (1 + self.values_per_attribute))
        if pool_needed > _POOL_SIZE:
            raise UserError(
                f"synthetic.lexicon_size={self.lexicon_size}: the world needs {pool_needed} "
                f"pseudo-words (lexicon_size + {_NUM_SPEECH_VERBS} + num_entities + "
                f"num_attributes * (1 + values_per_attribute)); at most {_POOL_SIZE} exist")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SyntheticConfig:
        """A config from overrides (e.g. `config.data.synthetic`); unknown keys raise UserError."""
        d = dict(d or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise UserError(f"unknown synthetic option {key!r}; known: {', '.join(known)}")
        return cls(**{key: _coerce(known[key].type, value) for key, value in d.items()})

    def family_weights(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in FAMILIES}

    def episode_weights(self) -> dict[str, float]:
        return {kind: float(getattr(self, f"episode_{kind}")) for kind in EPISODE_KINDS}


def _coerce(kind: str, value: Any) -> Any:
    # JSON / ml_collections round trips turn 1.0 into 1 and back; accept exact conversions.
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_knob_value(name: str, kind: str, value: Any, field: str) -> None:
    """The per-knob part of SyntheticConfig's validation: type and sign of one value."""
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise UserError(f"{field}.{name} must be a non-empty string, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UserError(f"{field}.{name} must be an integer, got {value!r}")
        if value < 0:
            raise UserError(f"{field}.{name} must be >= 0, got {value!r}")
    else:
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise UserError(f"{field}.{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{field}.{name} must be finite and >= 0, got {value!r}")


def default_knobs() -> dict[str, Any]:
    """Every knob of `SyntheticConfig` with its default value, in declaration order (the default
    of `config.data.synthetic`, so `--config.data.synthetic.<knob>=v` can set any of them)."""
    return {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}


def check_knob(name: str, value: Any, field: str = "synthetic") -> Any:
    """One knob's value converted as `from_dict` converts it (1 -> 1.0 for a float knob) and
    checked for type and sign alone (the cross-knob rules need the whole config); UserError
    naming `<field>.<name>`."""
    known = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    if name not in known:
        raise UserError(f"{field}.{name}: unknown synthetic knob; known: {', '.join(known)}")
    value = _coerce(known[name].type, value)
    _check_knob_value(name, known[name].type, value, field)
    return value


def knob_table() -> list[tuple[str, Any, str]]:
    """(name, default, meaning) for every knob, in declaration order (for docs and `--help`)."""
    return [(f.name, f.default, f.metadata["help"]) for f in dataclasses.fields(SyntheticConfig)]


# ----------------------------------------------------------------------------- randomness


def _rng(*parts: Any) -> np.random.Generator:
    """A Generator seeded by SHA-256 of repr(parts): distinct tuples give distinct seeds."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def probe_rng(seed: int) -> np.random.Generator:
    """Randomness for probe episodes; its seed domain ("probe", seed) is never used for data."""
    return _rng("probe", int(seed))


class _Rand:
    """Scalar draws from a numpy Generator, fetched in blocks (a scalar numpy call costs ~0.5us)."""

    __slots__ = ("u",)

    def __init__(self, rng: np.random.Generator, block: int = 256):
        def stream() -> Iterator[float]:
            while True:
                yield from rng.random(block).tolist()

        self.u = stream().__next__

    def below(self, n: int) -> int:
        # u() <= 1 - 2**-53, so int(u() * n) < n for any n < 2**52; hot loops inline it.
        return int(self.u() * n)

    def between(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1)

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.below(len(seq))]

    def index(self, cdf: Sequence[float]) -> int:
        """An index drawn from a cumulative distribution whose last entry is 1.0."""
        i = bisect_right(cdf, self.u())
        return i if i < len(cdf) else len(cdf) - 1

    def distinct(self, n: int, k: int) -> list[int]:
        """k distinct integers from range(n), in random order."""
        if 4 * k <= n:
            seen: dict[int, None] = {}
            while len(seen) < k:
                seen.setdefault(self.below(n))
            return list(seen)
        pool = list(range(n))
        for i in range(k):
            j = i + self.below(n - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def shuffle(self, items: list[Any]) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


# ----------------------------------------------------------------------------- world


def _stem_pool() -> list[str]:
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    one = syllables + [s + k for s in syllables for k in _CODAS]
    two = [a + b for a in syllables for b in syllables]
    return one + two + [w + k for w in two for k in _CODAS]


_POOL_SIZE = len(_stem_pool())


def _zipf_cdf(n: int, exponent: float) -> list[float]:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0
    return cdf.tolist()


@dataclasses.dataclass(frozen=True, eq=False)
class World:
    """The fixed part of the language, shared by every split and by probes. Treat as read-only.

    Word lists are in frequency-rank order (index 0 is the most frequent). Content words of a
    part of speech belong to topic `index % num_topics`.
    """

    config: SyntheticConfig
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjectives: tuple[str, ...]
    speech_verbs: tuple[str, ...]  # verbs that take a quoted sentence as object
    prepositions: tuple[str, ...]
    det_singular: str
    det_plural: str
    relativizer: str
    entities: tuple[str, ...]  # capitalised names, in popularity order
    attributes: tuple[str, ...]
    attribute_values: tuple[tuple[str, ...], ...]  # values each attribute can take
    facts: tuple[tuple[str, str, str], ...]  # (entity, attribute, value), every pair once
    fact_table: dict[tuple[str, str], str]
    lexicon: tuple[str, ...]  # all content stems: nouns + verbs + adjectives
    # Sampling tables (cumulative distributions ending at 1.0).
    noun_cdf: list[float] = dataclasses.field(repr=False)
    verb_cdf: list[float] = dataclasses.field(repr=False)
    adjective_cdf: list[float] = dataclasses.field(repr=False)
    topic_noun_cdf: list[list[float]] = dataclasses.field(repr=False)
    topic_verb_cdf: list[list[float]] = dataclasses.field(repr=False)
    topic_adjective_cdf: list[list[float]] = dataclasses.field(repr=False)
    entity_cdf: list[float] = dataclasses.field(repr=False)


def noun_form(stem: str, plural: bool) -> str:
    """Surface form of a noun stem: plural adds "s"."""
    return stem + "s" if plural else stem


def verb_form(stem: str, plural: bool) -> str:
    """Surface form of a verb stem agreeing with a subject: singular adds "s"."""
    return stem if plural else stem + "s"


@functools.lru_cache(maxsize=8)
def build_world(config: SyntheticConfig) -> World:
    """The World of (version, seed) and the world knobs; cached, so treat it as read-only."""
    c = config
    rng = _rng("world", c.version, int(c.seed))
    pool = _stem_pool()
    syllables = [w for w in pool if len(w) == 2]
    # Function words are the shortest: plain CV syllables.
    func = [syllables[i] for i in rng.permutation(len(syllables))[: 3 + _NUM_PREPOSITIONS]]
    det_sg, det_pl, rel, preps = func[0], func[1], func[2], tuple(func[3:])
    rest = [w for w in pool if w not in set(func)]
    n_attr_words = c.num_attributes * (1 + c.values_per_attribute)
    need = c.lexicon_size + _NUM_SPEECH_VERBS + c.num_entities + n_attr_words
    chosen = [rest[i] for i in rng.choice(len(rest), size=need, replace=False)]
    content, chosen = chosen[: c.lexicon_size], chosen[c.lexicon_size:]
    speech, chosen = tuple(chosen[:_NUM_SPEECH_VERBS]), chosen[_NUM_SPEECH_VERBS:]
    entities, chosen = chosen[: c.num_entities], chosen[c.num_entities:]
    attributes = tuple(chosen[: c.num_attributes])
    chosen = chosen[c.num_attributes:]
    values = tuple(tuple(chosen[i * c.values_per_attribute:(i + 1) * c.values_per_attribute])
                   for i in range(c.num_attributes))

    n_noun = round(_POS_SHARES[0] * c.lexicon_size)
    n_verb = round(_POS_SHARES[1] * c.lexicon_size)

    def by_rank(words: list[str]) -> tuple[str, ...]:
        # Zipf's law of abbreviation: frequent words are short; ties broken at random.
        keys = [(len(w), t, w) for w, t in zip(words, rng.random(len(words)).tolist(), strict=True)]
        return tuple(w for _, _, w in sorted(keys))

    nouns = by_rank(content[:n_noun])
    verbs = by_rank(content[n_noun:n_noun + n_verb])
    adjectives = by_rank(content[n_noun + n_verb:])
    entity_names = tuple(e.capitalize() for e in by_rank(entities))

    value_idx = rng.integers(0, c.values_per_attribute, size=(c.num_entities, c.num_attributes))
    facts = tuple((e, a, values[j][value_idx[i, j]])
                  for i, e in enumerate(entity_names) for j, a in enumerate(attributes))
    T = c.num_topics

    def topic_cdfs(n: int) -> list[list[float]]:
        return [_zipf_cdf(len(range(t, n, T)), c.zipf_exponent) for t in range(T)]

    return World(
        config=c, nouns=nouns, verbs=verbs, adjectives=adjectives, speech_verbs=speech,
        prepositions=preps, det_singular=det_sg, det_plural=det_pl, relativizer=rel,
        entities=entity_names, attributes=attributes, attribute_values=values, facts=facts,
        fact_table={(e, a): v for e, a, v in facts}, lexicon=nouns + verbs + adjectives,
        noun_cdf=_zipf_cdf(len(nouns), c.zipf_exponent),
        verb_cdf=_zipf_cdf(len(verbs), c.zipf_exponent),
        adjective_cdf=_zipf_cdf(len(adjectives), c.zipf_exponent),
        topic_noun_cdf=topic_cdfs(len(nouns)), topic_verb_cdf=topic_cdfs(len(verbs)),
        topic_adjective_cdf=topic_cdfs(len(adjectives)),
        entity_cdf=_zipf_cdf(c.num_entities, c.entity_zipf_exponent),
    )


# ----------------------------------------------------------------------------- prose

# Placeholder tokens joined with spaces, then glued onto their neighbours.
_OPEN_PAREN, _CLOSE_PAREN = "(", ")"
_QUOTES = (("\x01", "\x02"), ("\x03", "\x04"))  # (open, close) of '"' / "'" by depth parity
_GLUE = (("( ", "("), (" )", ")"), (" .", "."), ("\x01 ", '"'), (" \x02", '"'),
         ("\x03 ", "'"), (" \x04", "'"))


class ProseTrace:
    """Collects the random decisions of one prose document (the `trace` of `_prose`), for
    `llmjax.data.entropy`."""

    def __init__(self) -> None:
        self.visible = 0.0  # log-probability of the visible decisions
        self.words: list[tuple[int, int]] = []
        self.derivations = 1

    def uniform(self, n: int) -> None:
        self.visible -= math.log(n)

    def coin(self, p: float, outcome: bool) -> None:
        self.visible += math.log(p if outcome else 1.0 - p)

    def word(self, pos: int, i: int) -> None:
        self.words.append((pos, i))

    def ambiguous(self, n: int) -> None:
        self.derivations *= n


def _prose(r: _Rand, w: World, trace: Any = None) -> str:
    """One prose document. `trace` (for `llmjax.data.entropy`) receives every random decision:
    trace.uniform(n) for a uniform draw among n, trace.coin(p, outcome) for a visible yes/no,
    trace.word(pos, i) for content word i of part of speech pos (0 noun, 1 verb, 2 adjective;
    whether it came from the topic is latent) and trace.ambiguous(n) when n derivations give
    the same text (a parenthetical after a relative clause attaches to either noun phrase)."""
    c = w.config
    u, T = r.u, c.num_topics
    topic = r.below(T)
    topic_p, adj_p, rc_p = c.topic_prob, c.adjective_prob, c.relative_clause_prob
    pp_p, nest_p, max_depth = c.prep_phrase_prob, c.nesting_prob, c.max_nesting
    nouns, verbs, adjs = w.nouns, w.verbs, w.adjectives
    dets = (w.det_singular, w.det_plural)
    tn, tv, ta = w.topic_noun_cdf[topic], w.topic_verb_cdf[topic], w.topic_adjective_cdf[topic]
    out: list[str] = []
    emit = out.append
    if trace is None:
        def coin(p: float) -> bool:
            return u() < p

        def below(n: int) -> int:
            return int(u() * n)
    else:
        def coin(p: float) -> bool:
            x = u() < p
            trace.coin(p, x)
            return x

        def below(n: int) -> int:
            trace.uniform(n)
            return int(u() * n)

    def content(pos: int, words: tuple[str, ...], cdf: list[float], tcdf: list[float]) -> str:
        i = topic + T * r.index(tcdf) if u() < topic_p else r.index(cdf)
        if trace is not None:
            trace.word(pos, i)
        return words[i]

    def noun_phrase(plural: int, depth: int, allow_rc: bool) -> bool:
        """Emits a noun phrase; True when it ends with a parenthetical."""
        emit(dets[plural])
        if coin(adj_p):
            emit(content(2, adjs, w.adjective_cdf, ta))
            if coin(adj_p):
                emit(content(2, adjs, w.adjective_cdf, ta))
        stem = content(0, nouns, w.noun_cdf, tn)
        emit(stem + "s" if plural else stem)
        inner_paren = None
        if allow_rc and coin(rc_p):
            # Subject relative clause: its verb agrees with the head noun, across its own object.
            emit(w.relativizer)
            stem = content(1, verbs, w.verb_cdf, tv)
            emit(stem if plural else stem + "s")
            inner_paren = noun_phrase(below(2), depth, False)
        paren = depth < max_depth and coin(nest_p)
        if paren:
            emit(_OPEN_PAREN)
            sentence(depth + 1)
            emit(_CLOSE_PAREN)
        if trace is not None and inner_paren is not None and inner_paren != paren:
            trace.ambiguous(2)  # one parenthetical after the clause: the inner or the head NP's
        return paren

    def sentence(depth: int) -> None:
        plural = below(2)
        noun_phrase(plural, depth, True)
        if depth < max_depth and coin(nest_p):
            stem = w.speech_verbs[below(len(w.speech_verbs))]
            emit(stem if plural else stem + "s")
            open_, close = _QUOTES[depth % 2]
            emit(open_)
            sentence(depth + 1)
            emit(close)
            return
        stem = content(1, verbs, w.verb_cdf, tv)
        emit(stem if plural else stem + "s")
        noun_phrase(below(2), depth, True)
        if coin(pp_p):
            emit(w.prepositions[below(len(w.prepositions))])
            noun_phrase(below(2), depth, False)

    n_sentences = c.prose_sentences_max - c.prose_sentences_min + 1
    for _ in range(c.prose_sentences_min + below(n_sentences)):
        sentence(0)
        emit(".")
    text = " ".join(out)
    for old, new in _GLUE:
        text = text.replace(old, new)
    return text


# ----------------------------------------------------------------------------- facts


# Chance that the next fact of a facts document starts a new entity (drawn by popularity).
FACTS_NEW_ENTITY_PROB = 0.3


def render_fact(entity: str, attribute: str, value: str) -> str:
    """The training sentence of one fact: "Entity attribute is value."."""
    return f"{entity} {attribute} is {value}."


def fact_prompt(entity: str, attribute: str) -> str:
    """Text whose continuation is " " + value + "." (see `render_fact`)."""
    return f"{entity} {attribute} is"


def _facts(r: _Rand, w: World, trace: list[tuple[int, int]] | None = None) -> str:
    """One facts document; `trace` (for `llmjax.data.entropy`) receives (entity index, attribute
    index) of every fact."""
    c = w.config
    n_attr = len(w.attributes)
    parts: list[str] = []
    entity, used = -1, set()
    for _ in range(r.between(c.facts_per_doc_min, c.facts_per_doc_max)):
        # Documents read like short biographies: a few facts per entity, then another entity.
        if entity < 0 or len(used) == n_attr or r.u() < FACTS_NEW_ENTITY_PROB:
            entity, used = r.index(w.entity_cdf), set()
        a = r.below(n_attr)
        while a in used:
            a = r.below(n_attr)
        used.add(a)
        if trace is not None:
            trace.append((entity, a))
        e, attr = w.entities[entity], w.attributes[a]
        parts.append(render_fact(e, attr, w.fact_table[(e, attr)]))
    return " ".join(parts)


# ----------------------------------------------------------------------------- episodes


@dataclasses.dataclass(frozen=True)
class EpisodeFormat:
    """Delimiters of one episode kind: header + [context + context_sep] + examples joined by ex_sep,
    each example rendered query + qa_sep + answer."""

    header: str
    qa_sep: str
    ex_sep: str = " "
    context_sep: str = " | "


EPISODE_FORMATS: dict[str, EpisodeFormat] = {
    "translation": EpisodeFormat("tr: ", ">"),
    "recall": EpisodeFormat("kv: ", ">"),  # context: "key:value key:value"
    "modular": EpisodeFormat("md: ", "="),  # query: "a+b"
    "copy": EpisodeFormat("cp: ", ">"),
    "reverse": EpisodeFormat("rv: ", ">"),
    "sequence": EpisodeFormat("sq: ", ">"),
    # Zoology's multi-query associative recall: a store of letter-digit pairs, then queries in
    # the same form, "ar: a3 f7 q1 | f7 a3"; the value follows its key directly (qa_sep "").
    "assoc": EpisodeFormat("ar: ", ""),
}


@dataclasses.dataclass(frozen=True)
class Episode:
    """One in-context task instance.

    rule: hashable, canonical description of the document's rule (equal rules <=> equal behaviour):
      translation / recall / assoc: tuple of (key, value) pairs, sorted;  modular: a symbol
      string where the symbol at index i stands for i (mod len), the smallest of the labelings
      that give the same addition table (they differ by an automorphism i -> u*i);  sequence: the
      successor map as sorted (symbol, next symbol) pairs;  copy / reverse: the kind name (no
      parameters).
    examples: (query, answer) pairs in document order. context: text before the examples (the
    key-value store of a recall episode; "" otherwise).
    """

    kind: str
    rule: Any
    examples: list[tuple[str, str]]
    context: str = ""
    easy: bool = False


def render_example(kind: str, query: str, answer: str) -> str:
    return query + EPISODE_FORMATS[kind].qa_sep + answer


def render_episode(ep: Episode) -> str:
    """The exact training text of an episode document."""
    fmt = EPISODE_FORMATS[ep.kind]
    body = fmt.ex_sep.join(query + fmt.qa_sep + answer for query, answer in ep.examples)
    return fmt.header + (ep.context + fmt.context_sep if ep.context else "") + body


def render_prompt(ep: Episode, index: int) -> tuple[str, str]:
    """(prompt, answer) for example `index`: the episode text up to and including its qa_sep, so
    examples[:index] are the shots; the answer is what a model should continue with."""
    if not 0 <= index < len(ep.examples):
        raise ValueError(f"index {index} outside the episode's {len(ep.examples)} examples")
    fmt = EPISODE_FORMATS[ep.kind]
    prefix = dataclasses.replace(ep, examples=ep.examples[:index])
    text = render_episode(prefix) if index else fmt.header + (
        ep.context + fmt.context_sep if ep.context else "")
    sep = fmt.ex_sep if index else ""
    query, answer = ep.examples[index]
    return text + sep + query + fmt.qa_sep, answer


def rule_is_heldout(kind: str, rule: Any) -> bool:
    """Which half of the hard-mode rule space a rule belongs to: True = reserved for probes."""
    return hashlib.blake2b(repr((kind, rule)).encode(), digest_size=8).digest()[0] & 1 == 1


def _canonical_cyclic(symbols: str) -> str:
    """Smallest relabeling of Z_m with the same addition table (images under i -> u*i, u a unit)."""
    m = len(symbols)
    return min("".join(symbols[u * i % m] for i in range(m))
               for u in range(1, m) if math.gcd(u, m) == 1)


def _keyed_examples(r: _Rand, keys: list[str], values: list[str], n: int) -> list[tuple[str, str]]:
    # Every key at least once, the rest drawn with replacement: bursty, each pair recurs.
    order = list(range(len(keys))) + [r.below(len(keys)) for _ in range(n - len(keys))]
    r.shuffle(order)
    return [(keys[i], values[i]) for i in order]


def _draw_episode(kind: str, r: _Rand, w: World, n: int, easy: bool) -> Episode:
    c = w.config
    if kind in ("translation", "recall"):
        k = 2 if easy else r.between(c.episode_keys_min, c.episode_keys_max)
        k = min(k, n)
        lex = w.lexicon
        if kind == "translation":
            idx = r.distinct(len(lex), 2 * k)
            keys, values = [lex[i] for i in idx[:k]], [lex[i] for i in idx[k:]]
            return Episode(kind, tuple(sorted(zip(keys, values, strict=True))),
                           _keyed_examples(r, keys, values, n), easy=easy)
        keys = [lex[i] for i in r.distinct(len(lex), k)]
        values = [_DIGITS[r.below(10)] for _ in range(k)]
        store = list(range(k))
        r.shuffle(store)
        context = " ".join(f"{keys[i]}:{values[i]}" for i in store)
        examples = [(keys[i], values[i]) for i in (r.below(k) for _ in range(n))]
        return Episode(kind, tuple(sorted(zip(keys, values, strict=True))), examples, context, easy)
    if kind == "assoc":
        k = 2 if easy else r.between(c.assoc_keys_min, c.assoc_keys_max)
        keys = [_LETTERS[i] for i in r.distinct(26, k)]
        values = [_DIGITS[r.below(10)] for _ in range(k)]
        store = list(range(k))
        r.shuffle(store)
        context = " ".join(keys[i] + values[i] for i in store)
        examples = [(keys[i], values[i]) for i in (r.below(k) for _ in range(n))]
        return Episode(kind, tuple(sorted(zip(keys, values, strict=True))), examples, context, easy)
    u = r.u
    if kind == "modular":
        m = r.between(c.modulus_min, c.modulus_max)
        # Easy: digits in natural order (plain addition mod m); hard: m letters in random order.
        symbols = _DIGITS[:m] if easy else "".join(_LETTERS[i] for i in r.distinct(26, m))
        examples = []
        for _ in range(n):
            a, b = int(u() * m), int(u() * m)
            examples.append((f"{symbols[a]}+{symbols[b]}", symbols[(a + b) % m]))
        return Episode(kind, _canonical_cyclic(symbols), examples, easy=easy)
    if kind in ("copy", "reverse"):
        lo = c.copy_len_min
        span = 1 if easy else c.copy_len_max - lo + 1
        examples = []
        for _ in range(n):
            s = _letters(u, lo + int(u() * span))
            examples.append((s, s if kind == "copy" else s[::-1]))
        return Episode(kind, kind, examples, easy=easy)
    if kind == "sequence":
        if easy:
            symbols = _DIGITS
        else:
            m = max(3, r.between(c.modulus_min, c.modulus_max))
            symbols = "".join(_LETTERS[i] for i in r.distinct(26, m))
        m = len(symbols)
        step = r.between(1, m - 1)
        examples = []
        for _ in range(n):
            start = r.below(m)
            terms = "".join(symbols[(start + i * step) % m] for i in range(5))
            examples.append((terms[:3], terms[3:]))
        successor = tuple(sorted((symbols[i], symbols[(i + step) % m]) for i in range(m)))
        return Episode(kind, successor, examples, easy=easy)
    raise UserError(f"unknown episode kind {kind!r}; choose from {', '.join(EPISODE_KINDS)}")


def _episode(kind: str, r: _Rand, w: World, n: int, easy: bool, heldout: bool) -> Episode:
    # Hard rules come from one half of the rule space only, so probes never meet a trained rule.
    for _ in range(200):
        ep = _draw_episode(kind, r, w, n, easy)
        if easy or kind in PARAMETERLESS_KINDS or rule_is_heldout(kind, ep.rule) == heldout:
            return ep
    raise RuntimeError(f"could not draw a {'held-out' if heldout else 'training'} {kind} rule; "
                       "the rule space is too small (widen modulus_* or episode_keys_*)")


def sample_episode(kind: str, rng: np.random.Generator, world: World, num_examples: int, *,
                   easy: bool = False, heldout: bool = True) -> Episode:
    """One episode of `kind` with `num_examples` (query, answer) pairs.

    heldout=True (for probes) draws hard rules only from the half never used in training;
    training documents use heldout=False. easy=True gives the curriculum's easy variant, whose
    rules (2 keys, digits in natural order) come from tiny spaces shared with training, as do
    copy / reverse, which have no rule parameters. World knobs come from `world.config`.
    """
    if kind not in EPISODE_KINDS:
        raise UserError(f"unknown episode kind {kind!r}; choose from {', '.join(EPISODE_KINDS)}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    return _episode(kind, _Rand(rng, 64), world, int(num_examples), easy, heldout)


def _episode_doc(r: _Rand, w: World, kind_cdf: list[float]) -> tuple[str, Episode]:
    c = w.config
    kind = EPISODE_KINDS[r.index(kind_cdf)]
    easy = r.u() < c.easy_fraction
    n = r.between(c.episode_examples_min, c.episode_examples_max)
    ep = _episode(kind, r, w, n, easy, heldout=False)
    return render_episode(ep), ep


# ----------------------------------------------------------------------------- repeats


@dataclasses.dataclass(frozen=True)
class Repeats:
    """A repeats document and the spans that recur in it (each at least repeat_count_min times)."""

    text: str
    spans: list[str]


def _letters(u: Any, n: int) -> str:
    """n random lowercase letters; `u` is a `_Rand.u`."""
    return "".join([_LETTERS[int(u() * 26)] for _ in range(n)])


def _repeats(r: _Rand, w: World) -> Repeats:
    c = w.config
    lex, u = w.lexicon, r.u
    n_lex = len(lex)
    spans: list[str] = []
    items: list[tuple[float, int]] = []
    for s in range(r.between(c.repeat_spans_min, c.repeat_spans_max)):
        length = r.between(c.repeat_span_words_min, c.repeat_span_words_max)
        if r.u() < c.repeat_char_prob:
            span = " ".join([_letters(u, 2 + int(u() * 4)) for _ in range(length)])
        else:
            span = " ".join([lex[int(u() * n_lex)] for _ in range(length)])
        spans.append(span)
        for k in range(r.between(c.repeat_count_min, c.repeat_count_max)):
            # Occurrences of a span stay near each other (jittered order) to fit in one context.
            items.append((s * 2.0 + k * 0.7 + 2.5 * r.u(), s))
    items.sort()
    parts: list[str] = []
    gaps = c.repeat_gap_max + 1
    for _, s in items:
        parts.extend([lex[int(u() * n_lex)] for _ in range(int(u() * gaps))])
        parts.append(spans[s])
    parts.extend([lex[int(u() * n_lex)] for _ in range(int(u() * gaps))])
    return Repeats(" ".join(parts), spans)


def sample_repeats(rng: np.random.Generator, world: World) -> Repeats:
    return _repeats(_Rand(rng), world)


# ----------------------------------------------------------------------------- documents


@dataclasses.dataclass(frozen=True)
class Record:
    """A generated document with its family and, for the episodes family, its Episode."""

    family: str
    text: str
    episode: Episode | None = None


def _record(family: str, r: _Rand, w: World, kind_cdf: list[float]) -> Record:
    if family == "prose":
        return Record(family, _prose(r, w))
    if family == "facts":
        return Record(family, _facts(r, w))
    if family == "episodes":
        text, ep = _episode_doc(r, w, kind_cdf)
        return Record(family, text, ep)
    if family == "repeats":
        return Record(family, _repeats(r, w).text)
    raise UserError(f"unknown synthetic family {family!r}; choose from {', '.join(FAMILIES)}")


def _traced(family: str, r: _Rand, w: World, kind_cdf: list[float]) -> tuple[str, str, Any]:
    """(family, text, trace) with the random stream consumed exactly as `_record` does."""
    if family == "prose":
        trace: Any = ProseTrace()
        return family, _prose(r, w, trace), trace
    if family == "facts":
        trace = []
        return family, _facts(r, w, trace), trace
    return family, _record(family, r, w, kind_cdf).text, None


def _kind_cdf(config: SyntheticConfig) -> list[float]:
    weights = np.array(list(config.episode_weights().values()))
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0
    return cdf.tolist()


def generate_document(family: str, rng: np.random.Generator, world: World,
                      config: SyntheticConfig | None = None) -> str:
    """One training document of `family` (episodes use heldout=False rules)."""
    if config is not None and config != world.config:
        world = build_world(config)
    return _record(family, _Rand(rng), world, _kind_cdf(world.config)).text


def family_counts(weights: Sequence[float], n: int) -> list[int]:
    """Exact document counts per family (largest remainder), each positive weight getting >= 1
    document when n allows, so every split holds every family in its configured share."""
    w = np.asarray(weights, dtype=np.float64)
    ideal = w / w.sum() * n
    counts = np.floor(ideal).astype(int)
    for i in np.argsort(-(ideal - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    positive = np.flatnonzero(w > 0)
    if n >= len(positive):
        for i in positive:
            while counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
    return counts.tolist()


def generate_records(config: SyntheticConfig, split: str) -> Iterator[Record]:
    """Every document of `split` with its family (and Episode); a pure function of (config, split).

    Documents come in chunks of 1024, each from its own seed, with exact family shares per chunk
    (`family_counts`) in a seeded random order. So memory stays bounded, and the split is
    prefix-stable: a larger num_*_docs only appends documents (the last partial chunk aside).
    """
    return _stream(config, split, _record)


def traced_records(config: SyntheticConfig, split: str) -> Iterator[tuple[str, str, Any]]:
    """The documents of `generate_records` as (family, text, trace): the prose and facts
    generators' record of their random decisions (for `llmjax.data.entropy`), None otherwise."""
    return _stream(config, split, _traced)


def _stream(config: SyntheticConfig, split: str, make: Any) -> Iterator[Any]:
    if split not in SPLITS:
        raise UserError(f"unknown synthetic split {split!r}; choose from {', '.join(SPLITS)}")
    n = config.num_train_docs if split == "train" else config.num_validation_docs
    world = build_world(config)
    weights = list(config.family_weights().values())
    kind_cdf = _kind_cdf(config)
    for chunk, start in enumerate(range(0, n, _CHUNK_DOCS)):
        rng = _rng("data", config.version, int(config.seed), split, chunk)
        order = np.repeat(np.arange(len(FAMILIES)), family_counts(weights, min(_CHUNK_DOCS,
                                                                             n - start)))
        rng.shuffle(order)
        r = _Rand(rng, 16384)
        for f in order.tolist():
            yield make(FAMILIES[f], r, world, kind_cdf)


def generate_documents(config: SyntheticConfig, split: str) -> Iterator[str]:
    """Yields the documents of `split` ('train' | 'validation'); a pure function of (config, split).

    Train and validation use disjoint seeds but the same World.
    """
    for record in generate_records(config, split):
        yield record.text
