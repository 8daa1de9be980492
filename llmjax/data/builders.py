"""The dataset registry: every corpus is a TFDS dataset built locally into ArrayRecord files.

A dataset is named by one string, its *spec*, which is everything needed to find or build it:

- ``synthetic`` — the embedded generator (`llmjax.data.synthetic`) at its default config;
  ``synthetic:{"num_train_docs":300}`` (JSON) or ``synthetic:num_train_docs=300,seed=1`` carries
  `SyntheticConfig` overrides. Different knobs build into a different directory: the TFDS config
  name is ``v<generator version>-<sha256 of the full config>``; the config is stored in the
  dataset's metadata.
- ``pystdlib`` — the ``.py`` files of the running Python's standard library (site-packages
  excluded); config name ``py<X.Y.Z>-<hash of the file list>``; Python version in the metadata.
- ``text_files:PATH`` — the user's ``.txt`` / ``.jsonl`` files (a file, a directory searched
  recursively, or a glob). A ``.txt`` file is one document; a ``.jsonl`` line is one document (its
  ``text`` field). The config name hashes the file list with sizes and mtimes, so edited files
  build a new dataset instead of silently reusing a stale one.
- ``tfds:NAME[#FEATURE]`` — any TFDS catalog dataset (``tfds:tiny_shakespeare``, ``tfds:lm1b``,
  ``tfds:c4/en:3.0.1``) read through its text feature (default ``text``). Building one needs
  TensorFlow (``pip install 'llmjax[tf]'``) and network, or files in the manual download
  directory; reading one already built needs neither. Our ``validation`` is the catalog's
  ``validation`` split, or its ``test`` split when it has none.

Split rule (pystdlib, text_files): a document is in ``validation`` iff the first 8 bytes of
sha256(its id), read as an integer, fall in the lowest `VALIDATION_FRACTION` of the range. The id
is the relative POSIX path for pystdlib (whole files go to one split) and ``relpath#chunk`` /
``relpath:line#chunk`` for text_files. If that leaves a split empty and there are >= 2 documents,
the document with the smallest hash moves to validation (largest to train).
Documents longer than `MAX_DOC_BYTES` are cut into chunks at the last whitespace before the limit
(a hard cut at a character boundary if there is none); each chunk is a document. Invalid UTF-8 is
replaced by U+FFFD (counted in the metadata). Whitespace-only documents are skipped.

TFDS writes into an ``incomplete.*`` sibling directory and renames it at the end, so a killed or
failed build never leaves a directory that reads as prepared. Builds hold a file lock per dataset
(``<data_dir>/.locks/``), so concurrent processes build once; a build under the lock first deletes
``incomplete.*`` leftovers of killed builds of the same dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
import importlib.util
import io
import json
import logging
import os
import platform
import re
import shutil
import socket
import sys
import sysconfig
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from llmjax.data import synthetic as synthetic_lib
from llmjax.errors import UserError

BUILDER_VERSION = "1.0.0"  # bump when a builder's output changes for the same inputs
VALIDATION_FRACTION = 0.05
MAX_DOC_BYTES = 1 << 20
TEXT_SUFFIXES = (".txt", ".jsonl")
SPLITS = ("train", "validation")
DATASET_NAMES = ("synthetic", "pystdlib", "text_files", "tfds:<catalog name>")


def default_data_dir() -> str:
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    path: str  # the dataset's version directory
    already_prepared: bool
    dataset: str  # canonical spec
    num_documents: dict[str, int]
    seconds: float


# ----------------------------------------------------------------------------- spec parsing


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(arg: str) -> dict[str, Any]:
    """'{"a":1}' (JSON object) or 'a=1,b=x' (values parsed as JSON when they parse) -> dict."""
    arg = arg.strip()
    if not arg:
        return {}
    if arg.startswith("{"):
        try:
            value = json.loads(arg)
        except json.JSONDecodeError as e:
            raise UserError(f"synthetic overrides are not valid JSON: {arg!r} ({e})") from None
        if not isinstance(value, dict):
            raise UserError(f"synthetic overrides must be a JSON object: {arg!r}")
        return value
    out = {}
    for item in arg.split(","):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"bad synthetic override {item!r}; expected KEY=VALUE")
        out[key.strip()] = _parse_value(val.strip())
    return out


def synthetic_config(overrides: Mapping[str, Any] | None = None, *,
                     field: str = "synthetic") -> synthetic_lib.SyntheticConfig:
    """SyntheticConfig with `overrides` applied; UserError naming ``<field>.<knob>`` for an
    unknown or bad knob (`field`: where the overrides came from, e.g. ``data.synthetic``)."""
    cls = synthetic_lib.SyntheticConfig
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        names = ", ".join(f"{field}.{k}" for k in unknown)
        raise UserError(f"unknown synthetic knob(s) {names}; known: {', '.join(known)}")
    try:
        return cls.from_dict(overrides)
    except UserError as e:
        msg = str(e)
        if field != "synthetic" and msg.startswith("synthetic"):  # name where the value came from
            msg = field + msg[len("synthetic"):]
        raise UserError(msg) from None
    except (TypeError, ValueError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"bad {field} config: {msg}") from None


def explicit_synthetic(synthetic: Mapping[str, Any] | None, *,
                       field: str = "synthetic") -> dict[str, Any]:
    """The knobs of a `synthetic` mapping that differ from their defaults, each checked for type
    and sign (UserError naming ``<field>.<knob>``). A knob set to its default is no override:
    `config.data.synthetic` holds every knob, and the dataset's identity must not depend on
    whether a default was spelled out."""
    if synthetic is None:
        return {}
    if hasattr(synthetic, "to_dict"):
        synthetic = synthetic.to_dict()
    if not isinstance(synthetic, Mapping):
        raise UserError(f"{field} must be a mapping of synthetic knobs, got {synthetic!r}")
    defaults = synthetic_lib.default_knobs()
    out = {}
    for key, value in synthetic.items():
        value = synthetic_lib.check_knob(str(key), value, field)
        if value != defaults[key]:
            out[key] = value
    return out


def _config_json(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=list))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Spec:
    kind: str  # 'synthetic' | 'pystdlib' | 'text_files' | 'tfds'
    arg: str = ""  # canonical: JSON overrides | absolute source | catalog name
    feature: str = "text"  # tfds only

    def __str__(self) -> str:
        if self.kind == "tfds":
            return f"tfds:{self.arg}" + ("" if self.feature == "text" else f"#{self.feature}")
        return self.kind + (f":{self.arg}" if self.arg else "")


def resolve_dataset(
    name: str, *, source: str | None = None, synthetic: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> str:
    """Canonical spec string for a dataset name plus optional source / synthetic overrides.

    `source` fills in ``text_files``; `synthetic` knobs are merged over those in the name, knobs
    equal to their defaults dropped (see `explicit_synthetic`). Two specs are equal iff they name
    the same data. Reads no file. UserErrors name ``<prefix>dataset``, ``<prefix>source`` or
    ``<prefix>synthetic.<knob>`` (prefix e.g. ``data.`` for `config.data`, ``--`` for flags).
    """
    return str(_resolve(name, source=source, synthetic=synthetic, prefix=prefix))


# A TFDS catalog name: [namespace:]name[/config][:version] (version X, X.Y or X.Y.Z, each part
# digits or *). Lenient on purpose: it only refuses what cannot be a name (empty, spaces, ../).
_TFDS_NAME = re.compile(r"([A-Za-z][A-Za-z0-9_-]*:)?[A-Za-z0-9][A-Za-z0-9_.-]*"
                        r"(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)?(:[0-9*]+(\.[0-9*]+){0,2})?")
_TFDS_FEATURE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATASET_HELP = "allowed: synthetic[:KNOBS], pystdlib, text_files[:PATH], tfds:NAME[#FEATURE]"


def _resolve(
    name: str, *, source: str | None = None, synthetic: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> _Spec:
    field = f"{prefix}dataset"
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{field}={name!r}: must be a non-empty string; {_DATASET_HELP}")
    if source is not None and not isinstance(source, str):
        raise UserError(f"{prefix}source={source!r}: must be a path string")
    kind, _, arg = name.strip().partition(":")
    explicit = explicit_synthetic(synthetic, field=f"{prefix}synthetic")
    if kind == "synthetic":
        try:
            from_name = parse_overrides(arg)
        except UserError as e:
            raise UserError(f"{field}={name!r}: {e}") from None
        unknown = sorted(set(from_name) - set(synthetic_lib.default_knobs()))
        if unknown:
            raise UserError(f"{field}={name!r}: unknown synthetic knob(s) {', '.join(unknown)}; "
                            f"known: {', '.join(synthetic_lib.default_knobs())}")
        cfg = synthetic_config({**from_name, **explicit}, field=f"{prefix}synthetic")
        default = _config_json(synthetic_config({}))
        diff = {k: v for k, v in _config_json(cfg).items() if default.get(k) != v}
        return _Spec("synthetic", json.dumps(diff, sort_keys=True, separators=(",", ":"))
                     if diff else "")
    spec = _resolve_other(name, kind, arg, source=source, prefix=prefix)
    if explicit:
        key, value = next(iter(explicit.items()))
        raise UserError(f"{prefix}synthetic.{key}={value!r} is set but {field}={name!r}: "
                        "synthetic knobs apply only to dataset synthetic; leave "
                        f"{prefix}synthetic at its defaults")
    return spec


def _resolve_other(name: str, kind: str, arg: str, *, source: str | None, prefix: str) -> _Spec:
    field = f"{prefix}dataset"
    if kind == "pystdlib":
        if arg:
            raise UserError(f"{field}={name!r}: dataset pystdlib takes no argument")
        return _Spec("pystdlib")
    if kind == "text_files":
        src = arg or source
        if arg and source and os.path.abspath(os.path.expanduser(source)) != os.path.abspath(
                os.path.expanduser(arg)):
            raise UserError(f"{prefix}source={source!r} disagrees with {field}={name!r}; "
                            "give the path once")
        if not src or not src.strip():
            raise UserError(f"{prefix}source is required for {field}=text_files: a .txt/.jsonl "
                            "file, a directory or a glob")
        return _Spec("text_files", os.path.abspath(os.path.expanduser(src)))
    if kind == "tfds":
        catalog, _, feature = arg.partition("#")
        if not _TFDS_NAME.fullmatch(catalog) or (feature and not _TFDS_FEATURE.fullmatch(
                feature)):
            raise UserError(f"{field}={name!r}: expected tfds:NAME[/CONFIG][:VERSION][#FEATURE] "
                            "(e.g. tfds:tiny_shakespeare, tfds:c4/en:3.0.1, tfds:lm1b#text)")
        return _Spec("tfds", catalog, feature or "text")
    raise UserError(f"{field}={name!r}: unknown dataset; {_DATASET_HELP}")


def _source_field(name: str, prefix: str) -> str:
    """The field a text_files path came from: the dataset spec (text_files:PATH) or source."""
    return f"{prefix}dataset" if name.strip().startswith("text_files:") else f"{prefix}source"


def check_source(name: str, *, source: str | None = None, prefix: str = "") -> None:
    """Cheap checks of a text_files corpus path before anything is built: it exists, is readable
    and holds a .txt/.jsonl file (stops at the first). UserError naming the field; a no-op for
    the other datasets."""
    spec = _resolve(name, source=source, prefix=prefix)
    if spec.kind != "text_files":
        return
    field, path = _source_field(name, prefix), spec.arg
    if glob.has_magic(path):
        if next((p for p in glob.iglob(path, recursive=True) if _is_text_file(Path(p))),
                None) is None:
            raise UserError(f"{field}={path}: the glob matches no .txt or .jsonl file")
        return
    p = Path(path)
    if not p.exists():
        raise UserError(f"{field}={path}: no such file or directory")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise UserError(f"{field}={path}: not readable (permission denied)")
    if p.is_file():
        if p.suffix not in TEXT_SUFFIXES:
            raise UserError(f"{field}={path}: not a .txt or .jsonl file")
        return
    if not p.is_dir():
        raise UserError(f"{field}={path}: neither a file nor a directory")
    try:
        for dirpath, dirnames, filenames in os.walk(p, onerror=_reraise):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(_is_text_file(Path(dirpath) / f) for f in filenames if not f.startswith(".")):
                return
    except OSError as e:
        raise UserError(f"{field}={path}: cannot read {e.filename or 'a directory'} "
                        f"({e.strerror or e})") from None
    raise UserError(f"{field}={path}: the directory holds no .txt or .jsonl file")


def _reraise(e: OSError) -> None:
    raise e


def _is_text_file(p: Path) -> bool:
    return p.suffix in TEXT_SUFFIXES and p.is_file()


def check_data_dir(data_dir: str | None, *, field: str = "data_dir") -> str:
    """The absolute data directory; UserError naming `field` unless it is (or can be created as)
    a writable directory: builds, locks and token indexes are written there. Writes nothing."""
    if data_dir is not None and not isinstance(data_dir, str):
        raise UserError(f"{field}={data_dir!r}: must be a path string")
    shown = data_dir if data_dir else f"None (default {default_data_dir()})"
    path = Path(_data_dir(data_dir))
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise UserError(f"{field}={shown}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise UserError(f"{field}={shown}: {what}, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == path else f"cannot be created: {probe} is"
        raise UserError(f"{field}={shown}: {what} not writable")
    return str(path)


# ----------------------------------------------------------------------------- documents


def _is_whitespace_only(data: bytes) -> bool:
    return not data.strip()


def _cut_point(buf: bytes) -> int:
    """Where to cut a full `buf`: after its last whitespace, else before its last character."""
    cut = max(buf.rfind(c) for c in (b"\n", b" ", b"\t", b"\r")) + 1
    if cut > 0:
        return cut
    cut = len(buf) - 1
    while cut > 0 and (buf[cut] & 0xC0) == 0x80:  # back off over UTF-8 continuation bytes
        cut -= 1
    return cut or len(buf)


def chunk_bytes(data: bytes, max_bytes: int = MAX_DOC_BYTES) -> list[bytes]:
    """Cuts `data` into pieces of <= max_bytes at whitespace; their concatenation is `data`."""
    chunks = []
    while len(data) > max_bytes:
        cut = _cut_point(data[:max_bytes])
        chunks.append(data[:cut])
        data = data[cut:]
    if data:
        chunks.append(data)
    return chunks


def _iter_file_chunks(path: Path, max_bytes: int = MAX_DOC_BYTES) -> Iterator[bytes]:
    """Streams a file as chunks of <= max_bytes (never holds more than one chunk + carry)."""
    with open(path, "rb") as f:
        carry = b""
        while True:
            block = f.read(max_bytes - len(carry))
            buf = carry + block
            if not block:
                if buf:
                    yield buf
                return
            if len(buf) < max_bytes:
                carry = buf
                continue
            cut = _cut_point(buf)
            yield buf[:cut]
            carry = buf[cut:]


def _decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 with U+FFFD replacement; returns (text, had_invalid_bytes)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def jsonl_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each non-blank line of a .jsonl file, every record an object
    with a string `text` field (invalid UTF-8 replaced); UserError naming path:line otherwise."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            text, _ = _decode(line)
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f"{path}:{lineno}: expected an object with a string 'text' field")
            yield lineno, record


def _iter_jsonl(path: Path, rel: str) -> Iterator[tuple[str, bytes]]:
    for lineno, record in jsonl_records(path):
        data = record["text"].encode("utf-8", errors="replace")
        for i, chunk in enumerate(chunk_bytes(data)):
            yield f"{rel}:{lineno}#{i}", chunk


def _iter_source_documents(base: Path, rels: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """(document id, raw bytes) for every non-blank document of the files, in a fixed order."""
    for rel in rels:
        path = base / rel
        if rel.endswith(".jsonl"):
            yield from ((i, d) for i, d in _iter_jsonl(path, rel) if not _is_whitespace_only(d))
        else:
            for i, chunk in enumerate(_iter_file_chunks(path)):
                if not _is_whitespace_only(chunk):
                    yield f"{rel}#{i}", chunk


def _hash64(doc_id: str) -> int:
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")


_VALIDATION_CUT = int(VALIDATION_FRACTION * 2**64)


@dataclasses.dataclass(frozen=True)
class _SplitPlan:
    """The split rule plus its one fallback, fixed by a pre-pass over the document ids."""

    to_validation: str | None = None  # an id moved to validation (validation would be empty)
    to_train: str | None = None  # an id moved to train (train would be empty)

    def split_of(self, split_id: str) -> str:
        if split_id == self.to_validation:
            return "validation"
        if split_id == self.to_train:
            return "train"
        return "validation" if _hash64(split_id) < _VALIDATION_CUT else "train"


def _plan_splits(ids: Iterator[str]) -> tuple[_SplitPlan, int]:
    n = n_val = 0
    lo = hi = None  # (hash, id) with the smallest / largest hash
    for doc_id in ids:
        h = _hash64(doc_id)
        n += 1
        n_val += h < _VALIDATION_CUT
        lo = min(lo, (h, doc_id)) if lo else (h, doc_id)
        hi = max(hi, (h, doc_id)) if hi else (h, doc_id)
    if n >= 2 and n_val == 0:
        return _SplitPlan(to_validation=lo[1]), n
    if n_val == n and n > 0:
        return _SplitPlan(to_train=hi[1]), n
    return _SplitPlan(), n


# ----------------------------------------------------------------------------- sources on disk


def _list_text_files(source: str) -> tuple[Path, list[str]]:
    """(base directory, sorted relative paths) of the .txt/.jsonl files a source names."""
    path = Path(source)
    if glob.has_magic(source):
        prefix = source[: min(source.find(c) for c in "*?[" if c in source)]
        base = Path(prefix if prefix.endswith(os.sep) else os.path.dirname(prefix) or ".")
        files = [Path(p) for p in glob.glob(source, recursive=True)]
    elif path.is_dir():
        base = path
        files = [p for p in path.rglob("*")]
    elif path.is_file():
        base = path.parent
        if path.suffix not in TEXT_SUFFIXES:
            raise UserError(f"source file {source} is not .txt or .jsonl")
        files = [path]
    else:
        raise UserError(f"source not found: {source}")
    rels = sorted(
        p.relative_to(base).as_posix() for p in files
        if p.is_file() and p.suffix in TEXT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )
    if not rels:
        raise UserError(f"empty corpus: no .txt or .jsonl files in {source}")
    return base, rels


def _files_fingerprint(base: Path, rels: Sequence[str], *, with_mtime: bool) -> str:
    lines = []
    for rel in rels:
        st = (base / rel).stat()
        lines.append(f"{rel}\t{st.st_size}" + (f"\t{st.st_mtime_ns}" if with_mtime else ""))
    return _sha("\n".join(lines))


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[Path, tuple[str, ...]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        rels += [(Path(dirpath) / f).relative_to(root).as_posix()
                 for f in filenames if f.endswith(".py")]
    return root, tuple(sorted(rels))


# ----------------------------------------------------------------------------- TFDS builders


@functools.lru_cache(maxsize=1)
def _tfds():
    """Imports tensorflow_datasets quietly (it is slow to import and chatty)."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds


@contextlib.contextmanager
def _quiet():
    """TFDS logs warnings for expected situations and prints to stdout; keep stdout clean."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def _builder_classes() -> dict[str, type]:
    """Defines the builder classes on first use (TFDS is slow to import; keep import cheap)."""
    tfds = _tfds()

    class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(BUILDER_VERSION)
        # No checksums file to find (TFDS's lookup would import the absent importlib_resources).
        code_path = None

        def __init__(self, *, metadata: dict[str, Any], **kwargs):
            self._llmjax_metadata = metadata
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=self.__doc__,
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                metadata=tfds.core.MetadataDict(self._llmjax_metadata),
                disable_shuffling=True,  # stored order = generation order (keys are 0..n-1)
            )

        def _split_generators(self, dl_manager):
            counts = self._llmjax_metadata["num_documents"]
            return {s: self._generate_examples(s) for s in SPLITS if counts.get(s)}

        def _documents(self, split: str) -> Iterator[bytes]:
            raise NotImplementedError

        def _generate_examples(self, split: str):
            for i, text in enumerate(self._documents(split)):
                yield i, {"text": text}

    class LlmjaxSynthetic(_Base, skip_registration=True):
        """The embedded synthetic corpus (llmjax.data.synthetic)."""

        def __init__(self, *, synthetic_config, **kwargs):
            self._synthetic_config = synthetic_config
            super().__init__(**kwargs)

        def _documents(self, split):
            for doc in synthetic_lib.generate_documents(self._synthetic_config, split):
                data = doc.encode("utf-8", errors="replace")
                yield from (c for c in chunk_bytes(data) if not _is_whitespace_only(c))

    class LlmjaxPystdlib(_Base, skip_registration=True):
        """Source files of the running Python's standard library."""

        def __init__(self, *, root: Path, rels: Sequence[str], **kwargs):
            self._root, self._rels = root, rels
            super().__init__(**kwargs)

        def _documents(self, split):
            plan = _SplitPlan()
            for rel in self._rels:
                if plan.split_of(rel) == split:
                    text, bad = _decode((self._root / rel).read_bytes())
                    self.info.metadata["invalid_utf8_files"] += bad
                    data = text.encode("utf-8")
                    yield from (c for c in chunk_bytes(data) if not _is_whitespace_only(c))

    class LlmjaxTextFiles(_Base, skip_registration=True):
        """The user's own .txt / .jsonl corpus."""

        def __init__(self, *, base: Path, rels: Sequence[str], plan: _SplitPlan, **kwargs):
            self._base, self._rels, self._plan = base, rels, plan
            super().__init__(**kwargs)

        def _documents(self, split):
            for doc_id, data in _iter_source_documents(self._base, self._rels):
                if self._plan.split_of(doc_id) == split:
                    text, bad = _decode(data)
                    self.info.metadata["invalid_utf8_documents"] += bad
                    yield text.encode("utf-8")

    return {"synthetic": LlmjaxSynthetic, "pystdlib": LlmjaxPystdlib,
            "text_files": LlmjaxTextFiles}


@dataclasses.dataclass
class _Plan:
    """What a spec builds to: builder class + kwargs + TFDS config name (+ lazy pre-pass)."""

    spec: _Spec
    builder_name: str
    config_name: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]

    def builder(self, data_dir: str):
        tfds = _tfds()
        cls = _builder_classes()[self.spec.kind]
        with _quiet():
            return cls(
                data_dir=data_dir,
                config=tfds.core.BuilderConfig(name=self.config_name, description=str(self.spec)),
                file_format="array_record",
                metadata=self.metadata,
                **self.kwargs,
            )


def _plan(spec: _Spec, *, scan: bool = False) -> _Plan:
    """The build plan; `scan` runs the pre-pass (reads sources: counts, split fallback, errors)."""
    if spec.kind == "synthetic":
        cfg = synthetic_config(json.loads(spec.arg) if spec.arg else {})
        cfg_json = _config_json(cfg)
        config_name = f"v{cfg.version}-{_sha(json.dumps(cfg_json, sort_keys=True))[:12]}"
        metadata = {"spec": str(spec), "synthetic_config": cfg_json}
        if scan:
            from llmjax.data.entropy import split_entropy

            counts = {"train": cfg.num_train_docs, "validation": cfg.num_validation_docs}
            metadata["num_documents"] = counts
            # What a perfect model scores on the validation split: ground truth for a fit's E.
            metadata["entropy"] = split_entropy(cfg, "validation")
        return _Plan(spec, "llmjax_synthetic", config_name, {"synthetic_config": cfg}, metadata)
    if spec.kind == "pystdlib":
        root, rels = _stdlib_files()
        version = platform.python_version()
        fp = _files_fingerprint(root, rels, with_mtime=False)
        metadata = {
            "spec": str(spec), "python_version": version, "python": sys.version,
            "implementation": platform.python_implementation(), "stdlib": str(root),
            "num_files": len(rels), "validation_fraction": VALIDATION_FRACTION,
            "split_rule": "sha256(relative path)[:8] < fraction * 2**64 -> validation",
            "invalid_utf8_files": 0,
        }
        if scan:
            val = sum(_SplitPlan().split_of(r) == "validation" for r in rels)
            metadata["num_documents"] = {"train": len(rels) - val, "validation": val}
        return _Plan(spec, "llmjax_pystdlib", f"py{version}-{fp[:12]}",
                     {"root": root, "rels": rels}, metadata)
    if spec.kind == "text_files":
        base, rels = _list_text_files(spec.arg)
        fp = _files_fingerprint(base, rels, with_mtime=True)
        metadata = {
            "spec": str(spec), "source": spec.arg, "num_files": len(rels),
            "validation_fraction": VALIDATION_FRACTION, "max_doc_bytes": MAX_DOC_BYTES,
            "split_rule": "sha256(document id)[:8] < fraction * 2**64 -> validation",
            "invalid_utf8_documents": 0,
        }
        kwargs: dict[str, Any] = {"base": base, "rels": rels, "plan": _SplitPlan()}
        if scan:
            split_plan, n = _plan_splits(i for i, _ in _iter_source_documents(base, rels))
            if n == 0:
                raise UserError(f"empty corpus: no non-blank documents in {spec.arg}")
            n_val = sum(split_plan.split_of(i) == "validation"
                        for i, _ in _iter_source_documents(base, rels))
            kwargs["plan"] = split_plan
            metadata["num_documents"] = {"train": n - n_val, "validation": n_val}
            metadata["split_fallback"] = dataclasses.asdict(split_plan)
        return _Plan(spec, "llmjax_text_files", f"src-{fp[:16]}", kwargs, metadata)
    raise AssertionError(spec.kind)


# ----------------------------------------------------------------------------- TFDS catalog


def _catalog_builder(spec: _Spec, data_dir: str):
    tfds = _tfds()
    try:
        with _quiet():
            return tfds.builder(spec.arg, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"unknown TFDS catalog dataset {spec.arg!r} (dataset {spec})") from None
    except ModuleNotFoundError as e:
        raise UserError(f"dataset {spec} needs module {e.name!r}: "
                        "pip install 'llmjax[tf]'") from None
    except Exception as e:  # noqa: BLE001 - catalog builders fail in many ways; report in one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot open TFDS dataset {spec}: {msg}") from None


def _has_network(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _prepare_catalog(spec: _Spec, data_dir: str, builder: Any) -> tuple[Any, bool]:
    if builder.is_prepared():
        return builder, True
    if importlib.util.find_spec("tensorflow") is None:
        raise UserError(
            f"dataset {spec} is not built in {data_dir} and building TFDS catalog datasets needs "
            "TensorFlow: pip install 'llmjax[tf]'")
    manual_dir = Path(data_dir) / "downloads" / "manual"
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
            raise UserError(f"dataset {spec} needs a manual download: put its files in "
                            f"{manual_dir}")
    elif not _has_network():
        raise UserError(f"dataset {spec} must be downloaded but there is no network; build it "
                        f"elsewhere and copy {Path(data_dir) / builder.name} into {data_dir}")
    tfds = _tfds()
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"building {spec} failed: {msg}") from None
    return builder, False


# ----------------------------------------------------------------------------- public API


@contextlib.contextmanager
def _lock(data_dir: str, key: str):
    """Serialises builds of one dataset across processes (multi-host jobs on one filesystem)."""
    lock_dir = Path(data_dir) / ".locks"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock_dir / f"{_sha(key)[:16]}.lock", "w")  # noqa: SIM115 - closed below
    except OSError as e:
        raise UserError(f"data_dir={data_dir}: cannot write there ({e.strerror or e})") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _data_dir(data_dir: str | None) -> str:
    return os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))


def _remove_stale_incomplete(data_path: Path) -> None:
    """Deletes leftovers of killed builds of this dataset (safe: we hold its build lock)."""
    for stale in data_path.parent.glob(f"incomplete.*_{data_path.name}"):
        shutil.rmtree(stale, ignore_errors=True)


def _catalog_split(builder, split: str) -> str:
    """Our split name -> the catalog's: 'validation' falls back to 'test'."""
    if split == "validation" and "validation" not in builder.info.splits:
        return "test"
    return split


def _split_counts(builder, catalog: bool = False) -> dict[str, int]:
    splits = builder.info.splits
    names = {s: _catalog_split(builder, s) if catalog else s for s in SPLITS}
    return {s: int(splits[n].num_examples) if n in splits else 0 for s, n in names.items()}


def prepare(
    name: str, data_dir: str | None = None, source: str | None = None, **options: Any
) -> PrepareResult:
    """Builds dataset `name` under `data_dir` if it is not built yet (idempotent).

    Options: ``synthetic`` (dict of SyntheticConfig overrides). Bad input raises UserError
    before anything is written.
    """
    unknown = sorted(set(options) - {"synthetic"})
    if unknown:
        raise UserError(f"unknown prepare option(s): {', '.join(unknown)}")
    spec = _resolve(name, source=source, synthetic=options.get("synthetic"))
    check_source(name, source=source)
    data_dir = check_data_dir(data_dir)
    start = time.perf_counter()
    # Everything that can fail on bad input runs before the first write (the lock file).
    with _quiet():
        catalog = _catalog_builder(spec, data_dir) if spec.kind == "tfds" else None
        plan = _plan(spec) if catalog is None else None
    with _lock(data_dir, f"{spec.kind}:{spec.arg}"), _quiet():
        if catalog is not None:
            builder, already = _prepare_catalog(spec, data_dir, catalog)
        else:
            builder = plan.builder(data_dir)
            already = builder.is_prepared()
            if not already:
                _remove_stale_incomplete(Path(builder.data_dir))
                try:
                    scanned = _plan(spec, scan=True)
                except OSError as e:
                    raise UserError(f"dataset {spec}: cannot read {e.filename or 'a file'} "
                                    f"({e.strerror or e})") from None
                builder = scanned.builder(data_dir)
                builder.download_and_prepare(file_format="array_record")
    return PrepareResult(path=str(builder.data_dir), already_prepared=already, dataset=str(spec),
                         num_documents=_split_counts(builder, spec.kind == "tfds"),
                         seconds=time.perf_counter() - start)


def _prepared_builder(spec: _Spec, data_dir: str):
    builder = (_catalog_builder(spec, data_dir) if spec.kind == "tfds"
               else _plan(spec).builder(data_dir))
    with _quiet():
        prepared = builder.is_prepared()
    if not prepared:
        raise UserError(f"dataset {spec} is not prepared in {data_dir}; run: llmjax data prepare "
                        f"--dataset={spec} --data_dir={data_dir}")
    return builder


def is_prepared(name: str, data_dir: str | None = None) -> bool:
    spec = _resolve(name)
    data_dir = _data_dir(data_dir)
    builder = (_catalog_builder(spec, data_dir) if spec.kind == "tfds"
               else _plan(spec).builder(data_dir))
    with _quiet():
        return builder.is_prepared()


class _EmptySource:
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError(i)

    def __getitems__(self, indices):
        return [self[i] for i in indices]


class _FeatureSource:
    """A catalog data source viewed as records {"text": bytes} of one text feature."""

    def __init__(self, source, feature: str):
        self._source, self._feature = source, feature

    def __len__(self) -> int:
        return len(self._source)

    def _convert(self, record) -> dict[str, bytes]:
        value = record[self._feature]
        return {"text": value.encode("utf-8") if isinstance(value, str) else bytes(value)}

    def __getitem__(self, i: int) -> dict[str, bytes]:
        return self._convert(self._source[i])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, bytes]]:
        return [self._convert(r) for r in self._source.__getitems__(list(indices))]


def load_split(name: str, split: str, data_dir: str | None = None):
    """Random-access source of a prepared split: len(src), src[i] -> {"text": bytes (UTF-8)}.

    Also supports `src.__getitems__(indices)` (one batched read). UserError if not prepared.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    spec = _resolve(name)
    data_dir = _data_dir(data_dir)
    builder = _prepared_builder(spec, data_dir)
    splits = builder.info.splits
    if spec.kind == "tfds":
        split = _catalog_split(builder, split)
        if split not in splits:
            return _EmptySource()
        if spec.feature not in builder.info.features.keys():
            raise UserError(f"dataset {spec} has no feature {spec.feature!r}; features: "
                            f"{', '.join(builder.info.features.keys())}")
        with _quiet():
            return _FeatureSource(builder.as_data_source(split), spec.feature)
    if split not in splits:
        return _EmptySource()
    with _quiet():
        return builder.as_data_source(split)


def dataset_version(name: str, data_dir: str | None = None) -> str:
    """A filesystem-safe id of the data a spec names: builder, config and version.

    Equal ids mean equal documents; use it as a cache key (tokenizers, token-length indexes).
    """
    spec = _resolve(name)
    if spec.kind == "tfds":
        builder = _catalog_builder(spec, _data_dir(data_dir))
        config = builder.builder_config.name if builder.builder_config else "default"
        feature = "" if spec.feature == "text" else f"-{spec.feature}"
        return f"{builder.name}-{config}-{builder.version}{feature}".replace("/", "_")
    plan = _plan(spec)
    return f"{plan.builder_name}-{plan.config_name}-{BUILDER_VERSION}"


def dataset_metadata(name: str, data_dir: str | None = None) -> dict[str, Any]:
    """The prepared dataset's metadata (generator config, Python version, source...) and counts.
    A synthetic corpus prepared before its metadata held the entropy gets it computed here."""
    spec = _resolve(name)
    builder = _prepared_builder(spec, _data_dir(data_dir))
    meta = dict(builder.info.metadata or {}) if spec.kind != "tfds" else {"spec": str(spec)}
    if spec.kind == "synthetic" and not meta.get("entropy"):
        from llmjax.data.entropy import split_entropy

        meta["entropy"] = split_entropy(synthetic_config(json.loads(spec.arg) if spec.arg
                                                         else {}), "validation")
    meta["num_documents"] = _split_counts(builder, spec.kind == "tfds")
    meta["path"] = str(builder.data_dir)
    return meta
