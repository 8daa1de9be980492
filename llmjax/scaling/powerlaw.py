"""Single-variable power laws L(x) = E + (x_c / x)^alpha, with or without the irreducible term E.

Kaplan et al. 2020, "Scaling Laws for Neural Language Models": L(N) = (N_c/N)^alpha_N,
L(D) = (D_c/D)^alpha_D, L(C) = (C_c/C)^alpha_C (no irreducible term); Hoffmann et al. 2022 add
the irreducible loss E. x is whatever drives the loss: parameters N, tokens D or FLOPs C.

Fitted in log space like Approach 3 (see chinchilla.py): with A = x_c^alpha = e^a and E = e^e,
log L_hat = logsumexp(a - alpha log x, e), objective = sum of Huber_delta(log L - log L_hat)
(delta = 1e-3; None for least squares, 0.5 r^2). Without E the model is linear in log space,
log L_hat = a - alpha log x: least squares is solved in closed form, Huber by L-BFGS from that
solution (the problem is convex). With E, L-BFGS runs from a grid of starts scaled to the data
(`default_power_law_grid`) and the lowest objective wins.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.errors import UserError
from llmjax.scaling import _inputs
from llmjax.scaling._lbfgs import CONVERGED, minimize_multistart
from llmjax.scaling.allocation import fit_loglog_line

# Column order of a start with the irreducible term; without it, (a, alpha).
PARAM_ORDER = ("a", "alpha", "e")


def power_law_value_and_grad(x, points, scalars, w):
    """Huber objective of log L_hat = logsumexp(a - alpha log x, e). x [P, 3] = (a, alpha, e)."""
    log_x, log_y = points
    (delta,) = scalars
    a, alpha, e = (x[:, i : i + 1] for i in range(3))
    p_x = jnp.exp(jnp.minimum(a - alpha * log_x, 700.0))
    p_e = jnp.exp(e)
    total = p_x + p_e
    r = log_y - jnp.log(total)
    ar = jnp.abs(r)
    f = jnp.sum(w * jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)), axis=1)
    c = -w * jnp.clip(r, -delta, delta) / total
    u = c * p_x
    return f, jnp.stack([u.sum(1), -(u @ log_x), p_e[:, 0] * c.sum(1)], axis=1)


def pure_power_law_value_and_grad(x, points, scalars, w):
    """Huber objective of log L_hat = a - alpha log x. x [P, 2] = (a, alpha)."""
    log_x, log_y = points
    (delta,) = scalars
    r = log_y - (x[:, 0:1] - x[:, 1:2] * log_x)
    ar = jnp.abs(r)
    f = jnp.sum(w * jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)), axis=1)
    c = -w * jnp.clip(r, -delta, delta)
    return f, jnp.stack([c.sum(1), -(c @ log_x)], axis=1)


def default_power_law_grid(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Starts (a, alpha, e) scaled to the data: E at fractions of min(y), alpha from 0.05 to 2.

    E in {0.01, 0.2, 0.4, 0.6, 0.8, 0.95} * min(y); alpha in {0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1,
    1.5, 2}; a chosen so the power term equals median(y) - E at the median log x (54 starts).
    """
    log_x_mid, y_mid, y_min = float(np.median(np.log(x))), float(np.median(y)), float(np.min(y))
    rows = []
    for q, alpha in itertools.product(
        (0.01, 0.2, 0.4, 0.6, 0.8, 0.95), (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
    ):
        E = q * y_min
        a = np.log(max(y_mid - E, 1e-3 * y_mid)) + alpha * log_x_mid
        rows.append((a, alpha, np.log(E)))
    return np.array(rows, np.float64)


@dataclass(frozen=True, eq=False)
class PowerLawFit:
    """L(x) = E + (x_c / x)^alpha = E + exp(log_A - alpha log x); E = 0 without irreducible term."""

    E: float
    x_c: float
    alpha: float
    log_A: float  # log of A = x_c^alpha, kept for exact predictions when alpha is near 0
    objective: float
    irreducible: bool
    huber_delta: float
    n_points: int
    n_starts: int
    n_converged: int
    start_points: np.ndarray = field(repr=False)  # [S, k] starts, (a, alpha, e) or (a, alpha)
    start_objectives: np.ndarray = field(repr=False)  # [S] objective each start ended at

    @property
    def A(self) -> float:
        return float(np.exp(self.log_A))

    def predict(self, x) -> np.ndarray:
        """Loss at x (same units as the fitted x)."""
        return self.E + np.exp(self.log_A - self.alpha * np.log(np.asarray(x, np.float64)))

    def to_dict(self) -> dict:
        delta = None if np.isinf(self.huber_delta) else float(self.huber_delta)
        return {
            "E": float(self.E),
            "x_c": float(self.x_c),
            "alpha": float(self.alpha),
            "A": self.A,
            "objective": float(self.objective),
            "irreducible": bool(self.irreducible),
            "huber_delta": delta,
            "n_points": int(self.n_points),
            "n_starts": int(self.n_starts),
            "n_converged": int(self.n_converged),
            "method": "L = E + (x_c/x)^alpha fitted in log space (Kaplan 2020; Hoffmann 2022)",
        }


def power_law_starts(x: np.ndarray, y: np.ndarray, irreducible: bool, init_grid=None) -> np.ndarray:
    """Starts for `fit_power_law`: rows (a, alpha, e), or (a, alpha) without E."""
    if not irreducible:
        slope, intercept = fit_loglog_line(x, y)
        return np.array([[intercept, -slope]], np.float64)
    if init_grid is None:
        return default_power_law_grid(x, y)
    starts = _inputs.grid_starts(init_grid, PARAM_ORDER)
    if starts.ndim != 2 or starts.shape[1] != 3 or not np.all(np.isfinite(starts)):
        raise UserError("init_grid rows must be finite (a, alpha, e) triples")
    return starts


def fit_power_law(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    irreducible: bool,
    huber_delta: float | None = 1e-3,
    init_grid: Mapping[str, Sequence[float]] | np.ndarray | None = None,
) -> PowerLawFit:
    """Fit y = E + (x_c / x)^alpha (irreducible=True) or y = (x_c / x)^alpha, in log space.

    x [n] (N parameters, D tokens or C FLOPs), y [n] loss in nats; n >= 4 with E, >= 3 without.
    huber_delta: Huber threshold on log residuals; None for least squares. init_grid (with E
    only): mapping from a, alpha, e to value lists, or rows (a, alpha, e); default the data-scaled
    grid of `default_power_law_grid`. Points are sorted first, so row order does not matter.
    """
    delta = _inputs.check_delta(huber_delta)
    n_params = 3 if irreducible else 2
    x, y = _inputs.columns(("x", "y"), (x, y), min_points=n_params + 1, what="fit_power_law")
    order = _inputs.canonical_order(x, y)
    x, y = x[order], y[order]
    if np.ptp(np.log(x)) == 0:
        raise UserError("x must take at least two distinct values")
    starts = power_law_starts(x, y, irreducible, init_grid)
    if not irreducible and np.isinf(delta):
        intercept, alpha = starts[0]  # least squares in log space is the closed form itself
        r = np.log(y) - (intercept - alpha * np.log(x))
        fun = np.array([0.5 * np.sum(r * r)])
        params, best, n_converged = starts[0], 0, 1
    else:
        vg = power_law_value_and_grad if irreducible else pure_power_law_value_and_grad
        with jax.enable_x64(True):
            res = minimize_multistart(vg, (np.log(x), np.log(y)), starts, scalars=(delta,))
        fun = np.where(np.isfinite(res.fun), res.fun, np.inf)
        if not np.isfinite(fun).any():
            raise UserError("fit_power_law: the objective is not finite at any start")
        best = int(np.argmin(fun))
        params = res.x[best]
        n_converged = int(np.sum(res.status == CONVERGED))
    return make_power_law_fit(
        params, fun[best], irreducible, delta, len(x), n_converged, starts, fun
    )


def make_power_law_fit(
    params, objective, irreducible, delta, n_points, n_converged, starts, start_objectives
) -> PowerLawFit:
    """PowerLawFit from a parameter row (a, alpha[, e])."""
    log_A, alpha = float(params[0]), float(params[1])
    E = float(np.exp(params[2])) if irreducible else 0.0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        x_c = float(np.exp(np.float64(log_A) / np.float64(alpha)))
    return PowerLawFit(
        E=E,
        x_c=x_c,
        alpha=alpha,
        log_A=log_A,
        objective=float(objective),
        irreducible=bool(irreducible),
        huber_delta=float(delta),
        n_points=int(n_points),
        n_starts=len(starts),
        n_converged=int(n_converged),
        start_points=starts,
        start_objectives=start_objectives,
    )
