"""Classification data for `llmjax finetune`: labelled texts -> padded token rows, and a
resumable batch iterator.

Dataset specs (`finetune.dataset`):
  sentiment                 the embedded task (`llmjax.finetune.sentiment`), in the language
                            of the init run's synthetic corpus (the default world otherwise)
  jsonl:TRAIN[,VALIDATION]  the user's files, one JSON object per line with `text` (string) and
                            `label` (integer in [0, num_labels)); without VALIDATION, the lines
                            whose sha256 falls in the lowest 10% are held out
  tfds:NAME                 a TFDS catalog dataset with a text feature (`text` or `sentence`) and
                            `label`, prepared in data.data_dir (e.g. tfds:imdb_reviews,
                            tfds:glue/sst2; building one needs the `tf` extra and network).
                            Validation is its `validation` split, else `test`.

A row is the text's tokens (no BOS/EOS added), cut to seq_len, right-padded with pad_id; the
head reads position length-1 (or the mean of positions < length). The iterator's order is a
permutation per epoch drawn from (data.seed, epoch), so a run resumes to the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmjax.errors import UserError

VALIDATION_FRACTION = 0.1
KINDS = ("sentiment", "jsonl:TRAIN[,VALIDATION]", "tfds:NAME")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split as arrays: inputs int32 [n, seq_len] (pad_id after `lengths`), labels int32 [n],
    lengths int32 [n] (>= 1), heldout bool [n] (sentiment: has a held-out word)."""

    inputs: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    heldout: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def check_dataset_spec(spec: str, field: str = "finetune.dataset") -> None:
    """UserError naming `field` unless `spec` is a known kind whose files exist."""
    kind, _, arg = str(spec).partition(":")
    if spec == "sentiment":
        return
    if kind == "jsonl" and arg:
        for path in arg.split(","):
            if not os.path.isfile(os.path.expanduser(path)):
                raise UserError(f"{field}={spec!r}: no such file {path}")
        return
    if kind == "tfds" and arg:
        return
    raise UserError(f"{field}={spec!r}: unknown dataset; allowed: {', '.join(KINDS)}")


def _hash_fraction(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2.0 ** 64


def _read_jsonl(path: str, num_labels: int) -> tuple[list[str], list[int]]:
    from llmjax.data.builders import jsonl_records

    texts, labels = [], []
    try:
        for lineno, record in jsonl_records(os.path.expanduser(path)):
            label = record.get("label")
            if isinstance(label, bool) or not isinstance(label, int):
                raise UserError(f"{path}:{lineno}: label={label!r}: expected an integer")
            if not 0 <= label < num_labels:
                raise UserError(f"{path}:{lineno}: label={label} is outside [0, {num_labels}) "
                                f"(finetune.num_labels={num_labels})")
            texts.append(record["text"])
            labels.append(label)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if not texts:
        raise UserError(f"{path}: no examples")
    return texts, labels


def _tfds_split(name: str, split: str, data_dir: str | None) -> tuple[list[str], list[int]]:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("finetune.dataset=tfds:...: needs tensorflow-datasets") from None
    from llmjax.data import builders

    data_dir = os.path.expanduser(data_dir or builders.default_data_dir())
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds for an unknown name
        raise UserError(f"finetune.dataset=tfds:{name}: {type(e).__name__}: {e}") from None
    if not builder.is_prepared():
        raise UserError(f"finetune.dataset=tfds:{name} is not prepared in {data_dir}; build it "
                        f"with: pip install 'llmjax[tf]' && tfds build {name} --data_dir="
                        f"{data_dir} --file_format=array_record")
    splits = builder.info.splits
    if split == "validation" and "validation" not in splits:
        split = "test"
    features = builder.info.features.keys()
    text_key = next((k for k in ("text", "sentence") if k in features), None)
    if text_key is None or "label" not in features:
        raise UserError(f"finetune.dataset=tfds:{name}: needs features text (or sentence) and "
                        f"label; has {', '.join(features)}")
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    texts, labels = [], []
    for record in source:
        value = record[text_key]
        texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
        labels.append(int(record["label"]))
    return texts, labels


def _sentiment_split(world: Any, split: str, n: int) -> tuple[list[str], list[int], list[bool]]:
    from llmjax.finetune.sentiment import reviews

    rs = reviews(world, split, n)
    return [r.text for r in rs], [r.label for r in rs], [r.heldout for r in rs]


def load_texts(spec: str, num_labels: int, *, world: Any = None, data_dir: str | None = None,
               train_examples: int = 4000, validation_examples: int = 1000
               ) -> dict[str, tuple[list[str], list[int], list[bool]]]:
    """split -> (texts, labels, heldout flags) for 'train' and 'validation'."""
    check_dataset_spec(spec)
    kind, _, arg = spec.partition(":")
    if spec == "sentiment":
        if num_labels != 2:
            raise UserError(f"finetune.num_labels={num_labels}: the sentiment task has 2 labels")
        return {"train": _sentiment_split(world, "train", train_examples),
                "validation": _sentiment_split(world, "validation", validation_examples)}
    if kind == "jsonl":
        paths = arg.split(",")
        texts, labels = _read_jsonl(paths[0], num_labels)
        if len(paths) > 1:
            val = _read_jsonl(paths[1], num_labels)
            out = {"train": (texts, labels), "validation": val}
        else:
            held = [_hash_fraction(t) < VALIDATION_FRACTION for t in texts]
            pick = lambda keep: ([t for t, h in zip(texts, held, strict=True) if h == keep],
                                 [y for y, h in zip(labels, held, strict=True) if h == keep])
            out = {"train": pick(False), "validation": pick(True)}
            if not out["train"][0] or not out["validation"][0]:
                raise UserError(f"finetune.dataset={spec!r}: too few lines to hold out "
                                f"{VALIDATION_FRACTION:.0%} for validation; give a VALIDATION "
                                "file")
    else:
        out = {s: _tfds_split(arg, s, data_dir) for s in ("train", "validation")}
        for s, (_, labels) in out.items():
            bad = [y for y in labels if not 0 <= y < num_labels]
            if bad:
                raise UserError(f"finetune.dataset={spec!r} ({s}): label={bad[0]} is outside "
                                f"[0, {num_labels}) (finetune.num_labels={num_labels})")
    return {s: (t, y, [False] * len(y)) for s, (t, y) in out.items()}


def encode(texts: Sequence[str], labels: Sequence[int], heldout: Sequence[bool], tokenizer: Any,
           seq_len: int) -> Split:
    """Token rows cut to seq_len and right-padded (an empty text keeps one pad token)."""
    ids = tokenizer.encode_batch(list(texts))
    n = len(ids)
    inputs = np.full((n, seq_len), tokenizer.pad_id, np.int32)
    lengths = np.ones(n, np.int32)
    for i, row in enumerate(ids):
        row = np.asarray(row, np.int32)[:seq_len]
        inputs[i, :len(row)] = row
        lengths[i] = max(len(row), 1)
    return Split(inputs, np.asarray(labels, np.int32), lengths, np.asarray(heldout, bool))


class BatchIterator:
    """Endless batches {inputs, labels, lengths} of this process's rows of each global batch;
    `get_state`/`set_state` (the next batch's index) make a resumed run see the same batches."""

    def __init__(self, split: Split, batch_size: int, seed: int, *, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1):
        if len(split) < batch_size:
            raise UserError(f"data.batch_size={batch_size} exceeds the {len(split)} training "
                            "examples")
        self.split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
        self.local = batch_size // process_count
        self.offset = process_index * self.local
        self.per_epoch = len(split) // batch_size  # the remainder of an epoch is dropped
        self.index = 0

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.split))
        return np.random.default_rng([self.seed, epoch, 0x5E17]).permutation(len(self.split))

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, k = divmod(self.index, self.per_epoch)
        rows = self._order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        rows = rows[self.offset:self.offset + self.local]
        self.index += 1
        s = self.split
        return {"inputs": s.inputs[rows], "labels": s.labels[rows], "lengths": s.lengths[rows]}

    def get_state(self) -> dict[str, Any]:
        return {"kind": "classification", "index": self.index, "seed": self.seed}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "classification":
            raise UserError("the checkpoint's data state is not a classification iterator's")
        self.index = int(state["index"])

    def close(self) -> None:
        pass


def eval_batches(split: Split, batch_size: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """The whole split in order, the last batch padded with `valid` = 0 rows."""
    out = []
    for start in range(0, len(split), batch_size):
        stop = min(start + batch_size, len(split))
        fill = batch_size - (stop - start)
        pad = lambda a, v, fill=fill: np.concatenate([a, np.full((fill, *a.shape[1:]), v,
                                                                  a.dtype)])
        out.append({"inputs": pad(split.inputs[start:stop], pad_id),
                    "labels": pad(split.labels[start:stop], 0),
                    "lengths": pad(split.lengths[start:stop], 1),
                    "valid": pad(np.ones(stop - start, np.float32), 0.0)})
    return out


def load_splits(exp: Any, tokenizer: Any) -> dict[str, Split]:
    """A classification run's train and validation examples, encoded for `exp.data.seq_len`.
    The sentiment task speaks the language of the init run's corpus (else of this run's)."""
    from llmjax.eval.probe import world_of

    ft = exp.finetune
    world = None
    if ft.dataset == "sentiment":
        source = exp
        if ft.init_from:
            from llmjax.finetune.init import init_run

            source = init_run(ft).exp
        world, _ = world_of(source)
    texts = load_texts(ft.dataset, ft.num_labels, world=world, data_dir=exp.data.data_dir,
                       train_examples=ft.train_examples,
                       validation_examples=ft.validation_examples)
    return {s: encode(*texts[s], tokenizer, exp.data.seq_len) for s in ("train", "validation")}
