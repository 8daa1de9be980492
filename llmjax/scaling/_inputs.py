"""Input checks shared by the fits: bad input becomes a one-line UserError naming the argument."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from llmjax.errors import UserError


def positive_column(name: str, values: object) -> np.ndarray:
    """`values` as a 1-D float64 array of finite, positive numbers, or UserError naming `name`."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be an array of numbers") from None
    if arr.ndim != 1:
        raise UserError(f"{name} must be one-dimensional; got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{name} must be positive and finite; {name}[{i}] = {arr[i]!r} ({bad.size} bad values)"
        )
    return arr


def columns(names: Sequence[str], values: Sequence[object], *, min_points: int, what: str):
    """Check named columns: positive, finite, equal lengths, at least `min_points` rows."""
    arrays = [positive_column(n, v) for n, v in zip(names, values, strict=True)]
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) > 1:
        got = ", ".join(f"{n}={k}" for n, k in zip(names, lengths, strict=True))
        raise UserError(f"{', '.join(names)} must have the same length; got {got}")
    if lengths[0] < min_points:
        raise UserError(f"{what} needs at least {min_points} points; got {lengths[0]}")
    return arrays


def canonical_order(*arrays: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by (arrays[0], arrays[1], ...): fits ignore the rows' order."""
    return np.lexsort(tuple(reversed(arrays)))


def check_delta(huber_delta: float | None) -> float:
    """Huber threshold in log-loss units; None means least squares (an infinite threshold)."""
    if huber_delta is None:
        return float("inf")
    delta = float(huber_delta)
    if not delta > 0:
        raise UserError(f"huber_delta must be positive or None; got {huber_delta!r}")
    return delta


def cluster_labels(values: np.ndarray, rtol: float) -> np.ndarray:
    """Label [n] per value, 0 for the smallest cluster: sorted, a new cluster starts where a value
    exceeds the first value of the current cluster by more than a factor (1 + rtol)."""
    order = np.argsort(values, kind="stable")
    labels = np.empty(len(values), np.int64)
    label, first = -1, -np.inf
    for i in order:
        if np.log(values[i]) > first + np.log1p(rtol):
            label, first = label + 1, np.log(values[i])
        labels[i] = label
    return labels


def grid_starts(init_grid: Mapping[str, Sequence[float]] | object,
                param_order: Sequence[str]) -> np.ndarray:
    """Start rows [S, len(param_order)]: the Cartesian product of a grid mapping's axes in
    `param_order`, or the explicit rows given (shape not checked: the caller names its columns)."""
    if not isinstance(init_grid, Mapping):
        return np.asarray(init_grid, np.float64)
    missing = [p for p in param_order if p not in init_grid]
    if missing:
        raise UserError(f"init_grid lacks values for {', '.join(missing)}")
    axes = [np.atleast_1d(np.asarray(init_grid[p], np.float64)) for p in param_order]
    return np.array(list(itertools.product(*axes)), np.float64).reshape(-1, len(param_order))
