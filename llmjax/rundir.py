"""A run directory: the one module that names a run's files, decides its status, holds its lock,
compares its config with a requested one, and writes files atomically.

Layout of a run directory (everything the product writes into it):

  config.json      the experiment config the run trains (canonical JSON of the ConfigDict)
  metadata.json    git SHA, package versions, devices, host, start time; resumes appended
  status.json      {"status": one of `Status`, ...}: what the run is doing or how it ended
  metrics.jsonl    one JSON record per line (train / eval / probe / skip), appended
  probes.jsonl     probe records (llmjax probe, or probes during training), appended
  tokenizer/       the run's tokenizer
  checkpoints/     orbax checkpoints, one directory per step
  train.log        stdout+stderr of a run launched by the sweep runner
  run.lock         who holds the run (pid, host, command) while a process trains/probes it

Files are written whole to a temporary sibling, fsynced and renamed over the old one, so a kill
at any moment leaves the previous version readable; JSON-lines files are appended a line at a
time and read with torn-line tolerance (`read_jsonl`).

Imports nothing of llmjax but `errors`: every layer may use it.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from llmjax.errors import UserError

CONFIG = "config.json"
METADATA = "metadata.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
PROBES = "probes.jsonl"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
LOG = "train.log"
LOCK = "run.lock"
# A sweep directory (llmjax sweep): SWEEP plan file, RUNS/<name>/ run directories, each with the
# point's POINT plan and OVERRIDES.
SWEEP = "sweep.json"
RUNS = "runs"
POINT = "point.json"
OVERRIDES = "overrides.json"


class Status(enum.StrEnum):
    """What a run is doing, or how it ended. `status.json` holds exactly one of these."""

    PENDING = "pending"  # nothing has run yet (a sweep point not started)
    RUNNING = "running"  # a process holds the run (see run.lock for which)
    COMPLETE = "complete"  # trained every step; the last checkpoint is saved
    FAILED = "failed"  # stopped by an error (non-finite loss, a crash, exit != 0)
    INTERRUPTED = "interrupted"  # stopped by a signal after saving a checkpoint: resumable


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path beside `path`; on a clean exit it is fsynced and renamed to `path`.

    For writers that want a file name (matplotlib's savefig, pyarrow, tokenizer.save ...). On an
    exception the temporary file is removed and `path` keeps its previous content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    # Keep the extension: some writers pick the format from it (savefig, parquet).
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` atomically (temporary file, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


def atomic_write_json(path: str, obj: Any) -> None:
    """`obj` as indented, key-sorted JSON in `path`, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of JSON-lines file `path` in order ([] if it does not exist); a torn line (a
    writer killed mid-line) and a line that is not a JSON object are skipped."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def read_json(path: str) -> Any:
    """The JSON value in `path`, or None when the file is missing or not JSON (for files whose
    absence or damage only means "not known", e.g. metadata.json)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_json_file(path: str, what: str = "file") -> Any:
    """The JSON value in `path`; None when it does not exist; UserError naming the file when it
    cannot be read or is not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise UserError(f"{path}: expected a {what}, found a directory") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: cannot read {what}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except ValueError as e:
        raise UserError(f"{path}: {what} is not valid JSON ({e})") from None


# --------------------------------------------------------------------------- config identity


def canonical_config(config: Any) -> dict[str, Any]:
    """A config (ConfigDict, mapping or the JSON of one) as plain JSON data: tuples are lists,
    keys are strings. Two configs mean the same run iff their canonical forms are equal."""
    if isinstance(config, str):
        return json.loads(config)
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort(sort_keys=True))
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_fingerprint(config: Any) -> str:
    """sha256 of the canonical config (hex, 16 characters)."""
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_changes(saved: Any, requested: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (saved value, requested value) for every field that differs (a field
    missing on one side shows as `<absent>`)."""
    a, b = _flatten(canonical_config(saved)), _flatten(canonical_config(requested))
    absent = "<absent>"
    return {k: (a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b))
            if a.get(k, absent) != b.get(k, absent)}


def _allowed(field: str, allow: Iterable[str]) -> bool:
    """`field` is named in `allow`, itself or through a section prefix (`optimizer` allows
    `optimizer.lr`)."""
    return any(field == a or field.startswith(a + ".") for a in allow)


def check_config_unchanged(saved: Any, requested: Any, allow: Iterable[str], where: str,
                           flag: str = "--allow_changes") -> dict[str, tuple[Any, Any]]:
    """Raises UserError listing the fields of `requested` that differ from `saved` and are not
    in `allow`; returns the allowed changes (to record them)."""
    allow = [a.strip() for a in allow if a.strip()]
    changes = config_changes(saved, requested)
    refused = {k: v for k, v in changes.items() if not _allowed(k, allow)}
    if refused:
        listed = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in list(refused.items())[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise UserError(
            f"{where}: the config differs from the run's saved {CONFIG} in {len(refused)} "
            f"field(s): {listed}{more}; use a new workdir, or resume with "
            f"{flag}={','.join(refused)} to accept the change(s)")
    return changes


def parse_allow_changes(value: str | None) -> list[str]:
    """`--allow_changes=steps,optimizer.lr` -> ["steps", "optimizer.lr"]."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


# --------------------------------------------------------------------------- the lock

# path -> [fd, depth]: the process's held locks (re-entrant: train() may call probe code that
# takes the same lock, and an in-process caller may nest them).
_HELD: dict[str, list[int]] = {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError) as e:
        return isinstance(e, PermissionError)
    return True


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:500],
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _describe_holder(info: Mapping[str, Any]) -> str:
    return (f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')}): "
            f"{info.get('command')}")


@contextlib.contextmanager
def hold(directory: str, *, say: Any = None) -> Iterator[None]:
    """Holds `directory`'s lock for the block: a second process exits 2 naming the holder.

    The lock is an flock on `<directory>/run.lock`, so the kernel frees it when its holder dies,
    however it dies; the file also records the holder (pid, host, command). A lock left behind by
    a dead holder is taken over, and `say` (a print-like callable) is told so.
    """
    directory = os.path.abspath(directory)
    path = os.path.join(directory, LOCK)
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield
        finally:
            _HELD[path][1] -= 1
        return
    ensure_dir(directory)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise UserError(f"{path}: cannot lock: {e.strerror}") from None
        info = _read_holder(path)
        who = _describe_holder(info) if info else "another process"
        raise UserError(f"{directory} is in use by {who}; wait for it to finish or stop "
                        "it") from None
    previous = _read_holder(path)
    if previous and say is not None:
        same_host = previous.get("host") == socket.gethostname()
        state = "dead" if same_host and not _pid_alive(previous.get("pid")) else "gone"
        say(f"took over the lock of {state} {_describe_holder(previous)}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
    os.fsync(fd)
    _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[path]
        try:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly, nobody to take over
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_holder(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        info = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


# --------------------------------------------------------------------------- the directory


def ensure_dir(path: str, what: str = "--workdir") -> str:
    """Creates directory `path` (and parents); UserError naming it when it is a file or cannot
    be created."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what}={path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}={path}: cannot create it: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{what}={path}: not writable")
    return path


def check_dir_path(path: str, what: str = "--workdir") -> str:
    """Checks, without creating anything, that `path` is or could be made a writable directory."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what}={path}: exists and is not a directory")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UserError(f"{what}={path}: cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what}={path}: {probe} is not writable")
    return path


class RunDir:
    """One run's directory. Paths, status, completeness, lock and config identity."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_path(self) -> str:
        return self.file(CONFIG)

    @property
    def metadata_path(self) -> str:
        return self.file(METADATA)

    @property
    def status_path(self) -> str:
        return self.file(STATUS)

    @property
    def metrics_path(self) -> str:
        return self.file(METRICS)

    @property
    def probes_path(self) -> str:
        return self.file(PROBES)

    @property
    def tokenizer_dir(self) -> str:
        return self.file(TOKENIZER)

    @property
    def checkpoints_dir(self) -> str:
        return self.file(CHECKPOINTS)

    @property
    def tensorboard_dir(self) -> str:
        return self.file(TENSORBOARD)

    @property
    def log_path(self) -> str:
        return self.file(LOG)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def create(self) -> RunDir:
        ensure_dir(self.path)
        return self

    def lock(self, say: Any = None) -> contextlib.AbstractContextManager[None]:
        """Holds the run's lock (see `hold`)."""
        return hold(self.path, say=say)

    # -- status

    def read_status(self) -> dict[str, Any]:
        """status.json's fields ({"status": "pending"} when there is none); UserError naming the
        file when it is damaged or holds an unknown status."""
        info = read_json_file(self.status_path, "status file")
        if info is None:
            return {"status": Status.PENDING.value}
        if not isinstance(info, dict):
            raise UserError(f"{self.status_path}: status file must hold a JSON object, "
                            f"got {type(info).__name__}")
        value = info.setdefault("status", Status.PENDING.value)
        if value not in set(Status):
            raise UserError(f"{self.status_path}: status {value!r} is not one of "
                            f"{', '.join(s.value for s in Status)}")
        return info

    def status(self) -> Status:
        return Status(self.read_status()["status"])

    def write_status(self, status: Status, **fields: Any) -> dict[str, Any]:
        """Sets the status (keeping the file's other fields, updating `fields`), atomically."""
        info = self.read_status()
        info.update(fields)
        info["status"] = Status(status).value
        info["updated"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.create()
        atomic_write_json(self.status_path, info)
        return info

    def is_complete(self) -> bool:
        """The run trained every step of its config. The training loop alone decides this: it
        writes `complete` after saving the last step's checkpoint."""
        return self.status() == Status.COMPLETE

    # -- config

    def saved_config(self) -> dict[str, Any] | None:
        """The config the run was started with (None for a new run)."""
        saved = read_json_file(self.config_path, "config file")
        if saved is not None and not isinstance(saved, dict):
            raise UserError(f"{self.config_path}: config file must hold a JSON object")
        return saved

    def last_train_record(self) -> tuple[int | None, int | None]:
        """(step, tokens) of the last train record in metrics.jsonl, reading its tail only
        (the sweep runner polls running children with it); (None, None) when there is none."""
        try:
            with open(self.metrics_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return None, None
        for line in reversed(lines):
            if '"train"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "train":
                return int(rec["step"]), int(rec.get("tokens", 0))
        return None, None


__all__ = ["CHECKPOINTS", "CONFIG", "LOCK", "LOG", "METADATA", "METRICS", "OVERRIDES", "POINT",
           "PROBES", "RUNS", "STATUS", "SWEEP",
           "TENSORBOARD", "TOKENIZER", "RunDir", "Status", "atomic_output",
           "atomic_write", "atomic_write_json", "canonical_config", "check_config_unchanged",
           "check_dir_path", "config_changes", "config_fingerprint", "ensure_dir", "hold",
           "parse_allow_changes", "read_json", "read_json_file", "read_jsonl"]
