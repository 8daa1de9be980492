"""The embedded sentiment task: short reviews in the synthetic language, labelled by polarity.

Offline and exact: a pure function of (World, split, n, seed). The language is the pretraining
corpus's (`llmjax.data.synthetic`), so a model pretrained on it knows the words but not what
they mean for the label:

- **Polarity lexicon.** Every adjective of the World has a polarity fixed by its *topic*
  (adjective i belongs to topic i % num_topics, as in the corpus; topics below num_topics / 2
  are positive, the rest negative). In the prose a document's topic biases which words occur
  together, so polarity is predictable from distributional statistics a pretrained model may
  have learned, and from nothing else: the pseudo-words carry no other sign of it.
- **Held-out words.** A quarter of the adjectives (chosen by a hash of the word) never occur in
  training reviews. Validation reviews use every adjective; `heldout` marks the ones with at
  least one held-out word. Accuracy there measures what pretraining transfers: a model that
  only memorised the training words is at chance on them.
- **Negation and its scope.** A negation word (a pseudo-word the corpus never uses) before an
  adjective flips that adjective's polarity, and only that one: "pu NEG adj1 adj2 noun verb"
  negates adj1, not adj2.

A review is 1-3 clauses "det [NEG] adj [adj] noun verb." (singular or plural, agreeing as the
corpus does). Its label is 1 (positive) when the signed polarities of its adjectives sum above
0, else 0; clauses are drawn until the sum is non-zero and matches a label drawn first, so the
classes are balanced.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np

from llmjax.data import synthetic

HELDOUT_FRACTION = 0.25
MAX_CLAUSES = 3
NEGATION_PROB = 0.3
SECOND_ADJECTIVE_PROB = 0.3


@dataclasses.dataclass(frozen=True)
class Lexicon:
    """The task's words: adjectives with their polarity (+1 / -1), which are held out, and the
    negation word."""

    adjectives: tuple[str, ...]
    polarity: tuple[int, ...]
    heldout: tuple[bool, ...]
    negation: str


def _hash01(*parts: object) -> float:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0 ** 64


@functools.lru_cache(maxsize=4)
def lexicon(world: synthetic.World) -> Lexicon:
    topics = world.config.num_topics
    adjectives = world.adjectives
    polarity = tuple(1 if (i % topics) < max(topics // 2, 1) else -1
                     for i in range(len(adjectives)))
    heldout = tuple(_hash01("sentiment-heldout", a) < HELDOUT_FRACTION for a in adjectives)
    used = set(world.lexicon) | set(world.speech_verbs) | set(world.prepositions) | {
        world.det_singular, world.det_plural, world.relativizer}
    used |= {e.lower() for e in world.entities} | set(world.attributes)
    used |= {v for values in world.attribute_values for v in values}
    negation = next(w for w in synthetic._stem_pool() if len(w) == 3 and w not in used)
    return Lexicon(adjectives, polarity, heldout, negation)


@dataclasses.dataclass(frozen=True)
class Review:
    text: str
    label: int
    heldout: bool  # contains a held-out adjective (validation only)


def _clause(rng: np.random.Generator, world: synthetic.World, lex: Lexicon,
            pool: np.ndarray) -> tuple[str, int, bool]:
    plural = bool(rng.random() < 0.5)
    words = [world.det_plural if plural else world.det_singular]
    score, heldout = 0, False
    n_adj = 2 if rng.random() < SECOND_ADJECTIVE_PROB else 1
    for _ in range(n_adj):
        i = int(pool[rng.integers(len(pool))])
        sign = lex.polarity[i]
        if rng.random() < NEGATION_PROB:
            words.append(lex.negation)
            sign = -sign
        words.append(lex.adjectives[i])
        score += sign
        heldout |= lex.heldout[i]
    noun = world.nouns[int(rng.integers(len(world.nouns)))]
    verb = world.verbs[int(rng.integers(len(world.verbs)))]
    words += [synthetic.noun_form(noun, plural), synthetic.verb_form(verb, plural)]
    return " ".join(words) + ".", score, heldout


def reviews(world: synthetic.World, split: str, n: int, seed: int = 0) -> list[Review]:
    """`n` reviews of `split` ('train': held-out adjectives never appear; 'validation': all)."""
    if split not in synthetic.SPLITS:
        raise ValueError(f"unknown split {split!r}")
    lex = lexicon(world)
    pool = np.array([i for i, h in enumerate(lex.heldout) if split == "validation" or not h])
    rng = synthetic._rng("sentiment", split, int(seed))
    out = []
    for _ in range(n):
        label = int(rng.random() < 0.5)
        while True:
            clauses = [_clause(rng, world, lex, pool)
                       for _ in range(int(rng.integers(1, MAX_CLAUSES + 1)))]
            score = sum(c[1] for c in clauses)
            if score != 0 and (score > 0) == bool(label):
                break
        out.append(Review(" ".join(c[0] for c in clauses), label, any(c[2] for c in clauses)))
    return out
