"""Dataset builders: real TFDS ArrayRecord builds in tmp data dirs, read back with data_source."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from llmjax.data import builders, synthetic
from llmjax.errors import UserError

SMALL = {"num_train_docs": 120, "num_validation_docs": 15}


def _texts(name: str, split: str, data_dir: str) -> list[str]:
    src = builders.load_split(name, split, data_dir)
    return [src[i]["text"].decode("utf-8") for i in range(len(src))]


def _in_validation(doc_id: str) -> bool:
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return h < 0.05 * 2**64


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("synth"))
    builders.prepare("synthetic", data_dir, synthetic=SMALL)
    return data_dir


def test_synthetic_documents_are_the_generators_in_order(synth_dir):
    cfg = synthetic.SyntheticConfig.from_dict(SMALL)
    spec = builders.resolve_dataset("synthetic", synthetic=SMALL)
    for split in ("train", "validation"):
        assert _texts(spec, split, synth_dir) == list(synthetic.generate_documents(cfg, split))


def test_synthetic_metadata_carries_the_generator_config(synth_dir):
    spec = builders.resolve_dataset("synthetic", synthetic=SMALL)
    meta = builders.dataset_metadata(spec, synth_dir)
    cfg = synthetic.SyntheticConfig.from_dict(SMALL)
    assert meta["synthetic_config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert meta["num_documents"] == {"train": 120, "validation": 15}
    # The generator's entropy of the validation split, computed at build time (test_entropy).
    from llmjax.data.entropy import split_entropy

    assert meta["entropy"] == json.loads(json.dumps(split_entropy(cfg, "validation")))


def test_synthetic_knobs_select_the_directory(synth_dir):
    first = builders.prepare("synthetic", synth_dir, synthetic=SMALL)
    assert first.already_prepared
    other = builders.prepare("synthetic", synth_dir, synthetic={**SMALL, "seed": 7})
    assert not other.already_prepared and other.path != first.path
    assert builders.dataset_version(first.dataset) != builders.dataset_version(other.dataset)
    # The same knobs spelled three ways are one dataset; a default value is no override.
    assert (builders.resolve_dataset("synthetic:num_train_docs=120,num_validation_docs=15")
            == builders.resolve_dataset('synthetic:{"num_validation_docs":15,"num_train_docs":120}')
            == first.dataset)
    assert builders.resolve_dataset("synthetic:seed=0") == "synthetic"


def test_bad_synthetic_override_names_the_field():
    with pytest.raises(UserError, match="num_trian_docs"):
        builders.resolve_dataset("synthetic:num_trian_docs=5")
    with pytest.raises(UserError, match="num_train_docs"):
        builders.resolve_dataset("synthetic", synthetic={"num_train_docs": -1})


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="dataset='wikitext': unknown dataset"):
        builders.resolve_dataset("wikitext")
    with pytest.raises(UserError, match="unknown split"):
        builders.load_split("synthetic", "test", "/nonexistent")


def test_load_reports_not_prepared(tmp_path):
    with pytest.raises(UserError, match="not prepared"):
        builders.load_split("synthetic", "train", str(tmp_path))


# ----------------------------------------------------------------------------- failed builds


def test_exception_in_generator_leaves_nothing_readable(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.generate_documents

    def failing(config, split):
        for i, doc in enumerate(real(config, split)):
            if i == 50:
                calls["n"] += 1
                raise RuntimeError("generator died")
            yield doc

    monkeypatch.setattr(synthetic, "generate_documents", failing)
    with pytest.raises(RuntimeError, match="generator died"):
        builders.prepare("synthetic", str(tmp_path), synthetic=SMALL)
    assert calls["n"] == 1
    assert not builders.is_prepared(builders.resolve_dataset("synthetic", synthetic=SMALL),
                                    str(tmp_path))
    with pytest.raises(UserError, match="not prepared"):
        builders.load_split(builders.resolve_dataset("synthetic", synthetic=SMALL), "train",
                            str(tmp_path))
    monkeypatch.setattr(synthetic, "generate_documents", real)
    result = builders.prepare("synthetic", str(tmp_path), synthetic=SMALL)
    assert not result.already_prepared
    assert result.num_documents == {"train": 120, "validation": 15}


def test_killed_prepare_is_not_read_as_complete_and_rebuilds(tmp_path):
    overrides = {"num_train_docs": 40_000, "num_validation_docs": 10}
    spec = builders.resolve_dataset("synthetic", synthetic=overrides)
    code = ("import sys; from llmjax.data import builders; "
            f"builders.prepare({spec!r}, {str(tmp_path)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("llmjax_synthetic/*/incomplete.*")):
            assert proc.poll() is None, "prepare finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # let it write some records
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob("llmjax_synthetic/*/incomplete.*"))
    assert not builders.is_prepared(spec, str(tmp_path))
    with pytest.raises(UserError, match="not prepared"):
        builders.load_split(spec, "validation", str(tmp_path))
    result = builders.prepare(spec, str(tmp_path))
    assert not result.already_prepared
    assert len(builders.load_split(spec, "train", str(tmp_path))) == 40_000
    assert not list(tmp_path.glob("llmjax_synthetic/*/incomplete.*"))  # leftovers cleaned


# ----------------------------------------------------------------------------- pystdlib


def test_pystdlib_splits_files_by_path_hash(tmp_path):
    result = builders.prepare("pystdlib", str(tmp_path))
    meta = builders.dataset_metadata("pystdlib", str(tmp_path))
    assert meta["python_version"] == platform.python_version()
    root = Path(sysconfig.get_paths()["stdlib"])
    expected = {"train": [], "validation": []}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if {"site-packages", "dist-packages", "__pycache__"} & set(rel.parts):
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text.strip():
            expected["validation" if _in_validation(rel.as_posix()) else "train"].append(text)
    assert result.num_documents == {s: len(v) for s, v in expected.items()}
    assert sorted(_texts("pystdlib", "validation", str(tmp_path))) == sorted(expected["validation"])
    again = builders.prepare("pystdlib", str(tmp_path))
    assert again.already_prepared and again.path == result.path


# ----------------------------------------------------------------------------- text_files


def _write_corpus(root: Path) -> dict[str, str]:
    """A corpus of 60 documents whose ids we know; returns id -> text."""
    docs = {}
    (root / "sub").mkdir(parents=True)
    for i in range(30):
        text = f"plain file {i} says hello {i * 7}\n"
        (root / "sub" / f"f{i:02d}.txt").write_text(text)
        docs[f"sub/f{i:02d}.txt#0"] = text
    lines = []
    for i in range(30):
        lines.append(json.dumps({"text": f"json doc {i} ünïcode", "meta": i}))
        docs[f"data.jsonl:{i + 1}#0"] = f"json doc {i} ünïcode"
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "ignored.md").write_text("not a corpus file")
    return docs


def test_text_files_documents_and_split_rule(tmp_path):
    corpus = tmp_path / "corpus"
    docs = _write_corpus(corpus)
    data_dir = str(tmp_path / "data")
    result = builders.prepare("text_files", data_dir, source=str(corpus))
    expected = {"train": [], "validation": []}
    for doc_id, text in docs.items():
        expected["validation" if _in_validation(doc_id) else "train"].append(text)
    if not expected["validation"]:  # the documented fallback: smallest hash moves
        lowest = min(docs, key=lambda d: hashlib.sha256(d.encode()).digest()[:8])
        expected["train"].remove(docs[lowest])
        expected["validation"].append(docs[lowest])
    for split in ("train", "validation"):
        assert sorted(_texts(result.dataset, split, data_dir)) == sorted(expected[split])
    # A glob naming the same files builds the same documents.
    globbed = builders.prepare("text_files", data_dir, source=str(corpus / "**" / "*.txt"))
    n_txt = sum(1 for d in docs if d.endswith(".txt#0"))
    assert sum(globbed.num_documents.values()) == n_txt


def test_text_files_few_documents_still_get_a_validation_split(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    result = builders.prepare("text_files", str(tmp_path / "d"), source=str(tmp_path))
    assert result.num_documents == {"train": 1, "validation": 1}


def test_text_files_edit_builds_a_new_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    first = builders.prepare("text_files", str(tmp_path / "d"), source=str(tmp_path))
    (tmp_path / "c.txt").write_text("gamma")
    second = builders.prepare("text_files", str(tmp_path / "d"), source=str(tmp_path))
    assert not second.already_prepared and second.path != first.path
    assert sum(second.num_documents.values()) == 3


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 and \xff\xfe bytes")
    result = builders.prepare("text_files", str(tmp_path / "d"), source=str(tmp_path))
    texts = _texts(result.dataset, "train", str(tmp_path / "d")) + _texts(
        result.dataset, "validation", str(tmp_path / "d"))
    assert sorted(texts) == sorted(["fine text", "caf\ufffd and \ufffd\ufffd bytes"])
    meta = builders.dataset_metadata(result.dataset, str(tmp_path / "d"))
    assert meta["invalid_utf8_documents"] == 1


@pytest.mark.parametrize("content", [
    b"short words " * 40,
    "no-whitespace-ü€".encode() * 37,
])
def test_chunk_bytes_keeps_every_byte_and_character(content):
    chunks = builders.chunk_bytes(content, max_bytes=64)
    assert b"".join(chunks) == content
    assert all(0 < len(c) <= 64 for c in chunks)
    for c in chunks:
        c.decode("utf-8")  # never cut inside a character
    if b" " in content:
        assert all(c.endswith(b" ") for c in chunks[:-1])


def test_bad_sources_fail_before_writing(tmp_path):
    data_dir = tmp_path / "d"
    with pytest.raises(UserError, match="source=.*missing: no such file or directory"):
        builders.prepare("text_files", str(data_dir), source=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="the directory holds no .txt or .jsonl file"):
        builders.prepare("text_files", str(data_dir), source=str(empty))
    assert not data_dir.exists()  # refused before the lock file is written
    (empty / "blank.txt").write_text("  \n\n")
    with pytest.raises(UserError, match="empty corpus"):
        builders.prepare("text_files", str(data_dir), source=str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: .*'text'"):
        builders.prepare("text_files", str(data_dir), source=str(broken))
    (broken / "x.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: invalid JSON"):
        builders.prepare("text_files", str(data_dir), source=str(broken))
    with pytest.raises(UserError, match="source is required for dataset=text_files"):
        builders.prepare("text_files", str(data_dir))
    assert not list(data_dir.glob("llmjax_text_files/*/*"))


# ----------------------------------------------------------------------------- TFDS catalog


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow installed: the no-TF message does not apply")
def test_catalog_dataset_without_tensorflow_names_the_extra(tmp_path):
    with pytest.raises(UserError, match=r"llmjax\[tf\]"):
        builders.prepare("tfds:tiny_shakespeare", str(tmp_path))
    assert not list(tmp_path.glob("tiny_shakespeare/*/*"))


def test_unknown_catalog_dataset(tmp_path):
    with pytest.raises(UserError, match="unknown TFDS catalog dataset 'no_such_ds'"):
        builders.prepare("tfds:no_such_ds", str(tmp_path))
    assert not list(tmp_path.iterdir())  # refused before the lock file is written


def test_default_data_dir_follows_env(monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "/some/where")
    assert builders.default_data_dir() == "/some/where"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert builders.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


def test_prepared_catalog_dataset_reads_without_tensorflow(tmp_path):
    """A catalog-style builder (registered by name, 'train' + 'test', feature 'content')."""
    import tensorflow_datasets as tfds

    class LlmjaxTestCatalog(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("2.0.0")
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"content": tfds.features.Text(), "label": tfds.features.Scalar(dtype=np.int64)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(20, "tr"),
                    "test": self._generate_examples(5, "te")}

        def _generate_examples(self, n, prefix):
            for i in range(n):
                yield i, {"content": f"{prefix} line {i}", "label": i}

    LlmjaxTestCatalog(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    result = builders.prepare("tfds:llmjax_test_catalog#content", str(tmp_path))
    assert result.already_prepared  # nothing to build, so no TensorFlow needed
    assert result.num_documents == {"train": 20, "validation": 5}
    val = sorted(_texts("tfds:llmjax_test_catalog#content", "validation", str(tmp_path)))
    assert val == sorted(f"te line {i}" for i in range(5))  # no validation split: 'test'
    with pytest.raises(UserError, match="no feature 'text'"):
        builders.load_split("tfds:llmjax_test_catalog", "train", str(tmp_path))
    version = builders.dataset_version("tfds:llmjax_test_catalog#content", str(tmp_path))
    assert "2.0.0" in version and "/" not in version
    from llmjax.data import pipeline
    from llmjax.data.tokenizer import get_tokenizer

    cfg = pipeline.DataConfig(dataset="tfds:llmjax_test_catalog#content", data_dir=str(tmp_path),
                              tokenizer="byte", seq_len=8, batch_size=2)
    tok = get_tokenizer("byte", cfg.dataset_spec)
    batches = pipeline.make_eval_batches(cfg, tok, 100)
    stream = np.concatenate([pipeline.rows_of(b) for b in batches]).reshape(-1)
    docs = tok.decode(stream[stream != tok.pad_id], skip_special_tokens=False)
    assert docs.startswith("<|bos|>") and docs.endswith("<|eos|>")
    assert sorted(docs[7:-7].split("<|eos|><|bos|>")) == val
