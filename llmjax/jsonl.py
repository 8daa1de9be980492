"""JSON files a run leaves behind: JSON-lines files that a killed writer may have cut short
(metrics.jsonl, probes.jsonl), and small JSON files that may be missing (status.json, ...)."""

from __future__ import annotations

import json
import os
from typing import Any


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of `path` in order ([] if it does not exist); a torn line is skipped."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
    return out


def read_json(path: str) -> Any:
    """The JSON value in `path`, or None when the file is missing or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, obj: Any) -> None:
    """`obj` as indented JSON in `path`, atomically (tmp + rename): a kill never leaves half a
    file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
