"""Chinchilla Approach 1: the lower envelope of training curves (Hoffmann et al. 2022, Section 3.1).

Hoffmann et al. interpolate every training curve at 1,500 log-spaced FLOP values and, at each,
keep the run with the lowest loss; the model sizes on that envelope give N_opt(C), and the tokens
D_opt(C) = C / (6 N_opt). Here the curves arrive as points (C, L, N) sampled along training: the
FLOP axis is cut into `num_bins` log-spaced bins between the smallest and largest C, the
lowest-loss point in each non-empty bin is an envelope point, and log N_opt and log D_opt are
fitted against log C by least squares. Units: C FLOPs, L nats, N parameters, D tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmjax.errors import UserError
from llmjax.scaling import _inputs
from llmjax.scaling.allocation import Allocation, AllocationFit


@dataclass(frozen=True, eq=False)
class EnvelopeFit(AllocationFit):
    """Envelope points (arrays [K], increasing C) and the fitted allocation N_opt ~ C^a."""

    envelope_C: np.ndarray
    envelope_L: np.ndarray
    envelope_N: np.ndarray
    envelope_D: np.ndarray
    num_bins: int

    def to_dict(self) -> dict:
        return {
            **self.allocation_dict(),
            "num_bins": int(self.num_bins),
            "envelope_C": self.envelope_C.tolist(),
            "envelope_L": self.envelope_L.tolist(),
            "envelope_N": self.envelope_N.tolist(),
            "envelope_D": self.envelope_D.tolist(),
            "method": "Hoffmann et al. 2022 Approach 1 (lower envelope of training curves)",
        }


def lower_envelope(C: np.ndarray, L: np.ndarray, num_bins: int) -> np.ndarray:
    """Indices of the lowest-loss point in each non-empty log-spaced bin of C, by increasing C."""
    edges = np.linspace(np.log(C.min()), np.log(C.max()), num_bins + 1)
    bins = np.clip(np.searchsorted(edges, np.log(C), side="right") - 1, 0, num_bins - 1)
    picked = []
    for k in np.unique(bins):
        members = np.flatnonzero(bins == k)
        picked.append(members[np.argmin(L[members])])  # ties: the first in canonical order
    return np.array(picked, np.int64)


def fit_envelope(C, L, N, *, num_bins: int = 50) -> EnvelopeFit:
    """Approach 1 from training-curve points: C [n] FLOPs so far, L [n] loss, N [n] parameters.

    Needs at least 3 envelope points (3 non-empty bins). D on the envelope is C / (6 N).
    """
    if not (isinstance(num_bins, int | np.integer) and num_bins >= 3):
        raise UserError(f"num_bins must be an integer >= 3; got {num_bins!r}")
    C, L, N = _inputs.columns(("C", "L", "N"), (C, L, N), min_points=3, what="fit_envelope")
    order = _inputs.canonical_order(C, L, N)
    C, L, N = C[order], L[order], N[order]
    idx = lower_envelope(C, L, int(num_bins))
    if len(idx) < 3:
        raise UserError(
            f"fit_envelope found {len(idx)} envelope point(s) in C; needs at least 3 "
            "(spread C over a wider range)"
        )
    env_C, env_L, env_N = C[idx], L[idx], N[idx]
    env_D = env_C / (6.0 * env_N)
    allocation = Allocation.fit(env_C, env_N, env_D)
    return EnvelopeFit(
        envelope_C=env_C,
        envelope_L=env_L,
        envelope_N=env_N,
        envelope_D=env_D,
        allocation=allocation,
        num_bins=int(num_bins),
    )
