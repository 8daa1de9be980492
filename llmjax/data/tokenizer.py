"""Tokenizers: 'byte' (raw UTF-8 bytes) and 'bpe:<V>' (byte-level BPE trained on a train split).

A tokenizer spec is a string: ``byte`` or ``bpe:<vocab_size>`` with
``MIN_BPE_VOCAB_SIZE (259) <= vocab_size <= MAX_BPE_VOCAB_SIZE (2**20)``.

Vocabulary layouts (ids are fixed; ``pad_id``, ``bos_id``, ``eos_id`` always say which is which):

    byte      0..255 = the byte with that value, 256 = <|pad|>, 257 = <|bos|>, 258 = <|eos|>.
              vocab_size = 259.
    bpe:<V>   0 = <|pad|>, 1 = <|bos|>, 2 = <|eos|>, 3..258 = the 256 single bytes (in the
              byte-level alphabet's character order), 259.. = merged tokens in the order learned,
              then special fillers <|unused_k|> if the training sample ran out of merges.
              vocab_size = V exactly, so the spec alone fixes the model's embedding size.

Policies:
  * ``encode`` adds no special tokens (the pipeline adds BOS/EOS) and never emits a special id:
    the text "<|eos|>" inside a document is encoded as ordinary characters.
  * Invalid UTF-8: ``bytes`` given to the byte tokenizer are encoded as they are (lossless; every
    byte value 0..255 is a token). ``bytes`` given to bpe are first decoded with
    ``errors="replace"``, so each invalid sequence becomes U+FFFD (3 bytes, EF BF BD).
    A ``str`` holding lone surrogates (not encodable as UTF-8) has each replaced by U+FFFD.
  * Round trips: ``decode(encode(s)) == s`` for every valid str ``s``, for both kinds (no
    normalizer, no added prefix space, byte-level alphabet covers all 256 bytes).
  * ``decode`` never raises on a sequence of ints: the bytes of each id are concatenated and
    decoded with ``errors="replace"``, so partial or invalid UTF-8 becomes U+FFFD (Python's
    maximal-subpart rule). Ids outside [0, vocab_size) decode to U+FFFD each. Special ids
    (and bpe fillers) decode to "" by default, or to their names with ``skip_special_tokens=False``.

Files: ``save(directory)`` writes ``tokenizer.json`` in the HF ``tokenizers`` format for both
kinds (loadable by ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``, which encodes
identically) plus a ``tokenizer_config.json`` naming the special tokens for ``from_pretrained``.
``load_tokenizer_file(path)`` recognises the byte layout (a merge-free BPE whose id is the byte
value) and returns the fast byte tokenizer for it.

Imported tokenizers (``hf:<V>``): ``ImportedTokenizer`` wraps any Hugging Face
``tokenizer.json`` as it is (GPT-2's byte-level BPE, a Llama sentencepiece-style or byte-level
one), for runs made by ``llmjax convert --from_hf``. Its special ids come from the source's
tokenizer_config.json / config.json (bos = eos when there is no BOS, pad = eos when there is no
PAD; GPT-2's ``<|endoftext|>`` is all three). ``save`` writes the original tokenizer.json byte
for byte and a tokenizer_config.json marked ``"llmjax_spec": "hf:<V>"`` with
``llmjax_special_ids``, which is how ``load_tokenizer_file`` knows to load it back as an
ImportedTokenizer. Its policies follow the ones above where the wrapped tokenizer allows: encode
adds no special tokens (not even a post-processor's BOS) and encodes special-token text as text;
decode concatenates each id's bytes (byte-level chars, ``<0xNN>`` byte-fallback tokens, ``▁`` as
a space), so a sentencepiece-style tokenizer's added prefix space is kept in the text. An
``hf:<V>`` spec cannot be built from a config (``get_tokenizer`` says so): it is read from a
run's tokenizer/ directory.

BPE cache: ``get_tokenizer('bpe:V', dataset, data_dir)`` trains once per
(dataset, dataset version, V, training sample) and stores the result at
``<data_dir>/llmjax_tokenizers/<dataset>-<version>-bpe<V>-<sample_hash>/tokenizer.json``,
written to a temp file and ``os.replace``-d so a killed run never leaves a half file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from llmjax.errors import UserError
from llmjax.rundir import atomic_write

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
BYTE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MIN_BPE_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_BPE_VOCAB_SIZE = 1 << 20
# Training sample: up to this many UTF-8 bytes of train documents (~seconds of BPE training).
DEFAULT_SAMPLE_BYTES = 20_000_000
# Bump when the training recipe changes, so cached tokenizers from the old recipe are not reused.
BPE_RECIPE_VERSION = 1

_REPLACEMENT = "\ufffd".encode()
_SURROGATE = re.compile("[\ud800-\udfff]")
TOKENIZER_SPEC_HELP = (
    f"use 'byte' or 'bpe:<vocab_size>' with "
    f"{MIN_BPE_VOCAB_SIZE} <= vocab_size <= {MAX_BPE_VOCAB_SIZE}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte value -> the printable char HF's ByteLevel uses for it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:  # control chars and spaces move to 256.. so every token is printable
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _spec_error(spec: object) -> UserError:
    return UserError(f"unknown tokenizer {spec!r}: {TOKENIZER_SPEC_HELP}")


def parse_tokenizer_spec(spec: str) -> tuple[str, int]:
    """'byte' -> ('byte', 259); 'bpe:<V>' -> ('bpe', V); 'hf:<V>' -> ('hf', V) (an imported
    tokenizer, see ImportedTokenizer). Raises UserError on anything else."""
    if spec == "byte":
        return "byte", BYTE_VOCAB_SIZE
    if isinstance(spec, str) and re.fullmatch(r"hf:[1-9][0-9]*", spec):
        return "hf", int(spec.split(":", 1)[1])
    if not isinstance(spec, str) or not re.fullmatch(r"bpe:[0-9]+", spec):
        raise _spec_error(spec)
    vocab_size = int(spec.split(":", 1)[1])
    if not MIN_BPE_VOCAB_SIZE <= vocab_size <= MAX_BPE_VOCAB_SIZE:
        raise _spec_error(spec)
    return "bpe", vocab_size


def spec_vocab_size(spec: str) -> int:
    """Vocabulary size a spec yields, without data or training (e.g. for parameter counts)."""
    return parse_tokenizer_spec(spec)[1]


def _sanitize(text: str) -> str:
    """Replace lone surrogates (unencodable as UTF-8) by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _as_str(text: str | bytes) -> str:
    """Text for BPE: bytes are decoded as UTF-8 with invalid sequences -> U+FFFD."""
    if isinstance(text, str):
        return text
    return bytes(text).decode("utf-8", errors="replace")


def _as_bytes(text: str | bytes) -> bytes:
    """Bytes for the byte tokenizer: str -> UTF-8 (lone surrogates -> U+FFFD), bytes unchanged."""
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return _sanitize(text).encode("utf-8")
    return bytes(text)


class Tokenizer:
    """Common interface: ids are int32; decode and token_byte_lengths share one id -> bytes table.

    Attributes:
      name: the spec this tokenizer implements ('byte', 'bpe:512').
      vocab_size: number of ids; every id the tokenizer emits is in [0, vocab_size).
      pad_id, bos_id, eos_id: the special ids (never produced by encode).
    """

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def __init__(self, token_bytes: list[bytes], special_names: dict[int, str]):
        # token_bytes[i] = UTF-8 bytes id i decodes to (b"" for specials and fillers).
        self._token_bytes = token_bytes
        self._special_names = special_names
        self._with_specials = list(token_bytes)
        for i, s in special_names.items():
            self._with_specials[i] = s.encode()
        self.vocab_size = len(token_bytes)

    def encode(self, text: str | bytes) -> np.ndarray:
        """One document -> int32[n_tokens]; no special tokens added."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        """Many documents -> one int32[n_tokens_i] per document; no special tokens added."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """int ids -> text. Never raises on ints (see the module docstring for the policy)."""
        table = self._token_bytes if skip_special_tokens else self._with_specials
        n = len(table)
        if isinstance(ids, np.ndarray):
            ids = ids.ravel().tolist()
        parts = [table[i] if 0 <= i < n else _REPLACEMENT for i in map(int, ids)]
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        """int32[vocab_size]: UTF-8 bytes each id decodes to, 0 for specials (for bits per byte)."""
        return np.fromiter(map(len, self._token_bytes), dtype=np.int32, count=self.vocab_size)

    def save(self, directory: str) -> str:
        """Write tokenizer.json (+ tokenizer_config.json) into directory; returns tokenizer.json."""
        os.makedirs(directory, exist_ok=True)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": PAD, "bos_token": BOS, "eos_token": EOS,
            "split_special_tokens": True,  # so HF, like us, encodes "<|eos|>" in text as text
            "clean_up_tokenization_spaces": False,  # keep HF decode exact
            "llmjax_spec": self.name,
        }
        atomic_write(os.path.join(directory, "tokenizer_config.json"),
                      json.dumps(config, indent=1))
        path = os.path.join(directory, "tokenizer.json")
        atomic_write(path, self._hf_tokenizer().to_str())
        return path

    def _hf_tokenizer(self) -> HFTokenizer:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """Ids are UTF-8 byte values (0..255) plus pad=256, bos=257, eos=258. Needs no training."""

    def __init__(self) -> None:
        token_bytes = [bytes([b]) for b in range(256)] + [b""] * len(SPECIAL_TOKENS)
        super().__init__(token_bytes, {256 + k: s for k, s in enumerate(SPECIAL_TOKENS)})
        self.name = "byte"
        self.pad_id, self.bos_id, self.eos_id = 256, 257, 258

    def encode(self, text: str | bytes) -> np.ndarray:
        return np.frombuffer(_as_bytes(text), dtype=np.uint8).astype(np.int32)

    def _hf_tokenizer(self) -> HFTokenizer:
        # A merge-free byte-level BPE whose token ids are the byte values: HF encodes identically.
        vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
        vocab.update({s: 256 + k for k, s in enumerate(SPECIAL_TOKENS)})
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        _set_byte_level(hf)
        hf.add_special_tokens([AddedToken(s, special=True, normalized=False)
                               for s in SPECIAL_TOKENS])
        return hf


class BPETokenizer(Tokenizer):
    """Byte-level BPE (HF tokenizers): pad=0, bos=1, eos=2, bytes, merges; see the module doc."""

    def __init__(self, hf: HFTokenizer, *, origin: str = "tokenizer"):
        _check_bpe_layout(hf, origin)
        hf.encode_special_tokens = True  # "<|eos|>" inside a document stays text (not serialized)
        self._hf = hf
        vocab_size = hf.get_vocab_size()
        specials = {i: t.content for i, t in hf.get_added_tokens_decoder().items()}
        token_bytes = []
        for i in range(vocab_size):
            token = hf.id_to_token(i)
            if i in specials:
                token_bytes.append(b"")
            elif token is None or any(c not in CHAR_TO_BYTE for c in token):
                raise UserError(f"{origin}: token id {i} ({token!r}) is not a byte-level token")
            else:
                token_bytes.append(bytes(CHAR_TO_BYTE[c] for c in token))
        super().__init__(token_bytes, specials)
        self.name = f"bpe:{vocab_size}"
        self.pad_id, self.bos_id, self.eos_id = (hf.token_to_id(s) for s in SPECIAL_TOKENS)

    def encode(self, text: str | bytes) -> np.ndarray:
        return _hf_encode(self._hf, text)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        return _hf_encode_batch(self._hf, texts)

    def _hf_tokenizer(self) -> HFTokenizer:
        return self._hf


def _hf_encode(hf: HFTokenizer, text: str | bytes) -> np.ndarray:
    text = _as_str(text)
    try:
        ids = hf.encode(text, add_special_tokens=False).ids
    except TypeError:  # lone surrogates cannot cross into Rust
        ids = hf.encode(_sanitize(text), add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int32)


def _hf_encode_batch(hf: HFTokenizer, texts: Sequence[str | bytes]) -> list[np.ndarray]:
    strs = [_as_str(t) for t in texts]
    try:
        encodings = hf.encode_batch_fast(strs, add_special_tokens=False)
    except TypeError:  # lone surrogates cannot cross into Rust
        encodings = hf.encode_batch_fast([_sanitize(s) for s in strs], add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


# Names an imported tokenizer's special tokens commonly have, tried when its files name none.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|eos|>", "<eos>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<|bos|>", "<bos>")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
HF_SPEC_KEY, HF_SPECIALS_KEY = "llmjax_spec", "llmjax_special_ids"


def _token_name(value: Any) -> str | None:
    """A tokenizer_config.json special-token entry ("<s>" or {"content": "<s>", ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _json_types(node: Any, key: str = "type") -> set[str]:
    """Every `type` named anywhere in a tokenizer.json component (Sequence members included)."""
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get(key), str):
            found.add(node[key])
        for value in node.values():
            found |= _json_types(value, key)
    elif isinstance(node, list):
        for value in node:
            found |= _json_types(value, key)
    return found


class ImportedTokenizer(Tokenizer):
    """An arbitrary Hugging Face tokenizer.json (imported by `llmjax convert --from_hf`), with
    llmjax's interface; `name` is 'hf:<vocab_size>'. See the module docstring."""

    def __init__(self, text: str, special_ids: dict[str, int], config: dict[str, Any] | None = None,
                 *, origin: str = "tokenizer.json"):
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise UserError(f"{origin}: cannot read tokenizer file "
                            f"({str(e).splitlines()[0]})") from e
        hf.encode_special_tokens = True  # special-token text in a document stays text
        self._hf, self._text = hf, text
        self._config = {k: v for k, v in (config or {}).items()
                        if k not in (HF_SPEC_KEY, HF_SPECIALS_KEY)}
        spec = json.loads(text)
        vocab_size = hf.get_vocab_size(with_added_tokens=True)
        decoded = hf.get_added_tokens_decoder()
        specials = {i: t.content for i, t in decoded.items() if t.special}
        byte_level = "ByteLevel" in (_json_types(spec.get("pre_tokenizer"))
                                     | _json_types(spec.get("decoder")))
        metaspace = bool({"Metaspace", "Replace"} & _json_types(spec.get("decoder")))
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        token_bytes = []
        for i in range(vocab_size):
            token = hf.id_to_token(i)
            if i in specials or token is None:
                token_bytes.append(b"")
            elif i in decoded:  # a non-special added token: its text
                token_bytes.append(token.encode())
            elif byte_level and all(c in CHAR_TO_BYTE for c in token):
                token_bytes.append(bytes(CHAR_TO_BYTE[c] for c in token))
            elif byte_fallback and _BYTE_FALLBACK.fullmatch(token):
                token_bytes.append(bytes([int(token[3:5], 16)]))
            elif metaspace:
                token_bytes.append(token.replace("\u2581", " ").encode())
            else:
                token_bytes.append(hf.decode([i], skip_special_tokens=False).encode())
        super().__init__(token_bytes, specials)
        self.name = f"hf:{vocab_size}"
        for role in ("pad", "bos", "eos"):
            value = special_ids.get(role)
            if not isinstance(value, int) or not 0 <= value < vocab_size:
                raise UserError(f"{origin}: special token id {role}={value!r} is not an id of "
                                f"this tokenizer (0..{vocab_size - 1})")
        self.pad_id, self.bos_id, self.eos_id = (int(special_ids[r]) for r in ("pad", "bos",
                                                                               "eos"))
        for i in {self.pad_id, self.bos_id, self.eos_id} - set(specials):
            self._special_names[i] = hf.id_to_token(i) or ""
            self._with_specials[i] = self._special_names[i].encode()
            self._token_bytes[i] = b""  # decodes to "" like llmjax's own specials

    @classmethod
    def from_hf_dir(cls, directory: str, model_config: dict[str, Any] | None = None
                    ) -> ImportedTokenizer:
        """The tokenizer of a Hugging Face model directory (tokenizer.json, and the special
        tokens that tokenizer_config.json or the model's config.json name); UserError when
        there is no end-of-text token to be found."""
        path = os.path.join(directory, "tokenizer.json")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        config = _read_json_object(os.path.join(directory, "tokenizer_config.json")) or {}
        special_map = _read_json_object(os.path.join(directory, "special_tokens_map.json")) or {}
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise UserError(f"{path}: cannot read tokenizer file "
                            f"({str(e).splitlines()[0]})") from e
        vocab_size = hf.get_vocab_size(with_added_tokens=True)
        model_config = model_config or {}

        def find(role: str, names: Sequence[str]) -> int | None:
            for source in (config, special_map):
                name = _token_name(source.get(f"{role}_token"))
                if name is not None and hf.token_to_id(name) is not None:
                    return hf.token_to_id(name)
            value = model_config.get(f"{role}_token_id")
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int) and 0 <= value < vocab_size:
                return value
            for name in names:
                if hf.token_to_id(name) is not None:
                    return hf.token_to_id(name)
            return None

        eos = find("eos", _EOS_NAMES)
        if eos is None:
            raise UserError(f"{path}: no end-of-text token (set eos_token in "
                            "tokenizer_config.json or eos_token_id in config.json)")
        bos = find("bos", _BOS_NAMES)
        pad = find("pad", ())
        special_ids = {"pad": eos if pad is None else pad, "bos": eos if bos is None else bos,
                       "eos": eos}
        return cls(text, special_ids, config, origin=path)

    def encode(self, text: str | bytes) -> np.ndarray:
        return _hf_encode(self._hf, text)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        return _hf_encode_batch(self._hf, texts)

    def save(self, directory: str) -> str:
        """tokenizer.json as imported (byte for byte) and tokenizer_config.json: the source's,
        plus the llmjax spec and special ids (how load_tokenizer_file recognises it)."""
        os.makedirs(directory, exist_ok=True)
        config = dict(self._config)
        for role in ("pad", "bos", "eos"):
            name = self._hf.id_to_token(getattr(self, f"{role}_id"))
            if _token_name(config.get(f"{role}_token")) is None and name is not None:
                config[f"{role}_token"] = name
        config[HF_SPEC_KEY] = self.name
        config[HF_SPECIALS_KEY] = {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id}
        atomic_write(os.path.join(directory, "tokenizer_config.json"),
                     json.dumps(config, indent=1))
        path = os.path.join(directory, "tokenizer.json")
        atomic_write(path, self._text)
        return path

    def _hf_tokenizer(self) -> HFTokenizer:
        return self._hf


def _set_byte_level(hf: HFTokenizer) -> None:
    # No prefix space: " x" and "x" stay distinct and decode(encode(s)) == s exactly.
    # The GPT-2 regex keeps merges inside words/number runs/punctuation runs (better tokens).
    hf.normalizer = None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = None


def _check_bpe_layout(hf: HFTokenizer, origin: str) -> None:
    """Raise UserError unless hf is a byte-level BPE with our specials and no text rewriting."""
    spec = json.loads(hf.to_str())
    pre = spec.get("pre_tokenizer") or {}
    problems = []
    if spec.get("model", {}).get("type") != "BPE":
        problems.append("model is not BPE")
    if spec.get("normalizer") is not None:
        problems.append("has a normalizer")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        problems.append("pre-tokenizer is not ByteLevel without prefix space")
    if spec.get("post_processor") is not None:
        problems.append("has a post-processor")
    for s in SPECIAL_TOKENS:
        if hf.token_to_id(s) is None:
            problems.append(f"lacks special token {s}")
    if problems:
        raise UserError(f"{origin}: not an llmjax byte-level BPE tokenizer ({'; '.join(problems)})")


def _is_byte_layout(hf: HFTokenizer) -> bool:
    spec = json.loads(hf.to_str())["model"]
    expected = {BYTE_TO_CHAR[b]: b for b in range(256)}
    expected.update({s: 256 + k for k, s in enumerate(SPECIAL_TOKENS)})
    return not spec.get("merges") and spec.get("vocab") == expected


def _read_json_object(path: str) -> dict[str, Any] | None:
    """A JSON object file's contents; None when it does not exist; UserError when damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load_tokenizer_file(path: str) -> Tokenizer:
    """Load a tokenizer.json written by save() (or a directory holding one); an imported
    ImportedTokenizer when the tokenizer_config.json beside it says so."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    config = _read_json_object(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
    if config and str(config.get(HF_SPEC_KEY, "")).startswith("hf:"):
        specials = config.get(HF_SPECIALS_KEY)
        if not isinstance(specials, dict):
            raise UserError(f"{path}: tokenizer_config.json lacks {HF_SPECIALS_KEY}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UserError(f"{path}: cannot read tokenizer file ({e.strerror})") from None
        return ImportedTokenizer(text, specials, config, origin=path)
    try:
        hf = HFTokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise UserError(f"{path}: cannot read tokenizer file ({str(e).splitlines()[0]})") from e
    _check_bpe_layout(hf, path)
    if _is_byte_layout(hf):
        return ByteTokenizer()
    return BPETokenizer(hf, origin=path)


def train_bpe(texts: Iterable[str | bytes], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE with exactly vocab_size ids (specials + 256 bytes + merges).

    bytes are decoded as UTF-8 with replacement first. If the texts run out of pairs to merge,
    the rest of the vocabulary is <|unused_k|> special fillers (never emitted, decode to "").
    """
    parse_tokenizer_spec(f"bpe:{vocab_size}")
    hf = HFTokenizer(models.BPE())
    _set_byte_level(hf)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    hf.train_from_iterator((_as_str(t) for t in texts), trainer)
    missing = vocab_size - hf.get_vocab_size()
    if missing > 0:
        log.warning("BPE training text ran out of merges: %d of %d ids are unused fillers",
                    missing, vocab_size)
        hf.add_special_tokens([AddedToken(f"<|unused_{k}|>", special=True, normalized=False)
                               for k in range(missing)])
    return BPETokenizer(hf, origin=f"bpe:{vocab_size}")


def _sample_order(n: int, seed: int) -> Iterator[int]:
    """A seeded permutation of range(n): i -> (a*i + c) mod n with a ~ n/phi coprime to n.

    Consecutive picks spread evenly over the split (so a split ordered by time or curriculum is
    covered), it needs O(1) memory, and it depends on no library's RNG stream.
    """
    if n <= 0:
        return
    a = max(1, round(n * (math.sqrt(5) - 1) / 2))
    while math.gcd(a, n) != 1:
        a += 1
    c = int.from_bytes(hashlib.sha256(f"llmjax-bpe-sample-{seed}".encode()).digest()[:8]) % n
    for i in range(n):
        yield (a * i + c) % n


def _record_text(record: Any) -> bytes:
    text = record["text"] if isinstance(record, dict) else record
    return text.encode("utf-8", errors="replace") if isinstance(text, str) else bytes(text)


def read_texts(source: Sequence[Any], indices: Sequence[int]) -> list[bytes]:
    """UTF-8 bytes of records `indices` ({"text": bytes} or plain str/bytes)."""
    indices = list(indices)
    if hasattr(source, "__getitems__"):  # one batched read (ArrayRecord data sources)
        return [_record_text(r) for r in source.__getitems__(indices)]
    return [_record_text(source[i]) for i in indices]


def sample_training_texts(source: Sequence[Any], *, max_bytes: int = DEFAULT_SAMPLE_BYTES,
                          seed: int = 0) -> list[bytes]:
    """Deterministic BPE training sample: docs in _sample_order until max_bytes UTF-8 bytes.

    source: random-access records ({"text": bytes} or plain str/bytes). The last document may
    overshoot the budget; a single document longer than max_bytes is cut to max_bytes.
    """
    texts, total, order = [], 0, _sample_order(len(source), seed)
    while total < max_bytes:
        indices = list(itertools.islice(order, 256))
        if not indices:
            break
        for text in read_texts(source, indices):
            texts.append(text[:max_bytes])
            total += len(texts[-1])
            if total >= max_bytes:
                break
    return texts


def _sample_key(source: Sequence[Any], dataset: str, version: str, max_bytes: int,
                seed: int) -> str:
    """Hash of the full dataset name and version (the directory name may truncate them), the
    sampling recipe and a cheap fingerprint of the data (its size and first 8 sampled docs)."""
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": BPE_RECIPE_VERSION, "max_bytes": max_bytes, "seed": seed,
                         "num_docs": len(source), "dataset": dataset, "version": version},
                        sort_keys=True).encode())
    for text in read_texts(source, list(itertools.islice(_sample_order(len(source), seed), 8))):
        h.update(hashlib.sha256(text).digest())
    return h.hexdigest()[:12]


def _safe_name(s: str, max_len: int = 48) -> str:
    # Names like 'text_files:/abs/path' or 'synthetic:{json}' get long; the hash disambiguates.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:max_len]


def bpe_cache_dir(data_dir: str, dataset: str, version: str, vocab_size: int,
                  sample_key: str) -> str:
    """<data_dir>/llmjax_tokenizers/<dataset>-<version>-bpe<V>-<sample_key>."""
    name = f"{_safe_name(dataset)}-{_safe_name(version, 120)}-bpe{vocab_size}-{sample_key}"
    return os.path.join(data_dir, "llmjax_tokenizers", name)


def load_or_train_bpe(vocab_size: int, source: Sequence[Any], *, data_dir: str, dataset: str,
                      version: str, sample_bytes: int = DEFAULT_SAMPLE_BYTES,
                      sample_seed: int = 0) -> BPETokenizer:
    """The cached BPE for (dataset, version, vocab_size, sample); trains and saves it on a miss.

    source: the train split, random access over {"text": bytes} records.
    """
    cache = bpe_cache_dir(data_dir, dataset, version, vocab_size,
                          _sample_key(source, dataset, version, sample_bytes, sample_seed))
    path = os.path.join(cache, "tokenizer.json")
    if os.path.exists(path):
        try:
            tok = load_tokenizer_file(path)
            if isinstance(tok, BPETokenizer) and tok.vocab_size == vocab_size:
                return tok
        except UserError as e:
            log.warning("retraining: cached tokenizer unusable: %s", e)
    start = time.perf_counter()
    texts = sample_training_texts(source, max_bytes=sample_bytes, seed=sample_seed)
    tok = train_bpe(texts, vocab_size)
    tok.save(cache)
    log.info("trained bpe:%d on %d docs (%d bytes) in %.1fs -> %s", vocab_size, len(texts),
             sum(map(len, texts)), time.perf_counter() - start, path)
    return tok


def get_tokenizer(spec: str, dataset: str, data_dir: str | None = None, *,
                  sample_bytes: int = DEFAULT_SAMPLE_BYTES, sample_seed: int = 0) -> Tokenizer:
    """The tokenizer for spec ('byte' | 'bpe:<V>'); bpe is trained on dataset's train split once
    and cached under data_dir (see module docstring)."""
    kind, vocab_size = parse_tokenizer_spec(spec)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "hf":
        raise UserError(f"tokenizer {spec!r} is an imported Hugging Face tokenizer (llmjax "
                        "convert --from_hf): it is read from that run's tokenizer/ directory "
                        "and cannot be built from a config")
    from llmjax.data import builders  # lazily: the byte tokenizer needs no dataset

    data_dir = os.path.expanduser(data_dir or builders.default_data_dir())
    source = builders.load_split(dataset, "train", data_dir)
    if len(source) == 0:
        raise UserError(f"tokenizer {spec!r}: dataset {dataset!r} has no train documents")
    version = builders.dataset_version(dataset, data_dir)
    return load_or_train_bpe(vocab_size, source, data_dir=data_dir, dataset=dataset,
                             version=version, sample_bytes=sample_bytes, sample_seed=sample_seed)
