"""Bootstrap confidence intervals: resample points with replacement, refit, take percentiles.

Besiroglu et al. 2024 (arXiv:2404.10102) give Approach 3's uncertainty by bootstrapping over
points; Efron & Tibshirani 1993 ("An Introduction to the Bootstrap", ch. 13) for the percentile
interval. A replicate draws n indices uniformly with replacement; its points enter the objective
with weight = how often they were drawn, which is the same fit as refitting the resampled table.

Approach 3 and power laws refit all replicates at once on the multistart L-BFGS pool. A full
4,500-start grid per replicate would cost 1,000 full fits, so each replicate starts from a reduced
set: the full-data optimum plus the (n_starts - 1) grid starts whose runs reached the lowest
objectives on the full data (grid points known to lead into the best basins). The replicate's
lowest objective wins. Approaches 1 and 2 are cheap and refit one replicate at a time
(`bootstrap_fit`); Approach 2 resamples within each FLOP budget so every budget keeps its size.

Deterministic given `seed` (numpy PCG64); rows are sorted before resampling, so the result does not
depend on the order of the input points either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from llmjax.errors import UserError
from llmjax.scaling import _inputs
from llmjax.scaling._lbfgs import minimize_multistart
from llmjax.scaling.chinchilla import (
    ChinchillaFit,
    chinchilla_value_and_grad,
    compute_optimal,
    fit_chinchilla,
    prepare_points,
)
from llmjax.scaling.envelope import fit_envelope
from llmjax.scaling.isoflop import fit_isoflop, group_budgets
from llmjax.scaling.powerlaw import (
    PowerLawFit,
    fit_power_law,
    power_law_value_and_grad,
    pure_power_law_value_and_grad,
)


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Bootstrap distribution of named fit parameters.

    estimate: the full-data fit's values; samples [n_ok, p] one row per successful replicate
    (columns in `names` order); intervals: percentile interval at `confidence`; se: standard
    deviation of the replicates (the bootstrap standard error).
    """

    names: tuple[str, ...]
    estimate: dict[str, float]
    samples: np.ndarray
    confidence: float
    intervals: dict[str, tuple[float, float]]
    se: dict[str, float]
    n_boot: int
    n_failed: int
    seed: int
    method: str

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "estimate": {k: float(v) for k, v in self.estimate.items()},
            "confidence": float(self.confidence),
            "intervals": {k: [float(lo), float(hi)] for k, (lo, hi) in self.intervals.items()},
            "se": {k: float(v) for k, v in self.se.items()},
            "n_boot": int(self.n_boot),
            "n_failed": int(self.n_failed),
            "seed": int(self.seed),
            "method": self.method,
        }


def _check_options(n_boot: int, confidence: float, n_starts: int | None = None) -> None:
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 2):
        raise UserError(f"n_boot must be an integer >= 2; got {n_boot!r}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must lie in (0, 1); got {confidence!r}")
    if n_starts is not None and not (isinstance(n_starts, int | np.integer) and n_starts >= 1):
        raise UserError(f"n_starts must be an integer >= 1; got {n_starts!r}")


def _summarise(
    names: Sequence[str],
    estimate: Mapping[str, float],
    samples: np.ndarray,
    *,
    confidence: float,
    n_boot: int,
    seed: int,
    method: str,
) -> BootstrapResult:
    ok = np.all(np.isfinite(samples), axis=1)
    kept = samples[ok]
    if len(kept) < 2:
        raise UserError(f"bootstrap: only {len(kept)} of {n_boot} replicates gave a finite fit")
    lo_q, hi_q = 50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)
    lo, hi = np.percentile(kept, [lo_q, hi_q], axis=0)
    se = kept.std(axis=0, ddof=1)
    return BootstrapResult(
        names=tuple(names),
        estimate={k: float(estimate[k]) for k in names},
        samples=kept,
        confidence=float(confidence),
        intervals={k: (float(lo[i]), float(hi[i])) for i, k in enumerate(names)},
        se={k: float(se[i]) for i, k in enumerate(names)},
        n_boot=int(n_boot),
        n_failed=int(n_boot - len(kept)),
        seed=int(seed),
        method=method,
    )


def resample_counts(n: int, n_boot: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """Counts [n_boot, n]: how often each point is drawn when resampling n with replacement.

    With strata [n] (labels), each stratum is resampled to its own size independently.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        idx = rng.integers(0, n, size=(n_boot, n))
    else:
        parts = []
        for label in np.unique(strata):
            members = np.flatnonzero(strata == label)
            parts.append(members[rng.integers(0, len(members), size=(n_boot, len(members)))])
        idx = np.concatenate(parts, axis=1)
    counts = np.zeros((n_boot, n), np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), idx.shape[1]), idx.ravel()), 1.0)
    return counts


def _reduced_starts(params: np.ndarray, start_points: np.ndarray, start_objectives, n_starts: int):
    """The optimum plus the n_starts - 1 starts whose full-data runs ended lowest (stable order)."""
    best_starts = start_points[np.argsort(start_objectives, kind="stable")[: n_starts - 1]]
    return np.concatenate([params[None, :], best_starts], axis=0)


def _best_per_replicate(fun: np.ndarray, x: np.ndarray, n_boot: int, n_starts: int) -> np.ndarray:
    """Lowest-objective parameter row of each replicate: x [n_boot * n_starts, k] -> [n_boot, k]."""
    fun = np.where(np.isfinite(fun), fun, np.inf).reshape(n_boot, n_starts)
    x = x.reshape(n_boot, n_starts, -1)
    best = np.argmin(fun, axis=1)
    rows = x[np.arange(n_boot), best]
    rows[~np.isfinite(fun[np.arange(n_boot), best])] = np.nan
    return rows


CHINCHILLA_NAMES = ("E", "A", "B", "alpha", "beta", "a", "b")


def _refit_replicates(value_and_grad, points: tuple[np.ndarray, ...], starts: np.ndarray,
                      n_boot: int, seed: int, delta: float, **options) -> np.ndarray:
    """Best parameters [n_boot, P] of each replicate: the objective refitted from every start
    (rows [k, P]) with the points weighted by that replicate's resample counts, in one batch."""
    k = len(starts)
    counts = resample_counts(len(points[0]), n_boot, seed)
    with jax.enable_x64(True):
        res = minimize_multistart(value_and_grad, points, np.tile(starts, (n_boot, 1)),
                                  weights=counts, start_group=np.repeat(np.arange(n_boot), k),
                                  scalars=(delta,), **options)
    return _best_per_replicate(res.fun, res.x, n_boot, k)


def bootstrap_chinchilla(
    N,
    D,
    L,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    huber_delta: float | None = 1e-3,
    fit: ChinchillaFit | None = None,
    n_starts: int = 4,
    init_grid=None,
    max_iter: int = 1000,
) -> BootstrapResult:
    """Percentile intervals for E, A, B, alpha, beta and a, b of Approach 3 (see module doc).

    fit: the full-data `fit_chinchilla` result on the same points (refitted when None); its optimum
    and best grid starts seed every replicate (n_starts per replicate).
    """
    _check_options(n_boot, confidence, n_starts)
    delta = _inputs.check_delta(huber_delta)
    N, D, L = prepare_points(N, D, L, what="bootstrap_chinchilla")
    if fit is None:
        fit = fit_chinchilla(
            N, D, L, huber_delta=huber_delta, init_grid=init_grid, max_iter=max_iter
        )
    if fit.n_points != len(N):
        raise UserError(f"fit was made on {fit.n_points} points but N has {len(N)}")
    starts = _reduced_starts(fit.params, fit.start_points, fit.start_objectives, n_starts)
    k = len(starts)
    rows = _refit_replicates(chinchilla_value_and_grad, (np.log(N), np.log(D), np.log(L)),
                             starts, n_boot, seed, delta, max_iter=max_iter)
    a_, b_, e_, alpha, beta = rows.T
    A, B, E = np.exp(a_), np.exp(b_), np.exp(e_)
    _, a, b = compute_optimal(E, A, B, alpha, beta)
    samples = np.stack([E, A, B, alpha, beta, a, b], axis=1)
    estimate = {k_: getattr(fit, k_) for k_ in CHINCHILLA_NAMES}
    method = (
        f"Approach 3 bootstrap over points; {k} starts per replicate (the full-data optimum and "
        f"its {k - 1} best grid starts); percentile intervals"
    )
    return _summarise(
        CHINCHILLA_NAMES,
        estimate,
        samples,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        method=method,
    )


def bootstrap_power_law(
    x,
    y,
    *,
    irreducible: bool,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    huber_delta: float | None = 1e-3,
    fit: PowerLawFit | None = None,
    n_starts: int = 4,
) -> BootstrapResult:
    """Percentile intervals for E (with the irreducible term), x_c and alpha of `fit_power_law`."""
    _check_options(n_boot, confidence, n_starts)
    delta = _inputs.check_delta(huber_delta)
    x, y = _inputs.columns(
        ("x", "y"), (x, y), min_points=4 if irreducible else 3, what="bootstrap_power_law"
    )
    order = _inputs.canonical_order(x, y)
    x, y = x[order], y[order]
    if fit is None:
        fit = fit_power_law(x, y, irreducible=irreducible, huber_delta=huber_delta)
    if fit.n_points != len(x) or fit.irreducible != irreducible:
        raise UserError("fit was made on different points or with a different irreducible setting")
    params = np.array([fit.log_A, fit.alpha] + ([np.log(fit.E)] if irreducible else []))
    starts = _reduced_starts(params, fit.start_points, fit.start_objectives, n_starts)
    k = len(starts)
    vg = power_law_value_and_grad if irreducible else pure_power_law_value_and_grad
    rows = _refit_replicates(vg, (np.log(x), np.log(y)), starts, n_boot, seed, delta)
    log_A, alpha = rows[:, 0], rows[:, 1]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        x_c = np.exp(log_A / alpha)
    names = ("E", "x_c", "alpha") if irreducible else ("x_c", "alpha")
    cols = ([np.exp(rows[:, 2])] if irreducible else []) + [x_c, alpha]
    estimate = {"E": fit.E, "x_c": fit.x_c, "alpha": fit.alpha}
    method = f"power-law bootstrap over points; {k} starts per replicate; percentile intervals"
    return _summarise(
        names,
        estimate,
        np.stack(cols, axis=1),
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        method=method,
    )


def bootstrap_fit(
    fit_fn: Callable[..., object],
    columns: Mapping[str, Sequence[float] | np.ndarray],
    *,
    names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    strata: np.ndarray | None = None,
    method: str = "bootstrap over points; percentile intervals",
) -> BootstrapResult:
    """Refit `fit_fn(**columns)` on n_boot resampled tables; intervals for `names` of its to_dict().

    columns: equal-length arrays [n] passed to fit_fn by keyword. strata [n]: resample within each
    label. A replicate whose fit raises UserError (say, a budget left with too few distinct sizes)
    counts in n_failed.
    """
    _check_options(n_boot, confidence)
    keys = list(columns)
    arrays = [np.asarray(columns[k_], np.float64) for k_ in keys]
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise UserError(f"{', '.join(keys)} must have the same length")
    sort_keys = arrays if strata is None else [np.asarray(strata, np.float64), *arrays]
    order = _inputs.canonical_order(*sort_keys)
    arrays = [a[order] for a in arrays]
    strata_sorted = None if strata is None else np.asarray(strata)[order]
    full = fit_fn(**dict(zip(keys, arrays, strict=True))).to_dict()
    counts = resample_counts(len(arrays[0]), n_boot, seed, strata_sorted).astype(np.int64)
    samples = np.full((n_boot, len(names)), np.nan)
    for r in range(n_boot):
        idx = np.repeat(np.arange(len(arrays[0])), counts[r])
        try:
            out = fit_fn(**{k_: a[idx] for k_, a in zip(keys, arrays, strict=True)}).to_dict()
        except UserError:
            continue
        samples[r] = [out[n_] for n_ in names]
    return _summarise(
        names,
        {n_: full[n_] for n_ in names},
        samples,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        method=method,
    )


def bootstrap_isoflop(
    N,
    D,
    L,
    C,
    *,
    budget_rtol: float = 0.05,
    d_from: str = "compute",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Percentile intervals for a, b (and log coefficients) of Approach 2, resampling per budget."""
    C_arr = _inputs.positive_column("C", C)
    strata = group_budgets(C_arr, budget_rtol)
    return bootstrap_fit(
        lambda N, D, L, C: fit_isoflop(N, D, L, C, budget_rtol=budget_rtol, d_from=d_from),
        {"N": N, "D": D, "L": L, "C": C_arr},
        names=("a", "b", "log_k_n", "log_k_d"),
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        strata=strata,
        method="Approach 2 bootstrap, points resampled within each budget; percentile intervals",
    )


def bootstrap_envelope(
    C, L, N, *, num_bins: int = 50, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> BootstrapResult:
    """Percentile intervals for a, b (and log coefficients) of Approach 1."""
    return bootstrap_fit(
        lambda C, L, N: fit_envelope(C, L, N, num_bins=num_bins),
        {"C": C, "L": L, "N": N},
        names=("a", "b", "log_k_n", "log_k_d"),
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        method="Approach 1 bootstrap over training-curve points; percentile intervals",
    )
