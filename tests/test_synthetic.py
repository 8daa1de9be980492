"""The synthetic corpus: determinism, family mixture, and the structure each family promises.

Checks read the generated *text* with parsers written here from the language spec in the module
docstring (stems without "s", plural noun = stem+"s", singular verb = stem+"s", '"' quotes at
even depth and "'" at odd depth), so they do not trust the generator's own bookkeeping.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from llmjax.data import synthetic as S
from llmjax.errors import UserError

HEADERS = {"tr: ": "translation", "kv: ": "recall", "md: ": "modular", "cp: ": "copy",
           "rv: ": "reverse", "sq: ": "sequence", "ar: ": "assoc"}
FACT = r"[A-Z][a-z]+ [a-z]+ is [a-z]+\."
FACTS_DOC = re.compile(rf"{FACT}(?: {FACT})*")
FACT_PARTS = re.compile(r"([A-Z][a-z]+) ([a-z]+) is ([a-z]+)\.")


def small(**overrides) -> S.SyntheticConfig:
    return S.SyntheticConfig(**{"num_train_docs": 400, "num_validation_docs": 100, **overrides})


@pytest.fixture(scope="module")
def cfg() -> S.SyntheticConfig:
    return S.SyntheticConfig(num_train_docs=2000, num_validation_docs=200)


@pytest.fixture(scope="module")
def world(cfg) -> S.World:
    return S.build_world(cfg)


@pytest.fixture(scope="module")
def train(cfg) -> list[S.Record]:
    return list(S.generate_records(cfg, "train"))


@pytest.fixture(scope="module")
def validation(cfg) -> list[S.Record]:
    return list(S.generate_records(cfg, "validation"))


# ----------------------------------------------------------------------------- prose parser


class ParseError(Exception):
    pass


class ProseParser:
    """Recursive-descent recogniser of the prose grammar that also checks number agreement.

    S -> NP[n] (V[n] NP (prep NP)? | Vsay[n] quote S quote);  NP[n] -> det[n] adj* N[n]
    (rel V[n] NP)? ("(" S ")")?.  Records the deepest nesting seen.
    """

    def __init__(self, world: S.World):
        self.det = {world.det_singular: 0, world.det_plural: 1}
        self.nouns = {**{s: 0 for s in world.nouns}, **{s + "s": 1 for s in world.nouns}}
        self.verbs = {**{s + "s": 0 for s in world.verbs}, **{s: 1 for s in world.verbs}}
        self.say = {**{s + "s": 0 for s in world.speech_verbs},
                    **{s: 1 for s in world.speech_verbs}}
        self.adjs = set(world.adjectives)
        self.preps = set(world.prepositions)
        self.rel = world.relativizer
        classes = [set(self.det), set(self.nouns), set(self.verbs), set(self.say), self.adjs,
                   self.preps, {self.rel}]
        assert sum(map(len, classes)) == len(set().union(*classes)), "word classes overlap"
        self.max_depth = 0

    def parse(self, text: str) -> int:
        if not re.fullmatch(r"[a-z ().\"']+", text):
            raise ParseError("unexpected characters")
        self.toks, self.i = re.findall(r"[a-z]+|[().\"']", text), 0
        sentences = 0
        while self.i < len(self.toks):
            self.sentence(0)
            self.expect(".")
            sentences += 1
        return sentences

    def next(self) -> str:
        if self.i >= len(self.toks):
            raise ParseError("unexpected end")
        self.i += 1
        return self.toks[self.i - 1]

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise ParseError(f"expected {tok!r}, got {got!r}")

    def agree(self, table: dict[str, int], tok: str, number: int, what: str) -> None:
        if tok not in table:
            raise ParseError(f"expected a {what}, got {tok!r}")
        if table[tok] != number:
            raise ParseError(f"agreement: {what} {tok!r} is not number {number}")

    def noun_phrase(self, depth: int, allow_rc: bool) -> int:
        tok = self.next()
        if tok not in self.det:
            raise ParseError(f"expected a determiner, got {tok!r}")
        number = self.det[tok]
        while self.peek() in self.adjs:
            self.next()
        self.agree(self.nouns, self.next(), number, "noun")
        if allow_rc and self.peek() == self.rel:
            self.next()
            self.agree(self.verbs, self.next(), number, "relative-clause verb")
            self.noun_phrase(depth, allow_rc=False)
        if self.peek() == "(":
            self.next()
            self.sentence(depth + 1)
            self.expect(")")
        return number

    def sentence(self, depth: int) -> None:
        self.max_depth = max(self.max_depth, depth)
        number = self.noun_phrase(depth, allow_rc=True)
        verb = self.next()
        if verb in self.say:
            self.agree(self.say, verb, number, "speech verb")
            quote = '"' if depth % 2 == 0 else "'"
            self.expect(quote)
            self.sentence(depth + 1)
            self.expect(quote)
            return
        self.agree(self.verbs, verb, number, "verb")
        self.noun_phrase(depth, allow_rc=True)
        if self.peek() in self.preps:
            self.next()
            self.noun_phrase(depth, allow_rc=False)


def balanced(text: str) -> bool:
    stack: list[str] = []
    for ch in text:
        if ch == "(":
            stack.append(ch)
        elif ch == ")":
            if not stack or stack.pop() != "(":
                return False
        elif ch in "\"'":
            if stack and stack[-1] == ch:
                stack.pop()
            else:
                stack.append(ch)
    return not stack


def classify(text: str, parser: ProseParser) -> str:
    """The family a document's text belongs to, judged from the text alone."""
    if text[:4] in HEADERS:
        return "episodes"
    if FACTS_DOC.fullmatch(text):
        return "facts"
    try:
        parser.parse(text)
        return "prose"
    except ParseError:
        return "repeats"


# ----------------------------------------------------------------------------- episode parsers


def pairs(body: str, sep: str) -> list[tuple[str, str]]:
    out = []
    for item in body.split(" "):
        query, answer = item.split(sep)
        out.append((query, answer))
    return out


def parse_episode(text: str) -> tuple[str, list[tuple[str, str]], str]:
    """(kind, examples, context) from an episode document's text."""
    kind = HEADERS[text[:4]]
    body, context = text[4:], ""
    if kind == "recall":
        context, body = body.split(" | ")
    return kind, pairs(body, "=" if kind == "modular" else ">"), context


# ----------------------------------------------------------------------------- config


def test_defaults_are_valid_hashable_and_json_round_trip():
    c = S.SyntheticConfig()
    assert hash(c) == hash(S.SyntheticConfig())
    d = json.loads(json.dumps(dataclasses.asdict(c)))
    assert S.SyntheticConfig.from_dict(d) == c
    assert S.SyntheticConfig.from_dict({"prose": 1, "num_train_docs": 10.0}).prose == 1.0
    names = [f.name for f in dataclasses.fields(S.SyntheticConfig)]
    table = S.knob_table()
    assert [row[0] for row in table] == names and all(row[2] for row in table)
    for name in ("prose", "facts", "episodes", "repeats", "version", "seed"):
        assert name in names


@pytest.mark.parametrize("overrides, needle", [
    ({"bogus": 1}, "bogus"),
    ({"prose": -0.5}, "prose"),
    ({"prose": 0, "facts": 0, "episodes": 0, "repeats": 0}, "all 0"),
    ({"episode_translation": 0, "episode_recall": 0, "episode_modular": 0, "episode_copy": 0,
      "episode_reverse": 0, "episode_sequence": 0}, "episode_"),
    ({"facts": float("nan")}, "facts"),
    ({"num_train_docs": 1.5}, "num_train_docs"),
    ({"num_train_docs": "100"}, "num_train_docs"),
    ({"seed": True}, "seed"),
    ({"seed": -1}, "seed"),
    ({"easy_fraction": 1.5}, "easy_fraction"),
    ({"episode_examples_min": 9, "episode_examples_max": 4}, "episode_examples_max"),
    ({"repeat_count_min": 1}, "repeat_count_min"),
    ({"lexicon_size": 20_000}, "lexicon_size"),
    ({"version": ""}, "version"),
])
def test_from_dict_rejects_bad_input_naming_the_field(overrides, needle):
    with pytest.raises(UserError, match=re.escape(needle)) as info:
        S.SyntheticConfig.from_dict(overrides)
    assert "\n" not in str(info.value)


def test_unknown_split_and_family_are_user_errors(world):
    with pytest.raises(UserError, match="test"):
        next(S.generate_documents(small(), "test"))
    with pytest.raises(UserError, match="poetry"):
        S.generate_document("poetry", np.random.default_rng(0), world)


# ----------------------------------------------------------------------------- determinism


def _digest(docs) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode() + b"\0")
    return h.hexdigest()


def test_same_config_same_documents_even_in_a_fresh_process():
    c = small()
    first = list(S.generate_documents(c, "train"))
    S.build_world.cache_clear()
    assert list(S.generate_documents(c, "train")) == first
    # A new interpreter with another hash seed must agree: no Python hash(), no global state.
    code = ("import hashlib; from llmjax.data import synthetic as S;"
            "h = hashlib.sha256();"
            "[h.update(d.encode() + b'\\0') for d in S.generate_documents("
            "S.SyntheticConfig(num_train_docs=400, num_validation_docs=100), 'train')];"
            "print(h.hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == _digest(first)


def test_seed_and_version_change_the_documents():
    base = list(S.generate_documents(small(), "train"))
    other_seed = list(S.generate_documents(small(seed=1), "train"))
    other_version = list(S.generate_documents(small(version="1.0.1"), "train"))
    assert len(set(base) & set(other_seed)) < 5
    assert len(set(base) & set(other_version)) < 5
    assert S.build_world(small()).facts != S.build_world(small(seed=1)).facts


def test_more_documents_only_append():
    short = list(S.generate_documents(small(num_train_docs=1100), "train"))
    long = list(S.generate_documents(small(num_train_docs=2100), "train"))
    assert long[:1024] == short[:1024] and long[1024:1100] != short[1024:]


def test_train_and_validation_differ_but_share_the_world(cfg, world, train, validation):
    assert len(train) == cfg.num_train_docs and len(validation) == cfg.num_validation_docs
    train_texts = {r.text for r in train}
    shared = [r.text for r in validation if r.text in train_texts]
    assert len(shared) <= 2, shared
    # The same knowledge base shows through in both splits.
    for records in (train, validation):
        for r in records:
            if r.family == "facts":
                for e, a, v in FACT_PARTS.findall(r.text):
                    assert world.fact_table[(e, a)] == v


# ----------------------------------------------------------------------------- mixture


def test_every_family_in_its_share_and_labels_match_the_text(world):
    c = small(num_train_docs=1000, prose=1, facts=2, episodes=3, repeats=4)
    parser = ProseParser(world)
    records = list(S.generate_records(c, "train"))
    by_label = collections.Counter(r.family for r in records)
    assert by_label == {"prose": 100, "facts": 200, "episodes": 300, "repeats": 400}
    mismatched = [(r.family, r.text) for r in records if classify(r.text, parser) != r.family]
    assert not mismatched, mismatched[:3]
    # Families are interleaved, not in blocks.
    first_half = collections.Counter(r.family for r in records[:500])
    assert all(0.35 < first_half[f] / by_label[f] < 0.65 for f in S.FAMILIES)


def test_validation_holds_every_family_even_when_small(world):
    c = small(num_validation_docs=12, facts=0.01)
    parser = ProseParser(world)
    families = collections.Counter(classify(d, parser)
                                   for d in S.generate_documents(c, "validation"))
    assert set(families) == set(S.FAMILIES)


def test_family_counts_are_exact_and_respect_zero_weights():
    assert S.family_counts([0.25, 0.15, 0.25, 0.35], 1000) == [250, 150, 250, 350]
    assert S.family_counts([1, 0, 1, 1], 10) == [4, 0, 3, 3]
    counts = S.family_counts([1, 0.001, 1, 0], 7)
    assert sum(counts) == 7 and counts[1] >= 1 and counts[3] == 0


def test_zero_weight_family_never_appears(world):
    c = small(num_train_docs=300, episodes=0, repeats=0)
    parser = ProseParser(world)
    assert {classify(d, parser) for d in S.generate_documents(c, "train")} == {"prose", "facts"}


# ----------------------------------------------------------------------------- prose


def test_prose_is_grammatical_agrees_and_nests_balanced_brackets(world, train):
    parser = ProseParser(world)
    prose = [r.text for r in train if r.family == "prose"]
    assert len(prose) > 300
    sentences = 0
    for text in prose:
        sentences += parser.parse(text)
        assert balanced(text)
    assert parser.max_depth == world.config.max_nesting  # nesting happens, up to the limit
    joined = " ".join(prose)
    assert joined.count("(") > 50 and joined.count('"') > 50 and joined.count("'") > 2
    assert sentences >= 3 * len(prose)
    # Agreement across a relative clause whose object has the other number (an attractor).
    d_sg, d_pl, rel = world.det_singular, world.det_plural, world.relativizer
    assert re.search(rf"\b{d_sg} (?:[a-z]+ )*?[a-z]+ {rel} [a-z]+s {d_pl} ", joined)


def test_prose_parser_rejects_broken_agreement_and_brackets(world, train):
    parser = ProseParser(world)
    text = next(r.text for r in train if r.family == "prose")
    verb = next(t for t in text.replace(".", " ").split() if t in parser.verbs)
    flipped = verb[:-1] if verb.endswith("s") else verb + "s"
    broken = re.sub(rf"\b{verb}\b", flipped, text, count=1)
    with pytest.raises(ParseError, match="agreement"):
        parser.parse(broken)
    nested = next(r.text for r in train if r.family == "prose" and ")" in r.text)
    parser.parse(nested)
    with pytest.raises(ParseError):
        parser.parse(nested.replace(")", "", 1))
    assert not balanced(nested.replace(")", "", 1))


def test_words_are_short_and_frequencies_zipfian(world, train):
    for word in world.lexicon + world.prepositions + world.speech_verbs + world.attributes:
        assert 2 <= len(word) <= 5 and "s" not in word
    assert all(2 <= len(e) <= 5 for e in world.entities)
    prose_words = collections.Counter(
        w for r in train if r.family == "prose" for w in re.findall(r"[a-z]+", r.text))
    assert max(map(len, prose_words)) <= 6
    head = sum(prose_words[n] + prose_words[n + "s"] for n in world.nouns[:10])
    tail = sum(prose_words[n] + prose_words[n + "s"] for n in world.nouns[200:210])
    assert head > 5 * tail > 0


# ----------------------------------------------------------------------------- facts


def test_facts_match_the_knowledge_base_and_prompts(world, train):
    c = world.config
    assert len(world.facts) == c.num_entities * c.num_attributes
    assert len(set(world.entities)) == c.num_entities
    seen: dict[tuple[str, str], str] = {}
    entity_counts = collections.Counter()
    for r in train:
        if r.family != "facts":
            continue
        for e, a, v in FACT_PARTS.findall(r.text):
            assert seen.setdefault((e, a), v) == v  # one value per (entity, attribute) everywhere
            assert world.fact_table[(e, a)] == v
            entity_counts[e] += 1
    assert len(seen) > 300
    assert entity_counts[world.entities[0]] > entity_counts[world.entities[-1]]
    e, a, v = world.facts[17]
    assert S.render_fact(e, a, v) == S.fact_prompt(e, a) + " " + v + "."


# ----------------------------------------------------------------------------- episodes


def episode_records(records, kind=None):
    return [r for r in records
            if r.family == "episodes" and (kind is None or r.episode.kind == kind)]


def test_episode_text_is_its_rendering_and_formats_are_exposed(train):
    eps = episode_records(train)
    # Associative recall is off in the default mix (episode_assoc = 0); the demo turns it on.
    assert {r.episode.kind for r in eps} == set(S.EPISODE_KINDS) - {"assoc"}
    assert {fmt.header: k for k, fmt in S.EPISODE_FORMATS.items()} == HEADERS
    for r in eps:
        assert r.text == S.render_episode(r.episode)
        kind, examples, _ = parse_episode(r.text)
        assert kind == r.episode.kind and examples == r.episode.examples
        q, a = examples[0]
        assert S.render_example(kind, q, a) in r.text
    assert 0.3 < np.mean([r.episode.easy for r in eps]) < 0.7


def test_translation_rule_is_consistent_in_a_document_and_fresh_across(train):
    mappings = []
    for r in episode_records(train, "translation"):
        _, examples, _ = parse_episode(r.text)
        mapping: dict[str, str] = {}
        for src, tgt in examples:
            assert mapping.setdefault(src, tgt) == tgt
        assert len(set(mapping.values())) == len(mapping)  # a bijection on the document's keys
        assert len(examples) > len(mapping)  # bursty: keys recur
        assert tuple(sorted(mapping.items())) == r.episode.rule
        mappings.append(frozenset(mapping.items()))
    assert len(mappings) > 50 and len(set(mappings)) == len(mappings)


def test_recall_answers_come_from_the_documents_store(train):
    stores = []
    for r in episode_records(train, "recall"):
        _, queries, context = parse_episode(r.text)
        store = dict(item.split(":") for item in context.split(" "))
        assert all(store[k] == v for k, v in queries)
        stores.append(frozenset(store.items()))
    assert len(stores) > 50 and len(set(stores)) == len(stores)


def test_modular_answers_follow_the_documents_permutation(world, train):
    rng = np.random.default_rng(3)
    for easy in (False, True):
        for _ in range(50):
            ep = S.sample_episode("modular", rng, world, 12, easy=easy)
            symbols = ep.rule
            m = len(symbols)
            assert world.config.modulus_min <= m <= world.config.modulus_max
            assert (symbols == "0123456789"[:m]) == easy
            for query, answer in ep.examples:
                a, b = query.split("+")
                assert answer == symbols[(symbols.index(a) + symbols.index(b)) % m]
    # From the training text alone: each doc's table is a function and commutative.
    for r in episode_records(train, "modular"):
        table: dict[tuple[str, str], str] = {}
        for query, answer in parse_episode(r.text)[1]:
            a, b = query.split("+")
            assert table.setdefault((a, b), answer) == answer
            assert table.get((b, a), answer) == answer


def test_copy_reverse_and_sequence_answers(world, train):
    for r in episode_records(train, "copy") + episode_records(train, "reverse"):
        kind, examples, _ = parse_episode(r.text)
        for query, answer in examples:
            assert answer == (query if kind == "copy" else query[::-1])
            assert re.fullmatch(r"[a-z]{2,6}", query)
    for r in episode_records(train, "sequence"):
        successor: dict[str, str] = {}
        for query, answer in parse_episode(r.text)[1]:
            terms = query + answer
            assert len(query) == 3 and len(answer) == 2
            for x, y in zip(terms, terms[1:], strict=False):
                assert successor.setdefault(x, y) == y  # one step rule per document
        assert set(successor.items()) <= set(r.episode.rule)
    ep = S.sample_episode("sequence", np.random.default_rng(0), world, 10)
    succ = dict(ep.rule)
    for query, answer in ep.examples:
        assert succ[query[0]] == query[1] and succ[query[2]] == answer[0]
        assert succ[answer[0]] == answer[1]


def test_render_prompt_gives_k_shot_prefixes(world):
    for kind in S.EPISODE_KINDS:
        ep = S.sample_episode(kind, S.probe_rng(5), world, 6)
        text = S.render_episode(ep)
        for k in range(6):
            prompt, answer = S.render_prompt(ep, k)
            assert answer == ep.examples[k][1]
            assert text.startswith(prompt + answer)
            sep = S.EPISODE_FORMATS[kind].qa_sep
            if not sep:  # assoc: the value follows its key directly; k shots, one query
                assert prompt.split(" | ", 1)[1].count(" ") == k
                continue
            assert prompt.endswith(sep)
            assert prompt.count(sep) == k + 1 + (ep.context.count(">") if ep.context else 0)


def test_probe_episodes_never_reuse_a_training_rule(world):
    # Tiny rule spaces (3 symbols, 1 key) make accidental reuse likely unless held out by design.
    c = small(num_train_docs=3000, prose=0, facts=0, repeats=0, easy_fraction=0.0,
              modulus_min=3, modulus_max=3, episode_keys_min=1, episode_keys_max=1)
    w = S.build_world(c)
    trained = collections.defaultdict(set)
    for r in S.generate_records(c, "train"):
        trained[r.episode.kind].add(r.episode.rule)
    assert len(trained["modular"]) > 150 and len(trained["sequence"]) > 300
    for kind in ("translation", "recall", "modular", "sequence"):
        probes = [S.sample_episode(kind, S.probe_rng(i), w, 8) for i in range(300)]
        probe_rules = {ep.rule for ep in probes}
        assert len(probe_rules) > 150
        assert not probe_rules & trained[kind], kind
        assert all(S.rule_is_heldout(kind, rule) for rule in probe_rules)
        assert not any(S.rule_is_heldout(kind, rule) for rule in trained[kind])
    # Probe streams are deterministic in their seed and differ across seeds.
    a = S.sample_episode("translation", S.probe_rng(7), w, 8)
    assert a == S.sample_episode("translation", S.probe_rng(7), w, 8)
    assert a.rule != S.sample_episode("translation", S.probe_rng(8), w, 8).rule


def test_modular_rules_equal_exactly_when_tables_equal():
    # With 3 symbols, many labelings share a table (a <-> -a), so raw labelings would collide.
    w = S.build_world(small(modulus_min=3, modulus_max=3))
    rng = np.random.default_rng(11)
    tables: dict[str, frozenset] = {}
    for _ in range(1000):
        ep = S.sample_episode("modular", rng, w, 1)
        s = ep.rule
        m = len(s)
        table = frozenset((s[a], s[b], s[(a + b) % m]) for a in range(m) for b in range(m))
        assert tables.setdefault(s, table) == table
    rules_by_table = collections.Counter(tables.values())
    assert len(tables) < 1000 and max(rules_by_table.values()) == 1


# ----------------------------------------------------------------------------- repeats


def test_repeats_recur_within_the_document(world, train):
    rng = np.random.default_rng(0)
    c = world.config
    for _ in range(200):
        rp = S.sample_repeats(rng, world)
        assert c.repeat_spans_min <= len(rp.spans) <= c.repeat_spans_max
        for span in rp.spans:
            assert c.repeat_span_words_min <= len(span.split()) <= c.repeat_span_words_max
            assert rp.text.count(span) >= c.repeat_count_min
    # In the corpus too: every repeats document has a word 3-gram that occurs twice.
    for r in train:
        if r.family == "repeats":
            words = r.text.split()
            grams = collections.Counter(zip(words, words[1:], words[2:], strict=False))
            assert grams.most_common(1)[0][1] >= 2


def test_generate_document_targets_one_family(world):
    parser = ProseParser(world)
    for family in S.FAMILIES:
        rng = np.random.default_rng(1)
        docs = [S.generate_document(family, rng, world) for _ in range(20)]
        assert {classify(d, parser) for d in docs} == {family}
        assert len(set(docs)) == 20


def test_assoc_episodes_are_zoology_style_lookups(world):
    """'ar: ' + a store of distinct letter keys, each followed by its digit, ' | ', then queries
    in the same form whose values are the store's."""
    for seed in range(20):
        ep = S.sample_episode("assoc", S.probe_rng(seed), world, 12)
        text = S.render_episode(ep)
        assert re.fullmatch(r"ar: (?:[a-z][0-9] )*[a-z][0-9] \| (?:[a-z][0-9] )*[a-z][0-9]", text)
        store = dict(re.findall(r"([a-z])([0-9])", text.split(" | ")[0]))
        assert len(store) == len(text.split(" | ")[0].split()) - 1  # distinct keys
        assert 4 <= len(store) <= 8  # assoc_keys_min..max
        assert dict(ep.rule) == store
        assert all(store[q] == a for q, a in ep.examples)
    with pytest.raises(UserError, match="assoc_keys_max"):
        S.SyntheticConfig(assoc_keys_max=27)
