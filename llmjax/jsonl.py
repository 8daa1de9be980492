"""JSON-lines files that a killed writer may have cut short (metrics.jsonl, probes.jsonl)."""

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
