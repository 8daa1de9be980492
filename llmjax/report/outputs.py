"""The report's output files: checked before anything is written, each one written atomically.

Every file goes through `llmjax.rundir.atomic_output` (a temporary sibling, fsynced and renamed
over the target), so a kill or a failed write leaves the previous version readable; a write that
fails (disk full, file too large, permission) is a one-line `UserError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from llmjax.errors import UserError
from llmjax.rundir import atomic_output, atomic_write, check_dir_path


def check_out_dir(path: str) -> str:
    """`path` is, or can be made, a writable directory; nothing is created."""
    return check_dir_path(path, what="report output directory")


def check_targets(paths: Iterable[str]) -> None:
    """Each path is absent or a regular file (a directory or socket in its place is refused)."""
    for path in paths:
        if os.path.lexists(path) and not os.path.isfile(path):
            raise UserError(f"{path}: exists and is not a file; move it away to write the report")


@contextlib.contextmanager
def output(path: str) -> Iterator[str]:
    """`atomic_output(path)` whose OSErrors become a one-line UserError naming `path`."""
    try:
        with atomic_output(path) as tmp:
            yield tmp
    except OSError as e:
        raise UserError(f"{path}: cannot write it: {e.strerror or e}") from None


def write_text(path: str, text: str) -> None:
    """`text` (UTF-8) in `path`, atomically; UserError naming it when the write fails."""
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot write it: {e.strerror or e}") from None


def ensure_out_dir(path: str) -> str:
    """Creates the checked output directory `path`."""
    path = check_out_dir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the report's output directory: "
                        f"{e.strerror or e}") from None
    return path


__all__ = ["check_out_dir", "check_targets", "ensure_out_dir", "output", "write_text"]
