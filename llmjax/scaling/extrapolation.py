"""Extrapolation check: fit without the largest model size(s), predict their loss, report the error.

A scaling law is only useful if it predicts beyond the sizes it was fitted on; Hoffmann et al.
2022 and Kaplan et al. 2020 both validate this way (Chinchilla itself is the held-out prediction).
Every point whose N is among the `holdout_largest` largest model sizes is held out; N values within
a relative `size_rtol` of each other count as one size (sizes read off a plot or rounded).

With n_boot > 0 each prediction also gets a percentile interval: the fit is bootstrapped over its
training points (`llmjax.scaling.bootstrap`) and every replicate predicts the held-out points, so
the interval says how far the data used allow the prediction to move (`covered`: whether the
held-out truth lies inside it).
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
    interval: np.ndarray | None = None  # [m, 2] bootstrap percentile interval of `predicted`
    confidence: float | None = None

    @property
    def covered(self) -> np.ndarray | None:
        if self.interval is None:
            return None
        return (self.interval[:, 0] <= self.L) & (self.L <= self.interval[:, 1])

    def to_dict(self) -> dict:
        interval = {} if self.interval is None else {
            "interval": self.interval.tolist(), "confidence": self.confidence,
            "covered": self.covered.tolist()}
        return {
            **interval,
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
    n_boot: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    **fit_kwargs,
) -> ExtrapolationResult:
    """Fit on all points but those of the `holdout_largest` largest N, predict those, compare.

    N [n] parameters, D [n] tokens, L [n] loss (nats). fit: "chinchilla" (Approach 3,
    `fit_chinchilla`), "power_law" (L against N with an irreducible term, `fit_power_law`), or a
    callable fit(N, D, L, **fit_kwargs) returning an object with predict(N, D) and to_dict().
    n_boot > 0 (the two named fits only): bootstrap prediction intervals (module doc).
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
    if n_boot and not isinstance(fit, str):
        raise UserError("n_boot needs fit='chinchilla' or fit='power_law'")
    held = sizes >= n_sizes - holdout_largest
    order = _inputs.canonical_order(N[held], D[held], L[held])
    model = fit_fn(N[~held], D[~held], L[~held], **fit_kwargs)
    hN, hD, hL = N[held][order], D[held][order], L[held][order]
    predicted = np.asarray(model.predict(hN, hD), np.float64)
    rel = (predicted - hL) / hL
    interval = None
    if n_boot:
        samples = _prediction_samples(fit_name, model, N[~held], D[~held], L[~held], hN, hD,
                                      n_boot=n_boot, seed=seed, confidence=confidence,
                                      **fit_kwargs)
        q = 50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)
        interval = np.percentile(samples, q, axis=0).T
    return ExtrapolationResult(
        interval=interval,
        confidence=confidence if n_boot else None,
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


def _prediction_samples(fit_name: str, model: object, N, D, L, hN, hD, *, n_boot: int, seed: int,
                        confidence: float, **fit_kwargs) -> np.ndarray:
    """[replicates, m]: the held-out predictions of every bootstrap replicate of the fit."""
    from llmjax.scaling.bootstrap import bootstrap_chinchilla, bootstrap_power_law

    huber = {k: v for k, v in fit_kwargs.items() if k == "huber_delta"}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if fit_name == "chinchilla":
            boot = bootstrap_chinchilla(N, D, L, n_boot=n_boot, seed=seed, confidence=confidence,
                                        fit=model, init_grid=fit_kwargs.get("init_grid"), **huber)
            c = {n: boot.samples[:, i][:, None] for i, n in enumerate(boot.names)}
            return c["E"] + c["A"] / hN[None] ** c["alpha"] + c["B"] / hD[None] ** c["beta"]
        pl = model.power_law
        boot = bootstrap_power_law(N, L, irreducible=pl.irreducible, n_boot=n_boot, seed=seed,
                                   confidence=confidence, fit=pl, **huber)
        c = {n: boot.samples[:, i][:, None] for i, n in enumerate(boot.names)}
        return (c["E"] if pl.irreducible else 0.0) + (c["x_c"] / hN[None]) ** c["alpha"]
