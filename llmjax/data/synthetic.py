"""Synthetic corpus generator (STUB: the real generator replaces this body; the signatures stay)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    version: str = "1.0.0"
    seed: int = 0
    num_train_docs: int = 20_000
    num_validation_docs: int = 1_000


def generate_documents(config: SyntheticConfig, split: str) -> Iterator[str]:
    """Yields the documents of `split` ('train' | 'validation'); a pure function of (config, split)."""
    n = config.num_train_docs if split == "train" else config.num_validation_docs
    rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
    words = ["ka", "lo", "mi", "ne", "su", "ta", "ro", "vi"]
    for _ in range(n):
        yield " ".join(rng.choice(words, size=int(rng.integers(5, 60)))) + "."
