"""The grain packing pipeline on real prepared datasets: packing, determinism, sharding, resume."""

from __future__ import annotations

import dataclasses
import json
import math

import ml_collections
import numpy as np
import pytest

from llmjax.data import builders, pipeline
from llmjax.data.pipeline import DataConfig, make_eval_batches, make_train_iterator, rows_of
from llmjax.data.tokenizer import get_tokenizer
from llmjax.errors import UserError

SEQ_LEN = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A text_files corpus of distinct documents of very different lengths (1 to 900 bytes)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(160):
        n = int(rng.integers(0, 120)) if i % 10 else 150  # every 10th spans many rows
        words = " ".join(f"w{int(x)}" for x in rng.integers(0, 50, size=n))
        lines.append(json.dumps({"text": f"doc{i}: {words}".strip()}))
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    data_dir = str(tmp_path_factory.mktemp("data"))
    spec = builders.prepare("text_files", data_dir, source=str(root)).dataset

    def texts(split):
        src = builders.load_split(spec, split, data_dir)
        return [src[i]["text"].decode() for i in range(len(src))]

    return {"source": str(root), "data_dir": data_dir, "train": texts("train"),
            "validation": texts("validation")}


@pytest.fixture(scope="module")
def byte_tok():
    return get_tokenizer("byte", "synthetic")


def _cfg(corpus, **kw) -> DataConfig:
    values = dict(dataset="text_files", source=corpus["source"], data_dir=corpus["data_dir"],
                  tokenizer="byte", seq_len=SEQ_LEN, batch_size=4, seed=3)
    values.update(kw)
    return DataConfig.from_config(values)


def _documents(stream: np.ndarray, tok) -> list[str]:
    """Splits a byte-token stream into documents at BOS ... EOS; asserts the framing is exact."""
    docs, i = [], 0
    while i < len(stream):
        assert stream[i] == tok.bos_id, f"expected BOS at {i}"
        end = i + 1 + int(np.argmax(stream[i + 1:] == tok.eos_id))
        assert stream[end] == tok.eos_id
        docs.append(tok.decode(stream[i + 1:end]))
        i = end + 1
    return docs


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_one_pass_loses_and_duplicates_no_token(corpus, byte_tok):
    it = make_train_iterator(_cfg(corpus, num_epochs=1), byte_tok)
    batches = list(it)
    total = sum(len(t.encode()) + 2 for t in corpus["train"])
    row = SEQ_LEN + 1
    assert len(batches) == math.ceil(math.ceil(total / row) / 4)
    for b in batches:
        assert b["inputs"].shape == b["targets"].shape == b["loss_mask"].shape == (4, SEQ_LEN)
        assert b["inputs"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
    stream = np.concatenate([rows_of(b) for b in batches]).reshape(-1)
    assert sorted(_documents(stream[:total], byte_tok)) == sorted(corpus["train"])
    assert (stream[total:] == byte_tok.pad_id).all() and len(stream) - total < 4 * row
    # loss_mask is 0 exactly where the target is padding.
    mask = np.concatenate([b["loss_mask"] for b in batches])
    target_pos = np.arange(len(mask))[:, None] * row + np.arange(1, row)[None, :]
    np.testing.assert_array_equal(mask, (target_pos < total).astype(np.float32))
    # Documents run across row boundaries: rows are contiguous slices of the stream.
    assert any(r[0] != byte_tok.bos_id for r in np.concatenate([rows_of(b) for b in batches]))


def test_epochs_are_reshuffled_and_each_document_appears_once_per_epoch(corpus, byte_tok):
    batches = list(make_train_iterator(_cfg(corpus, num_epochs=2), byte_tok))
    stream = np.concatenate([rows_of(b) for b in batches]).reshape(-1)
    total = 2 * sum(len(t.encode()) + 2 for t in corpus["train"])
    docs = _documents(stream[:total], byte_tok)
    n = len(corpus["train"])
    assert sorted(docs[:n]) == sorted(corpus["train"]) == sorted(docs[n:])
    assert docs[:n] != docs[n:]  # epoch 1 has its own order
    assert docs[:n] != corpus["train"]  # and epoch 0 is shuffled


def test_no_shuffle_reads_the_split_in_order(corpus, byte_tok):
    batches = _take(make_train_iterator(_cfg(corpus, shuffle=False), byte_tok), 3)
    stream = np.concatenate([rows_of(b) for b in batches]).reshape(-1)
    prefix = np.concatenate([np.concatenate([[byte_tok.bos_id],
                                             byte_tok.encode(t), [byte_tok.eos_id]])
                             for t in corpus["train"][:40]])
    np.testing.assert_array_equal(stream, prefix[:len(stream)])


def test_same_seed_same_batches_other_seed_other_batches(corpus, byte_tok):
    a = _take(make_train_iterator(_cfg(corpus), byte_tok), 6)
    b = _take(make_train_iterator(_cfg(corpus), byte_tok), 6)
    c = _take(make_train_iterator(_cfg(corpus, seed=4), byte_tok), 6)
    assert _same(a, b)
    assert not _same(a, c)


def test_processes_get_disjoint_rows_that_make_up_the_global_batch(corpus, byte_tok):
    whole = _take(make_train_iterator(_cfg(corpus, batch_size=6), byte_tok), 8)
    parts = [_take(make_train_iterator(_cfg(corpus, batch_size=6), byte_tok, process_index=p,
                                       process_count=3), 8) for p in range(3)]
    seen = [set() for _ in range(3)]
    for k in range(8):
        stacked = np.concatenate([rows_of(parts[p][k]) for p in range(3)])
        np.testing.assert_array_equal(stacked, rows_of(whole[k]))
        for p in range(3):
            assert parts[p][k]["inputs"].shape == (2, SEQ_LEN)
            seen[p] |= {r.tobytes() for r in rows_of(parts[p][k])}
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_restore_continues_exactly_without_reading_earlier_batches(corpus, byte_tok, monkeypatch):
    it = make_train_iterator(_cfg(corpus), byte_tok)
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    expected = _take(it, 4)
    requested = []
    real = pipeline.PackedStream.batch_at

    def spy(self, k):
        requested.append(k)
        return real(self, k)

    monkeypatch.setattr(pipeline.PackedStream, "batch_at", spy)
    restored = make_train_iterator(_cfg(corpus), byte_tok)
    restored.set_state(state)
    assert _same(_take(restored, 4), expected)
    assert requested and min(requested) == 5
    assert restored.get_state()["next_batch"] == 9


def test_state_from_another_config_is_refused(corpus, byte_tok):
    state = make_train_iterator(_cfg(corpus), byte_tok).get_state()
    other = make_train_iterator(_cfg(corpus, seq_len=16), byte_tok)
    with pytest.raises(UserError, match="seq_len=32"):
        other.set_state(state)
    with pytest.raises(UserError, match="format"):
        other.set_state({"next_batch": 3})


def test_worker_processes_deliver_the_same_batches_and_resume(corpus, byte_tok):
    it0 = make_train_iterator(_cfg(corpus), byte_tok)
    expected = _take(it0, 10)
    it2 = make_train_iterator(_cfg(corpus, worker_count=2), byte_tok)
    try:
        assert _same(_take(it2, 4), expected[:4])
        state = it0.get_state()
        state["next_batch"] = 7  # resume a 0-worker position in a 2-worker iterator
        it2.set_state(state)
        assert _same(_take(it2, 3), expected[7:10])
    finally:
        it2.close()


def test_eval_batches_are_fixed_and_from_the_validation_split(corpus, byte_tok):
    cfg = _cfg(corpus, seq_len=16, batch_size=2)
    a = make_eval_batches(cfg, byte_tok, 3)
    assert _same(a, make_eval_batches(cfg, byte_tok, 3)) and len(a) == 3
    everything = make_eval_batches(cfg, byte_tok, 10_000)
    total = sum(len(t.encode()) + 2 for t in corpus["validation"])
    assert len(everything) == math.ceil(math.ceil(total / 17) / 2)
    stream = np.concatenate([rows_of(b) for b in everything]).reshape(-1)
    assert _documents(stream[:total], byte_tok) == corpus["validation"]  # unshuffled, whole


def test_bpe_pass_round_trips_every_document(tmp_path):
    cfg = DataConfig.from_config(dict(
        dataset="synthetic", synthetic={"num_train_docs": 150, "num_validation_docs": 10},
        data_dir=str(tmp_path), tokenizer="bpe:320", seq_len=64, batch_size=3, num_epochs=1))
    tok = pipeline.get_data_tokenizer(cfg)
    assert tok.vocab_size == 320
    batches = list(make_train_iterator(cfg, tok))
    stream = np.concatenate([rows_of(b) for b in batches]).reshape(-1)
    is_bos = np.flatnonzero(stream == tok.bos_id)
    is_eos = np.flatnonzero(stream == tok.eos_id)
    assert len(is_bos) == len(is_eos) == 150
    docs = [tok.decode(stream[b + 1:e]) for b, e in zip(is_bos, is_eos, strict=True)]
    src = builders.load_split(cfg.dataset_spec, "train", str(tmp_path))
    assert sorted(docs) == sorted(src[i]["text"].decode() for i in range(len(src)))
    assert (stream[is_eos[-1] + 1:] == tok.pad_id).all()


@pytest.mark.parametrize(("field", "value", "match"), [
    ("seq_len", 1, "data.seq_len"),
    ("batch_size", 0, "data.batch_size"),
    ("worker_count", -1, "data.worker_count"),
    ("num_epochs", 0, "data.num_epochs"),
    ("dataset", "imagenet", "data.dataset='imagenet': unknown dataset"),
    ("tokenizer", "sentencepiece", "data.tokenizer='sentencepiece': unknown tokenizer"),
    ("shuffle", "yes", "data.shuffle"),
    ("seq_lenn", 8, "data.seq_lenn"),
    ("synthetic", {"lexicon_sise": 3}, "data.synthetic.lexicon_sise"),
])
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(UserError, match=match):
        DataConfig.from_config({"dataset": "synthetic", field: value})


def test_config_batch_size_must_divide_over_processes(corpus, byte_tok):
    with pytest.raises(UserError, match="batch_size=6 is not divisible by process_count=4"):
        DataConfig.from_config({"batch_size": 6}, process_count=4)
    with pytest.raises(UserError, match="process_index"):
        make_train_iterator(_cfg(corpus), byte_tok, process_index=2, process_count=2)


def test_config_from_config_dict():
    cd = ml_collections.ConfigDict(dataclasses.asdict(DataConfig()))
    cd.seq_len = 64
    cd.synthetic = ml_collections.ConfigDict({"num_train_docs": 10})
    cfg = DataConfig.from_config(cd)
    assert cfg.seq_len == 64 and cfg.dataset_spec == 'synthetic:{"num_train_docs":10}'


# ----------------------------------------------------------------------------- finite data


def test_train_steps_available_counts_the_batches_num_epochs_supply(corpus, byte_tok):
    assert pipeline.train_steps_available(_cfg(corpus), byte_tok) is None  # repeats forever
    assert pipeline.check_train_steps(_cfg(corpus), byte_tok, 10**9) is None
    for epochs in (1, 3):
        cfg = _cfg(corpus, num_epochs=epochs)
        available = pipeline.train_steps_available(cfg, byte_tok)
        assert available == len(list(make_train_iterator(cfg, byte_tok)))
        assert pipeline.check_train_steps(cfg, byte_tok, available) == available


def test_steps_past_finite_data_are_refused_with_the_fix(corpus, byte_tok):
    cfg = _cfg(corpus, num_epochs=1)
    available = pipeline.train_steps_available(cfg, byte_tok)
    steps = 5 * available + 3
    with pytest.raises(UserError) as e:
        pipeline.check_train_steps(cfg, byte_tok, steps)
    msg = str(e.value)
    assert msg.startswith(f"steps={steps} needs {steps} batches but data.num_epochs=1 of "
                          f"{cfg.dataset_spec} gives {available} ")
    assert "\n" not in msg and f"allowed: steps <= {available} or data.num_epochs >= " in msg
    need = int(msg.split("data.num_epochs >= ")[1].split()[0])
    # The suggested num_epochs is the smallest that suffices.
    enough = pipeline.train_steps_available(_cfg(corpus, num_epochs=need), byte_tok)
    short = pipeline.train_steps_available(_cfg(corpus, num_epochs=need - 1), byte_tok)
    assert short < steps <= enough
    with pytest.raises(UserError, match="steps=0: allowed values are integers >= 1"):
        pipeline.check_train_steps(cfg, byte_tok, 0)
