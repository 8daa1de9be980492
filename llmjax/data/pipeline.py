"""The input pipeline: shuffled documents -> tokens -> packed rows -> per-process batches (grain).

Layout. Each epoch is a seeded permutation of the split's documents (seed derived from
(seed, epoch); identity order when shuffle=False). A document is encoded as
``[BOS] + tokenizer.encode(text) + [EOS]``. The epochs are concatenated into one token *stream*
(epoch e+1 follows epoch e directly) and the stream is cut into rows of ``seq_len + 1`` tokens:
global row r is ``stream[r*(L+1) : (r+1)*(L+1)]`` (concatenate-and-split: documents run across
row boundaries; no token is dropped or repeated within a pass). A row gives
``inputs = row[:-1]``, ``targets = row[1:]``. With a finite ``num_epochs`` the stream ends; the last
row and batch are filled with ``pad_id`` and ``loss_mask`` is 0 where the target is padding
(it is 1 everywhere else).

Batches and processes. Global batch k is global rows ``[k*B, (k+1)*B)`` with B = batch_size;
process p of P receives rows ``[k*B + p*b, k*B + (p+1)*b)``, b = B // P. Processes therefore see
disjoint token ranges, and the global batch does not depend on the number of processes.

Random access. Batch k is a pure function of k. Each (dataset, split, tokenizer) is tokenized
once into a *token index* (flat memory-mapped token array + per-document offsets, cached under
``<data_dir>/llmjax_index/``); locating row r is a binary search over the epoch's cumulative
document lengths, so no batch requires reading or tokenizing the ones before it. The pipeline is
``grain.MapDataset.range(start, stop).map(batch_at)``; the iterator state is
``{"next_batch": k, ...}`` and restoring it starts the grain dataset at k, with any number of
worker processes (the state does not depend on `worker_count`). The state also records what it
indexes (dataset version, tokenizer fingerprint, seq_len, batch_size, seed, ...); restoring into
a different configuration is refused with a UserError.

Cost. Building the token index is the one expensive step (one tokenizer pass over the split,
on first use of a (dataset, tokenizer) pair). After that a batch is a few vectorised numpy ops;
batches are computed one step ahead on a background thread. ``worker_count > 0`` moves that work
into grain worker processes, which only pays off when it is costlier than shipping the batch.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmjax import fields
from llmjax.data import builders
from llmjax.data import synthetic as synthetic_lib
from llmjax.data.tokenizer import read_texts
from llmjax.errors import UserError

log = logging.getLogger(__name__)

STATE_FORMAT = "llmjax.data.iterator/1"
_INDEX_CHUNK = 4096  # documents tokenized per call while building a token index


# ----------------------------------------------------------------------------- config

field = fields.field


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``config.data`` section. batch_size is GLOBAL (all processes together), in rows."""

    dataset: str = field("synthetic", "synthetic, pystdlib, text_files[:PATH] or tfds:NAME")
    tokenizer: str = field("byte", "byte, bpe:<vocab_size>, or file:DIR (a saved tokenizer.json, "
                           "e.g. another run's tokenizer/: how fine-tuning keeps its vocabulary)")
    seq_len: int = field(256, "tokens per training row", ge=2)
    batch_size: int = field(32, "rows per optimizer step, over all processes", ge=1)
    seed: int = field(0, "seed of the document order", ge=0)
    data_dir: str | None = field(None, "where datasets are built ($TFDS_DATA_DIR, else "
                                 "~/tensorflow_datasets)")
    worker_count: int = field(0, "grain worker processes (0 = in the training process)", ge=0)
    shuffle: bool = field(True, "shuffle documents each epoch")
    num_epochs: int | None = field(None, "passes over the data; None = repeat forever", ge=1)
    source: str | None = field(None, "the text_files corpus: a file, directory or glob")
    # SyntheticConfig knobs (dataset "synthetic" only). The default holds every knob at its
    # default value, so `--config.data.synthetic.<knob>=v` can set any of them; knobs equal to
    # their defaults are no override (the dataset spec drops them), so a partial mapping works too.
    synthetic: Mapping[str, Any] = field(None, "synthetic generator knobs",
                                         factory=synthetic_lib.default_knobs)

    @property
    def dataset_spec(self) -> str:
        """Canonical dataset spec (name + source + synthetic overrides), see builders."""
        return builders.resolve_dataset(self.dataset, source=self.source, synthetic=self.synthetic)

    @classmethod
    def from_config(cls, config: Any, *, process_count: int = 1,
                    prefix: str = "data.") -> DataConfig:
        """From a mapping / ConfigDict (``config.data``); UserError naming the first bad field
        as ``<prefix><field>`` (``data.`` for a config, ``--`` for command-line flags)."""
        if isinstance(config, DataConfig) and getattr(config, "_checked", False):
            config.check_split(process_count)  # checked when it was made: only the split is new
            return config
        if isinstance(config, DataConfig):
            values = dataclasses.asdict(config)
        elif hasattr(config, "to_dict"):
            values = config.to_dict()
        elif isinstance(config, Mapping):
            values = dict(config)
        else:
            raise UserError(f"data config must be a mapping, got {type(config).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            names = ", ".join(prefix + k for k in unknown)
            raise UserError(f"unknown data config field(s): {names}; known: "
                            f"{', '.join(sorted(fields))}")
        cfg = cls(**values)
        cfg.validate(process_count=process_count, prefix=prefix)
        object.__setattr__(cfg, "_checked", True)  # not a field: no part of equality or asdict
        return cfg

    def check_split(self, process_count: int, prefix: str = "data.") -> None:
        """UserError unless the global batch splits over `process_count` processes."""
        if (isinstance(process_count, bool) or not isinstance(process_count, int)
                or process_count < 1):
            raise UserError(f"process_count must be an integer >= 1, got {process_count!r}")
        if self.batch_size % process_count:
            raise UserError(f"{prefix}batch_size={self.batch_size} is not divisible by "
                            f"process_count={process_count}")

    def validate(self, *, process_count: int = 1, prefix: str = "data.") -> None:
        """UserError naming the first bad field (``<prefix><field>``). Reads no data and writes
        nothing; it does look at the filesystem: a text_files source must exist, be readable and
        hold text files, and data_dir must be (or be creatable as) a writable directory."""
        p = prefix
        hints = fields.hints(DataConfig)
        for f in dataclasses.fields(self):  # types and bounds: the one checker of every section
            value = getattr(self, f.name)
            if isinstance(value, np.integer):
                value = int(value)
            fields.check_value(f"{p}{f.name}", value, hints[f.name], f.metadata)
        self.check_split(process_count, p)
        from llmjax.data.tokenizer import TOKENIZER_SPEC_HELP, parse_tokenizer_spec

        path = tokenizer_file(self.tokenizer)
        if path is not None:
            if not os.path.isfile(os.path.join(path, "tokenizer.json")):
                raise UserError(f"{p}tokenizer={self.tokenizer!r}: no tokenizer.json in {path}")
        else:
            try:
                parse_tokenizer_spec(self.tokenizer)
            except UserError:
                raise UserError(f"{p}tokenizer={self.tokenizer!r}: unknown tokenizer; "
                                f"{TOKENIZER_SPEC_HELP} or file:DIR") from None
        builders.resolve_dataset(self.dataset, source=self.source, synthetic=self.synthetic,
                                 prefix=p)
        builders.check_source(self.dataset, source=self.source, prefix=p)
        builders.check_data_dir(self.data_dir, field=f"{p}data_dir")


def prepare_data(data_cfg: DataConfig) -> builders.PrepareResult:
    """Builds the config's dataset if needed (idempotent; cheap when already built)."""
    result = builders.prepare(data_cfg.dataset_spec, data_cfg.data_dir)
    if not result.already_prepared:
        log.info("prepared %s in %.1fs at %s", result.dataset, result.seconds, result.path)
    return result


def tokenizer_file(spec: str) -> str | None:
    """The directory of a 'file:DIR' tokenizer spec (user paths expanded); None for the others."""
    if isinstance(spec, str) and spec.startswith("file:"):
        return os.path.abspath(os.path.expanduser(spec[len("file:"):]))
    return None


def get_data_tokenizer(data_cfg: DataConfig, *, prepare: bool = True):
    """The config's tokenizer (bpe trained on / cached for the config's dataset, or the saved
    one a file: spec names); prepares the dataset first unless `prepare` is False."""
    from llmjax.data.tokenizer import get_tokenizer, load_tokenizer_file

    if prepare:
        prepare_data(data_cfg)
    path = tokenizer_file(data_cfg.tokenizer)
    if path is not None:
        return load_tokenizer_file(path)
    return get_tokenizer(data_cfg.tokenizer, data_cfg.dataset_spec, data_cfg.data_dir)


# ----------------------------------------------------------------------------- token index


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (12 hex) of the tokenizer's saved files: equal iff it encodes identically."""
    h = hashlib.sha256(str(tokenizer.name).encode())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for name in sorted(os.listdir(tmp)):
            h.update(name.encode())
            with open(os.path.join(tmp, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


class TokenIndex:
    """A split tokenized once: document d is ``tokens[offsets[d]:offsets[d+1]]`` (no BOS/EOS).

    On disk: ``tokens.bin`` (uint16 when vocab_size <= 65536, else int32; memory-mapped),
    ``offsets.npy`` (int64[num_docs + 1]) and ``index.json`` (counts, bytes, provenance).
    Picklable: a copy reopens the files instead of carrying the arrays.
    """

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, "index.json")) as f:
            self.info = json.load(f)
        self.num_docs = int(self.info["num_documents"])
        self.num_tokens = int(self.info["num_tokens"])
        self.num_bytes = int(self.info["num_bytes"])
        self._open()

    def _open(self) -> None:
        self.offsets = np.load(os.path.join(self.path, "offsets.npy"))
        if self.num_tokens:
            self.tokens = np.memmap(os.path.join(self.path, "tokens.bin"), mode="r",
                                    dtype=np.dtype(self.info["dtype"]), shape=(self.num_tokens,))
        else:
            self.tokens = np.zeros(0, dtype=np.dtype(self.info["dtype"]))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "info": self.info, "num_docs": self.num_docs,
                "num_tokens": self.num_tokens, "num_bytes": self.num_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    @property
    def lengths(self) -> np.ndarray:
        """int64[num_docs]: tokens per document (no BOS/EOS)."""
        return np.diff(self.offsets)

    def document(self, d: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[d]:self.offsets[d + 1]], dtype=np.int32)


def _build_token_index(path: str, source, tokenizer, provenance: dict[str, Any]) -> None:
    """Tokenizes every document of `source` into a new index directory at `path` (atomically)."""
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path) + "-")
    try:
        n = len(source)
        offsets = np.zeros(n + 1, dtype=np.int64)
        num_bytes = 0
        with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
            for lo in range(0, n, _INDEX_CHUNK):
                hi = min(n, lo + _INDEX_CHUNK)
                texts = read_texts(source, range(lo, hi))
                num_bytes += sum(len(t) for t in texts)
                encoded = tokenizer.encode_batch(texts)
                offsets[lo + 1:hi + 1] = np.cumsum([len(t) for t in encoded]) + offsets[lo]
                if encoded:
                    f.write(np.concatenate(encoded).astype(dtype).tobytes())
        np.save(os.path.join(tmp, "offsets.npy"), offsets)
        info = {**provenance, "num_documents": n, "num_tokens": int(offsets[-1]),
                "num_bytes": num_bytes, "dtype": np.dtype(dtype).name}
        with open(os.path.join(tmp, "index.json"), "w") as f:
            json.dump(info, f, indent=1, sort_keys=True)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same index first
            if not os.path.exists(os.path.join(path, "index.json")):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def token_index(dataset: str, split: str, tokenizer, data_dir: str | None = None, *,
                fingerprint: str | None = None) -> TokenIndex:
    """The split of a prepared dataset tokenized by `tokenizer`; built on first use, then cached
    at ``<data_dir>/llmjax_index/<dataset_version>/<split>-<tokenizer>-<fingerprint>/``."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir or builders.default_data_dir()))
    version = builders.dataset_version(dataset, data_dir)
    fingerprint = fingerprint or tokenizer_fingerprint(tokenizer)
    name = f"{split}-{str(tokenizer.name).replace(':', '')}-{fingerprint}"
    path = os.path.join(data_dir, "llmjax_index", version, name)
    if not os.path.exists(os.path.join(path, "index.json")):
        source = builders.load_split(dataset, split, data_dir)
        start = time.perf_counter()
        _build_token_index(path, source, tokenizer, {
            "dataset": dataset, "dataset_version": version, "split": split,
            "tokenizer": tokenizer.name, "tokenizer_fingerprint": fingerprint})
        log.info("tokenized %s/%s with %s in %.1fs", dataset, split, tokenizer.name,
                 time.perf_counter() - start)
    return TokenIndex(path)


# ----------------------------------------------------------------------------- packed stream


class PackedStream:
    """Batch index -> this process's batch; a pure function of the index (see module doc)."""

    def __init__(self, *, index: TokenIndex, bos_id: int, eos_id: int, pad_id: int, seq_len: int,
                 batch_size: int, seed: int, shuffle: bool, num_epochs: int | None,
                 process_index: int, process_count: int):
        self.index = index
        self.doc_tokens = index.lengths + 2  # + BOS + EOS
        self.num_docs = index.num_docs
        self.epoch_tokens = int(self.doc_tokens.sum())
        if self.epoch_tokens == 0:
            raise UserError(f"split {index.info['split']!r} of dataset {index.info['dataset']} "
                            "is empty")
        self.row_len = seq_len + 1
        self.global_batch = batch_size
        self.rows_per_process = batch_size // process_count
        self.process_index = process_index
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.bos, self.eos, self.pad = bos_id, eos_id, pad_id
        if num_epochs is None:
            self.total_tokens = None
            self.num_batches = None
        else:
            self.total_tokens = num_epochs * self.epoch_tokens
            rows = -(-self.total_tokens // self.row_len)
            self.num_batches = -(-rows // batch_size)
        self._epochs: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_epochs"] = collections.OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64[num_docs]: document indices in the order epoch `epoch` reads them."""
        if not self.shuffle:
            return np.arange(self.num_docs)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        return rng.permutation(self.num_docs)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(order, cumulative end offset of each document in the epoch, BOS/EOS included)."""
        if epoch not in self._epochs:
            order = self.epoch_order(epoch)
            self._epochs[epoch] = (order, np.cumsum(self.doc_tokens[order]))
            if len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """int32[stop - start]: stream tokens [start, stop); pad_id past the end of the stream."""
        out = np.full(stop - start, self.pad, dtype=np.int32)
        end = stop if self.total_tokens is None else min(stop, self.total_tokens)
        pos = start
        offsets, all_tokens = self.index.offsets, self.index.tokens
        while pos < end:
            epoch, offset = divmod(pos, self.epoch_tokens)
            seg_end = min(end, (epoch + 1) * self.epoch_tokens)
            offset_end = seg_end - epoch * self.epoch_tokens
            order, ends = self._epoch(epoch)
            # Vectorised over positions: slot j holds the position, document d = order[j].
            q = np.arange(offset, offset_end, dtype=np.int64)
            slot = np.searchsorted(ends, q, side="right")
            doc = order[slot]
            within = q - (ends[slot] - self.doc_tokens[doc])  # 0 = BOS, len + 1 = EOS
            body = (within > 0) & (within < self.doc_tokens[doc] - 1)
            seg = np.where(within == 0, self.bos, self.eos).astype(np.int32)
            seg[body] = all_tokens[offsets[doc[body]] + within[body] - 1]
            out[pos - start:seg_end - start] = seg
            pos = seg_end
        return out

    def first_row(self, batch_index: int) -> int:
        """Global row index of this process's first row in batch `batch_index`."""
        return batch_index * self.global_batch + self.process_index * self.rows_per_process

    def batch_at(self, batch_index: int) -> dict[str, np.ndarray]:
        """{"inputs": int32[b, L], "targets": int32[b, L], "loss_mask": float32[b, L]}."""
        b, n = self.rows_per_process, self.row_len
        start = self.first_row(batch_index) * n
        with self._lock:
            rows = self.tokens(start, start + b * n).reshape(b, n)
        if self.total_tokens is None or start + b * n <= self.total_tokens:
            mask = np.ones((b, n - 1), dtype=np.float32)
        else:  # target j of row i is stream token start + i*n + j + 1
            pos = start + np.arange(b)[:, None] * n + np.arange(1, n)[None, :]
            mask = (pos < self.total_tokens).astype(np.float32)
        return {"inputs": np.ascontiguousarray(rows[:, :-1]),
                "targets": np.ascontiguousarray(rows[:, 1:]), "loss_mask": mask}


def rows_of(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """int32[b, L+1]: the packed rows a batch was cut from (inputs plus the last target)."""
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


# ----------------------------------------------------------------------------- iterators


def _ensure_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app they are never parsed.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class DataIterator:
    """Iterator over a PackedStream through grain, with JSON state {"next_batch": k, ...}."""

    def __init__(self, stream: PackedStream, *, worker_count: int, identity: dict[str, Any]):
        self.stream = stream
        self.worker_count = worker_count
        self._identity = identity
        self._next_batch = 0
        self._it = None

    def _start(self):
        import grain

        stop = self.stream.num_batches if self.stream.num_batches is not None else sys.maxsize
        ds = grain.MapDataset.range(self._next_batch, max(stop, self._next_batch))
        ds = ds.map(self.stream.batch_at)
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
        if self.worker_count > 0:
            _ensure_absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.worker_count, per_worker_buffer_size=4))
        return iter(it_ds)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self._next_batch += 1
        return batch

    next = __next__

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the next batch index plus what it is an index into."""
        return {"format": STATE_FORMAT, "next_batch": self._next_batch, **self._identity}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a get_state() dict: the next batch is the one that followed it then."""
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"data iterator state has format {state.get('format')!r}, "
                            f"expected {STATE_FORMAT!r}")
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise UserError(f"data iterator state was saved with {key}={state.get(key)!r} "
                                f"but this run has {key}={value!r}")
        next_batch = state.get("next_batch")
        if isinstance(next_batch, bool) or not isinstance(next_batch, int) or next_batch < 0:
            raise UserError(f"data iterator state has bad next_batch {next_batch!r}")
        self.close()
        self._next_batch = next_batch

    def close(self) -> None:
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
            self._it = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _stream(data_cfg: DataConfig, tokenizer, split: str, *, shuffle: bool,
            num_epochs: int | None, process_index: int, process_count: int
            ) -> tuple[PackedStream, dict[str, Any]]:
    data_cfg = DataConfig.from_config(data_cfg, process_count=process_count)
    if isinstance(process_index, bool) or not isinstance(process_index, int) or not (
            0 <= process_index < process_count):
        raise UserError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    if tokenizer.name != data_cfg.tokenizer and tokenizer_file(data_cfg.tokenizer) is None:
        raise UserError(f"tokenizer {tokenizer.name!r} does not match data.tokenizer "
                        f"{data_cfg.tokenizer!r}")
    spec = data_cfg.dataset_spec
    data_dir = os.path.abspath(os.path.expanduser(data_cfg.data_dir or builders.default_data_dir()))
    builders.prepare(spec, data_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)
    index = token_index(spec, split, tokenizer, data_dir, fingerprint=fingerprint)
    stream = PackedStream(
        index=index, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        seq_len=data_cfg.seq_len, batch_size=data_cfg.batch_size, seed=data_cfg.seed,
        shuffle=shuffle, num_epochs=num_epochs, process_index=process_index,
        process_count=process_count)
    identity = {
        "dataset": spec, "dataset_version": index.info["dataset_version"],  # as indexed
        "split": split, "tokenizer": tokenizer.name, "tokenizer_fingerprint": fingerprint,
        "seq_len": data_cfg.seq_len, "batch_size": data_cfg.batch_size, "seed": data_cfg.seed,
        "shuffle": shuffle, "num_epochs": num_epochs,
    }
    return stream, identity


def make_train_iterator(data_cfg: DataConfig | Mapping[str, Any], tokenizer, *,
                        process_index: int = 0, process_count: int = 1) -> DataIterator:
    """This process's train batches, {"inputs", "targets": int32[b, L], "loss_mask": f32[b, L]}.

    b = batch_size // process_count. Prepares the dataset if it is not built yet.
    """
    data_cfg = DataConfig.from_config(data_cfg, process_count=process_count)
    stream, identity = _stream(data_cfg, tokenizer, "train", shuffle=data_cfg.shuffle,
                               num_epochs=data_cfg.num_epochs, process_index=process_index,
                               process_count=process_count)
    return DataIterator(stream, worker_count=data_cfg.worker_count, identity=identity)


def make_eval_batches(
    data_cfg: DataConfig | Mapping[str, Any], tokenizer, num_batches: int, *,
    process_index: int = 0, process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` batches of one unshuffled pass over the validation split.

    Fewer when the split holds less (the last one padded, loss_mask 0 on padding); the same list
    on every call. UserError if the validation split is empty.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise UserError(f"num_batches must be an integer >= 0, got {num_batches!r}")
    stream, _ = _stream(data_cfg, tokenizer, "validation", shuffle=False, num_epochs=1,
                        process_index=process_index, process_count=process_count)
    return [stream.batch_at(k) for k in range(min(num_batches, stream.num_batches))]


def _finite_train_stream(data_cfg: DataConfig, tokenizer) -> PackedStream | None:
    if data_cfg.num_epochs is None:
        return None
    stream, _ = _stream(data_cfg, tokenizer, "train", shuffle=data_cfg.shuffle,
                        num_epochs=data_cfg.num_epochs, process_index=0, process_count=1)
    return stream


def train_steps_available(data_cfg: DataConfig | Mapping[str, Any], tokenizer) -> int | None:
    """Global train batches (= optimizer steps) that `data.num_epochs` passes supply; None when
    num_epochs is None (the stream repeats forever). The last batch may be partly padding.

    Prepares the dataset and builds its train token index when they are not cached yet (both
    live in the data dir, and training needs them next anyway); writes nothing to a workdir.
    """
    stream = _finite_train_stream(DataConfig.from_config(data_cfg), tokenizer)
    return None if stream is None else int(stream.num_batches)


def check_train_steps(data_cfg: DataConfig | Mapping[str, Any], tokenizer, steps: int, *,
                      field: str = "steps") -> int | None:
    """UserError unless `steps` train batches fit in what `data.num_epochs` supplies (one global
    batch per optimizer step); returns `train_steps_available`. `field` names where `steps`
    came from in the message (e.g. ``steps``)."""
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise UserError(f"{field}={steps!r}: allowed values are integers >= 1")
    data_cfg = DataConfig.from_config(data_cfg)
    stream = _finite_train_stream(data_cfg, tokenizer)
    if stream is None or steps <= stream.num_batches:
        return None if stream is None else int(stream.num_batches)
    # e epochs give ceil(e * T / (B * (L + 1))) batches: >= steps iff e * T > (steps-1) * B * (L+1)
    need = (int(steps) - 1) * stream.global_batch * stream.row_len // stream.epoch_tokens + 1
    raise UserError(
        f"{field}={steps} needs {steps} batches but data.num_epochs={data_cfg.num_epochs} of "
        f"{data_cfg.dataset_spec} gives {stream.num_batches} (batch_size={data_cfg.batch_size}, "
        f"seq_len={data_cfg.seq_len}); allowed: {field} <= {stream.num_batches} or "
        f"data.num_epochs >= {need} (or None = repeat forever)")


def batches_per_epoch(stream: PackedStream) -> float:
    """Global batches one pass over the split fills (fractional)."""
    return stream.epoch_tokens / (stream.row_len * stream.global_batch)


__all__ = [
    "DataConfig", "DataIterator", "PackedStream", "batches_per_epoch", "check_train_steps",
    "get_data_tokenizer", "TokenIndex", "make_eval_batches", "make_train_iterator",
    "prepare_data", "rows_of", "token_index", "train_steps_available", "tokenizer_fingerprint",
]

