"""Tokenizers: round trips, decode safety, byte lengths, the BPE cache, spec errors, HF loading."""

import glob
import json
import os

import numpy as np
import pytest

from llmjax.data import tokenizer as tk
from llmjax.errors import UserError

WORDS = ["the", "cat", "sat", "on", "a", "mat", "naïve", "café", "日本語", "Ωμέγα", "🙂", "42",
         "don't", "x=y+1;", "  ", "\t", "über", "Привет"]


SYLLABLES = ["ka", "lo", "mi", "ne", "su", "tra", "vo", "zé", "ß", "ño", "ят", "语"]


def _corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Documents of fixed words plus random syllable words (enough distinct pairs to merge)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        words = []
        for _ in range(int(rng.integers(5, 60))):
            if rng.random() < 0.5:
                words.append(WORDS[int(rng.integers(0, len(WORDS)))])
            else:
                parts = rng.integers(0, len(SYLLABLES), int(rng.integers(1, 4)))
                words.append("".join(SYLLABLES[i] for i in parts))
        docs.append(" ".join(words) + ".\n")
    return docs


def _random_text(rng: np.random.Generator, n: int) -> str:
    """Valid text mixing ASCII, controls, whitespace and 2/3/4-byte code points (no surrogates)."""
    pools = [(0, 0x80), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x10000), (0x10000, 0x110000)]
    chars = []
    for _ in range(n):
        lo, hi = pools[int(rng.integers(0, len(pools)))]
        chars.append(chr(int(rng.integers(lo, hi))))
    return "".join(chars)


def _tricky_texts() -> list[str]:
    rng = np.random.default_rng(1)
    return [
        "", " ", "  leading spaces", "trailing  \n", "\n\n\ttabs\r\n", "x", "\x00\x01\x7f",
        "<|eos|> <|bos|><|pad|> special names as text", "<|unused_0|>",
        "Héllo wörld, 日本語 🙂 🇫🇷 e\u0301", "don't 'quote' \"dq\"", "a" * 500,
        "\ufffd replacement char itself", "\u00a0nbsp\u2028line sep",
        *[_random_text(rng, int(rng.integers(1, 80))) for _ in range(40)],
    ]


@pytest.fixture(scope="module")
def bpe() -> tk.BPETokenizer:
    return tk.train_bpe(_corpus(400), 400)


@pytest.fixture(scope="module")
def byte() -> tk.ByteTokenizer:
    return tk.ByteTokenizer()


def test_byte_layout_and_every_byte_value(byte):
    assert (byte.vocab_size, byte.pad_id, byte.bos_id, byte.eos_id, byte.name) == (
        259, 256, 257, 258, "byte")
    every = bytes(range(256))
    ids = byte.encode(every)
    assert ids.dtype == np.int32 and ids.tolist() == list(range(256))
    assert byte.decode(ids) == every.decode("utf-8", errors="replace")
    assert byte.encode("日").tolist() == [0xE6, 0x97, 0xA5]


def test_byte_encodes_invalid_utf8_losslessly(byte):
    raw = b"ok\xff\xfe\xc3(\xe6\x97 end\x80"
    ids = byte.encode(raw)
    assert bytes(ids.astype(np.uint8).tolist()) == raw
    assert byte.decode(ids) == raw.decode("utf-8", errors="replace")


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_round_trip_valid_text(kind, byte, bpe):
    tok = byte if kind == "byte" else bpe
    specials = {tok.pad_id, tok.bos_id, tok.eos_id}
    texts = _tricky_texts()
    for text in texts:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert tok.decode(ids) == text
        assert not specials & set(ids.tolist()), f"special id emitted for {text!r}"
        assert ((0 <= ids) & (ids < tok.vocab_size)).all()
        assert tok.encode(text.encode("utf-8")).tolist() == ids.tolist()
    batch = tok.encode_batch(texts[:10] + [t.encode() for t in texts[10:]])
    assert [b.tolist() for b in batch] == [tok.encode(t).tolist() for t in texts]


def test_bpe_compresses_training_like_text(bpe):
    text = _corpus(50, seed=7)[3]
    assert len(bpe.encode(text)) < 0.6 * len(text.encode())


def test_bpe_invalid_utf8_becomes_replacement_chars(bpe):
    raw = b"ok\xff\xfe\xc3(\xe6\x97 end\x80"
    expected = raw.decode("utf-8", errors="replace")
    assert bpe.encode(raw).tolist() == bpe.encode(expected).tolist()
    assert bpe.decode(bpe.encode(raw)) == expected
    assert [x.tolist() for x in bpe.encode_batch([raw, "a"])] == [
        bpe.encode(expected).tolist(), bpe.encode("a").tolist()]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_lone_surrogates_become_replacement_char(kind, byte, bpe):
    tok = byte if kind == "byte" else bpe
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
    assert [x.tolist() for x in tok.encode_batch(["a\udfffb", "c"])] == [
        tok.encode("a\ufffdb").tolist(), tok.encode("c").tolist()]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_decode_never_raises(kind, byte, bpe):
    tok = byte if kind == "byte" else bpe
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.integers(-5, tok.vocab_size + 5, int(rng.integers(0, 40)))
        out = tok.decode(ids)
        assert isinstance(out, str)
        in_range = [int(i) for i in ids if 0 <= i < tok.vocab_size]
        n_out = len(ids) - len(in_range)
        assert out.count("\ufffd") >= n_out
        tok.decode(ids.tolist(), skip_special_tokens=False)
    assert tok.decode([tok.bos_id, tok.eos_id, tok.pad_id]) == ""
    assert tok.decode([tok.bos_id, tok.eos_id], skip_special_tokens=False) == "<|bos|><|eos|>"
    assert tok.decode([-1, 10**30, tok.vocab_size]) == "\ufffd" * 3
    assert tok.decode(np.array([], dtype=np.int32)) == ""


def test_partial_utf8_decodes_to_replacement(byte, bpe):
    assert byte.decode([0xE6, 0x97]) == "\ufffd"
    assert byte.decode([0xE6, 0x97, 0xA5]) == "日"
    assert byte.decode([ord("a"), 0xE6, ord("b")]) == "a\ufffdb"
    ids = bpe.encode("日本語🙂")
    for cut in range(len(ids)):
        assert isinstance(bpe.decode(ids[:cut]), str)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_token_byte_lengths_match_text_bytes(kind, byte, bpe):
    tok = byte if kind == "byte" else bpe
    lengths = tok.token_byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (tok.vocab_size,)
    assert lengths[[tok.pad_id, tok.bos_id, tok.eos_id]].tolist() == [0, 0, 0]
    for text in _tricky_texts() + _corpus(20, seed=3):
        assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_bpe_token_bytes_agree_with_hf_decoder(bpe):
    # Our byte table versus HF's own ByteLevel decoder, token by token (both replace bad UTF-8).
    lengths = bpe.token_byte_lengths()
    specials = {bpe.pad_id, bpe.bos_id, bpe.eos_id}
    for i in range(bpe.vocab_size):
        if i in specials:
            continue
        assert bpe.decode([i]) == bpe._hf.decode([i]), i
        assert lengths[i] >= 1  # no fillers: this corpus has enough pairs for 400 ids


def test_bpe_layout(bpe):
    assert (bpe.name, bpe.vocab_size) == ("bpe:400", 400)
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2)
    # All 256 single bytes are tokens, so every byte sequence is encodable.
    singles = [i for i, n in enumerate(bpe.token_byte_lengths()) if n == 1]
    assert len(singles) == 256


def test_bpe_fills_vocab_when_text_runs_out_of_merges():
    tok = tk.train_bpe(["ab ab ab", "cd"], 300)
    assert tok.vocab_size == 300 and tok.name == "bpe:300"
    lengths = tok.token_byte_lengths()
    fillers = [i for i in range(300) if tok._hf.id_to_token(i).startswith("<|unused_")]
    assert len(fillers) > 0 and (lengths[fillers] == 0).all()
    assert tok.decode(fillers) == ""
    assert tok.decode(tok.encode("ab cd <|unused_0|>")) == "ab cd <|unused_0|>"


def test_bpe_training_is_deterministic():
    a = tk.train_bpe(_corpus(200, seed=5), 350)
    b = tk.train_bpe(_corpus(200, seed=5), 350)
    assert a._hf.to_str() == b._hf.to_str()


@pytest.mark.parametrize("spec", ["foo", "", "bpe", "bpe:", "bpe:abc", "bpe:100", "bpe:258",
                                  "bpe:-300", "bpe:1e3", "BYTE", " byte", "bpe:5000000",
                                  "bpe:512:x"])
def test_bad_specs_raise_user_error(spec):
    with pytest.raises(UserError) as e:
        tk.get_tokenizer(spec, "anything")
    msg = str(e.value)
    assert repr(spec) in msg and "bpe:<vocab_size>" in msg and "259" in msg
    assert "\n" not in msg


def test_good_specs():
    assert tk.parse_tokenizer_spec("byte") == ("byte", 259)
    assert tk.parse_tokenizer_spec("bpe:259") == ("bpe", 259)
    assert tk.spec_vocab_size("bpe:32768") == 32768
    # byte needs no dataset at all
    assert tk.get_tokenizer("byte", "no-such-dataset").name == "byte"
    with pytest.raises(UserError):
        tk.train_bpe(["x"], 10)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_save_and_load(kind, byte, bpe, tmp_path):
    tok = byte if kind == "byte" else bpe
    path = tok.save(str(tmp_path / "run"))
    assert os.path.basename(path) == "tokenizer.json"
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".tmp")]
    for target in (path, str(tmp_path / "run")):
        loaded = tk.load_tokenizer_file(target)
        assert type(loaded) is type(tok)
        assert (loaded.name, loaded.vocab_size, loaded.pad_id, loaded.bos_id, loaded.eos_id) == (
            tok.name, tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id)
        for text in _tricky_texts()[:20]:
            assert loaded.encode(text).tolist() == tok.encode(text).tolist()
        assert (loaded.token_byte_lengths() == tok.token_byte_lengths()).all()


def test_load_rejects_bad_files(tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(UserError, match="garbage.json"):
        tk.load_tokenizer_file(str(garbage))
    with pytest.raises(UserError, match="missing.json"):
        tk.load_tokenizer_file(str(tmp_path / "missing.json"))
    # A valid HF tokenizer that rewrites text (prefix space) or lacks our specials is refused.
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.save(str(tmp_path / "foreign.json"))
    with pytest.raises(UserError, match="foreign.json.*prefix space.*<\\|pad\\|>"):
        tk.load_tokenizer_file(str(tmp_path / "foreign.json"))


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_transformers_loads_and_encodes_identically(kind, byte, bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = byte if kind == "byte" else bpe
    path = tok.save(str(tmp_path))
    texts = [t for t in _tricky_texts() if "<|" not in t] + _corpus(10, seed=9)
    hf_file = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
    hf_dir = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert (hf_dir.pad_token_id, hf_dir.bos_token_id, hf_dir.eos_token_id) == (
        tok.pad_id, tok.bos_id, tok.eos_id)
    assert len(hf_dir) == tok.vocab_size
    for text in texts:
        ids = tok.encode(text).tolist()
        assert hf_file(text)["input_ids"] == ids
        assert hf_dir(text)["input_ids"] == ids
        assert hf_dir.decode(ids) == text
    # from_pretrained keeps special names inside text as text, as we do.
    text = "a <|eos|> b"
    assert hf_dir(text)["input_ids"] == tok.encode(text).tolist()


# ---- training sample and cache ---------------------------------------------------------------


def _source(n_docs: int, seed: int = 0) -> list[dict]:
    return [{"text": d.encode()} for d in _corpus(n_docs, seed)]


def test_training_sample_is_a_deterministic_permutation():
    source = [{"text": f"doc{i:04d}".encode()} for i in range(1000)]
    everything = tk.sample_training_texts(source, max_bytes=10**9, seed=0)
    assert sorted(everything) == sorted(r["text"] for r in source)
    assert everything[:50] != sorted(everything[:50])  # spread, not a prefix of the split
    part = tk.sample_training_texts(source, max_bytes=70, seed=0)
    assert part == everything[:10]  # 7-byte docs: stops once 70 bytes are reached
    assert tk.sample_training_texts(source, max_bytes=70, seed=0) == part
    assert tk.sample_training_texts(source, max_bytes=70, seed=1) != part
    assert tk.sample_training_texts([{"text": b"x" * 100}], max_bytes=30) == [b"x" * 30]


def _tokenizer_files(data_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(data_dir, "llmjax_tokenizers", "*", "tokenizer.json")))


def test_bpe_cache_trains_once_and_keys_on_dataset_version_and_size(tmp_path, monkeypatch):
    data_dir = str(tmp_path)
    source = _source(300)
    kw = dict(data_dir=data_dir, dataset="toy", version="1.0.0", sample_bytes=50_000)
    first = tk.load_or_train_bpe(320, source, **kw)
    [path] = _tokenizer_files(data_dir)
    assert os.path.basename(os.path.dirname(path)).startswith("toy-1.0.0-bpe320-")
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.startswith(".tmp")]
    mtime = os.stat(path).st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite a cached tokenizer")

    monkeypatch.setattr(tk, "train_bpe", no_training)
    second = tk.load_or_train_bpe(320, source, **kw)
    assert second._hf.get_vocab() == first._hf.get_vocab()
    assert second._hf.to_str() == first._hf.to_str()
    assert os.stat(path).st_mtime_ns == mtime
    monkeypatch.undo()

    tk.load_or_train_bpe(330, source, **kw)
    tk.load_or_train_bpe(320, source, **{**kw, "version": "1.0.1"})
    tk.load_or_train_bpe(320, source, **{**kw, "dataset": "other/cfg:2"})
    tk.load_or_train_bpe(320, _source(300, seed=1), **kw)  # same name+version, different data
    tk.load_or_train_bpe(320, source, **{**kw, "sample_bytes": 40_000})
    files = _tokenizer_files(data_dir)
    assert len(files) == 6
    assert any("other_cfg_2-1.0.0-bpe320-" in f for f in files)


def test_bpe_cache_survives_a_killed_training(tmp_path, monkeypatch):
    data_dir = str(tmp_path)
    source = _source(100)
    kw = dict(data_dir=data_dir, dataset="toy", version="1", sample_bytes=20_000)
    real_save = tk.Tokenizer.save

    def dies_while_writing(self, directory):
        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "replace", killed)
        try:
            return real_save(self, directory)
        finally:
            monkeypatch.undo()

    monkeypatch.setattr(tk.Tokenizer, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        tk.load_or_train_bpe(300, source, **kw)
    assert _tokenizer_files(data_dir) == []
    leftovers = glob.glob(os.path.join(data_dir, "llmjax_tokenizers", "*", "*"))
    assert leftovers == []
    # A corrupt cache file (written by something else) is retrained, not trusted.
    tok = tk.load_or_train_bpe(300, source, **kw)
    [path] = _tokenizer_files(data_dir)
    with open(path, "w") as f:
        f.write("{truncated")
    again = tk.load_or_train_bpe(300, source, **kw)
    assert again._hf.to_str() == tok._hf.to_str()
    with open(path) as f:
        json.load(f)


def _builders():
    try:
        from llmjax.data import builders
    except ImportError:
        return None
    return builders if hasattr(builders, "load_split") and hasattr(builders, "prepare") else None


@pytest.mark.skipif(_builders() is None, reason="llmjax.data.builders has no load_split yet")
def test_get_tokenizer_trains_on_the_prepared_train_split(tmp_path, monkeypatch):
    builders = _builders()
    text_dir = tmp_path / "texts"
    text_dir.mkdir()
    for i, doc in enumerate(_corpus(200)):
        (text_dir / f"{i:03d}.txt").write_text(doc)
    data_dir = str(tmp_path / "data")
    dataset = builders.prepare("text_files", data_dir=data_dir, source=str(text_dir)).dataset
    tok = tk.get_tokenizer("bpe:300", dataset, data_dir, sample_bytes=100_000)
    assert tok.name == "bpe:300"
    [path] = _tokenizer_files(data_dir)
    assert builders.dataset_version(dataset, data_dir) in path
    mtime = os.stat(path).st_mtime_ns
    monkeypatch.setattr(tk, "train_bpe", None)  # a cache hit must not train
    again = tk.get_tokenizer("bpe:300", dataset, data_dir, sample_bytes=100_000)
    assert again._hf.to_str() == tok._hf.to_str()
    assert _tokenizer_files(data_dir) == [path] and os.stat(path).st_mtime_ns == mtime
    train = builders.load_split(dataset, "train", data_dir)
    text = train[0]["text"].decode()
    assert tok.decode(tok.encode(text)) == text
