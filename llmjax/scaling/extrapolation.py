"""Extrapolation check: fit without the largest model size(s), predict their loss, report the error.

A scaling law is only useful if it predicts beyond the sizes it was fitted on; Hoffmann et al.
2022 and Kaplan et al. 2020 both validate this way (Chinchilla itself is the held-out prediction).
Every point whose N is among the `holdout_largest` largest model sizes is held out; N values within
a relative `size_rtol` of each other count as one size (sizes read off a plot or rounded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmjax.errors import UserError
from llmjax.scaling import _inputs
from llmjax.scaling.chinchilla import fit_chinchilla
from llmjax.scaling.powerlaw import PowerLawFit, fit_power_law


@dataclass(frozen=True, eq=False)
class ExtrapolationResult:
    """Held-out points (arrays [m]) with predicted loss and relative error (pred - L) / L."""

    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    predicted: np.ndarray
    relative_error: np.ndarray
    mean_abs_relative_error: float
    max_abs_relative_error: float
    n_train: int
    holdout_largest: int
    fit_name: str
    fit: dict

    def to_dict(self) -> dict:
        return {
            "N": self.N.tolist(),
            "D": self.D.tolist(),
            "L": self.L.tolist(),
            "predicted": self.predicted.tolist(),
            "relative_error": self.relative_error.tolist(),
            "mean_abs_relative_error": float(self.mean_abs_relative_error),
            "max_abs_relative_error": float(self.max_abs_relative_error),
            "n_train": int(self.n_train),
            "holdout_largest": int(self.holdout_largest),
            "fit_name": self.fit_name,
            "fit": self.fit,
        }


@dataclass(frozen=True)
class PowerLawInN:
    """A power law in N used as an L(N, D) model: D is ignored."""

    power_law: PowerLawFit

    def predict(self, N, D) -> np.ndarray:
        return self.power_law.predict(N)

    def to_dict(self) -> dict:
        return self.power_law.to_dict()


def _power_law_in_n(N, D, L, *, irreducible: bool = True, **kwargs) -> PowerLawInN:
    """L against N alone (for points with one D per N, e.g. final losses of a size sweep)."""
    return PowerLawInN(fit_power_law(N, L, irreducible=irreducible, **kwargs))


FITS: dict[str, Callable] = {"chinchilla": fit_chinchilla, "power_law": _power_law_in_n}


def extrapolation_check(
    N,
    D,
    L,
    *,
    holdout_largest: int = 1,
    fit: str | Callable = "chinchilla",
    size_rtol: float = 1e-3,
    **fit_kwargs,
) -> ExtrapolationResult:
    """Fit on all points but those of the `holdout_largest` largest N, predict those, compare.

    N [n] parameters, D [n] tokens, L [n] loss (nats). fit: "chinchilla" (Approach 3,
    `fit_chinchilla`), "power_law" (L against N with an irreducible term, `fit_power_law`), or a
    callable fit(N, D, L, **fit_kwargs) returning an object with predict(N, D) and to_dict().
    """
    N, D, L = _inputs.columns(("N", "D", "L"), (N, D, L), min_points=2, what="extrapolation_check")
    if not (isinstance(holdout_largest, int | np.integer) and holdout_largest >= 1):
        raise UserError(f"holdout_largest must be an integer >= 1; got {holdout_largest!r}")
    sizes = _inputs.cluster_labels(N, size_rtol)
    n_sizes = int(sizes.max()) + 1
    if holdout_largest >= n_sizes:
        raise UserError(
            f"holdout_largest={holdout_largest} leaves no model size to fit on ({n_sizes} sizes)"
        )
    if isinstance(fit, str):
        if fit not in FITS:
            raise UserError(f"fit must be one of {', '.join(FITS)} or a callable; got {fit!r}")
        fit_name, fit_fn = fit, FITS[fit]
    else:
        fit_name, fit_fn = getattr(fit, "__name__", "custom"), fit
    held = sizes >= n_sizes - holdout_largest
    order = _inputs.canonical_order(N[held], D[held], L[held])
    model = fit_fn(N[~held], D[~held], L[~held], **fit_kwargs)
    hN, hD, hL = N[held][order], D[held][order], L[held][order]
    predicted = np.asarray(model.predict(hN, hD), np.float64)
    rel = (predicted - hL) / hL
    return ExtrapolationResult(
        N=hN,
        D=hD,
        L=hL,
        predicted=predicted,
        relative_error=rel,
        mean_abs_relative_error=float(np.mean(np.abs(rel))),
        max_abs_relative_error=float(np.max(np.abs(rel))),
        n_train=int(np.sum(~held)),
        holdout_largest=int(holdout_largest),
        fit_name=fit_name,
        fit=model.to_dict(),
    )
