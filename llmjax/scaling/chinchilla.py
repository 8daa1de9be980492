"""Chinchilla Approach 3: L(N, D) = E + A/N^alpha + B/D^beta, fitted as Hoffmann et al. (2022) do.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", Section 3.3 and
Appendix D.2; the fitting details follow the replication of Besiroglu, Erdil, Barnett & You 2024,
"Chinchilla Scaling: A replication attempt" (arXiv:2404.10102):

- parameters a = log A, b = log B, e = log E, alpha, beta;
- prediction log L_hat = logsumexp(a - alpha log N, b - beta log D, e);
- objective = sum over points of Huber_delta(log L - log L_hat), delta = 1e-3 (the replication sums;
  the mean's tiny scale stopped Hoffmann's optimiser early);
- L-BFGS from every start of the grid alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
  a, b in {0, 5, ..., 25} (4,500 starts); the best objective wins.

Units: N parameters, D tokens, L loss in nats per token, C training FLOPs (C = 6 N D).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.errors import UserError
from llmjax.scaling import _inputs
from llmjax.scaling._lbfgs import CONVERGED, MultistartResult, minimize_multistart

# Column order of a start / parameter vector.
PARAM_ORDER = ("a", "b", "e", "alpha", "beta")

# Hoffmann et al. 2022 (Appendix D.2) initialisation grid.
PAPER_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}

# Starts ending within this relative distance of the best objective count as reaching the optimum.
OPTIMUM_RTOL = 1e-6

InitGrid = Mapping[str, Sequence[float]] | np.ndarray | Sequence[Sequence[float]]


def init_starts(init_grid: InitGrid | None = None) -> np.ndarray:
    """Starts [S, 5] in PARAM_ORDER from a grid mapping (Cartesian product) or explicit rows."""
    if init_grid is None:
        init_grid = PAPER_GRID
    starts = _inputs.grid_starts(init_grid, PARAM_ORDER)
    if not isinstance(init_grid, Mapping):
        if starts.ndim != 2 or starts.shape[1] != 5:
            raise UserError(
                f"init_grid rows must be (a, b, e, alpha, beta); got shape {starts.shape}"
            )
    if len(starts) == 0 or not np.all(np.isfinite(starts)):
        raise UserError("init_grid must hold at least one start of finite values")
    return starts


def chinchilla_value_and_grad(x, points, scalars, w):
    """Weighted Huber objective and its gradient for a pool of parameter rows.

    x [P, 5] rows (a, b, e, alpha, beta); points = (log N, log D, log L) each [n]; scalars =
    (huber_delta,); w [P, n] point weights. Returns f [P], grad [P, 5]. Written out by hand:
    XLA fuses one pass over [P, n] with two exps and a log per element, about twice as fast as
    autodiff's graph here.
    """
    log_n, log_d, log_l = points
    (delta,) = scalars
    a, b, e, alpha, beta = (x[:, i : i + 1] for i in range(5))
    # Terms in linear space; capped so an overflow gives a large finite loss, not inf - inf.
    p_n = jnp.exp(jnp.minimum(a - alpha * log_n, 700.0))
    p_d = jnp.exp(jnp.minimum(b - beta * log_d, 700.0))
    p_e = jnp.exp(e)
    total = p_n + p_d + p_e
    r = log_l - jnp.log(total)
    ar = jnp.abs(r)
    f = jnp.sum(w * jnp.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)), axis=1)
    c = -w * jnp.clip(r, -delta, delta) / total  # d f / d log L_hat, divided by L_hat
    u_n, u_d = c * p_n, c * p_d
    grad = jnp.stack(
        [u_n.sum(1), u_d.sum(1), p_e[:, 0] * c.sum(1), -(u_n @ log_n), -(u_d @ log_d)], axis=1
    )
    return f, grad


def chinchilla_objective(params: np.ndarray, N, D, L, huber_delta: float = 1e-3) -> float:
    """The objective at one parameter row (a, b, e, alpha, beta); numpy, for checks and plots."""
    a, b, e, alpha, beta = np.asarray(params, np.float64)
    pred = np.logaddexp(np.logaddexp(a - alpha * np.log(N), b - beta * np.log(D)), e)
    r = np.abs(np.log(L) - pred)
    d = huber_delta
    return float(np.sum(np.where(r <= d, 0.5 * r * r, d * (r - 0.5 * d))))


def compute_optimal(E, A, B, alpha, beta):
    """G, a, b of N_opt = G (C/6)^a, D_opt = (C/6)^b / G under C = 6 N D (Hoffmann eq. 4)."""
    alpha, beta = np.float64(alpha), np.float64(beta)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = alpha + beta
        G = (alpha * A / (beta * B)) ** (1.0 / s)
        return G, beta / s, alpha / s


@dataclass(frozen=True, eq=False)
class ChinchillaFit:
    """Fitted L(N, D) = E + A/N^alpha + B/D^beta (loss in nats, N params, D tokens, C FLOPs).

    objective: summed Huber loss of log residuals at the optimum. n_converged: starts whose L-BFGS
    met its stopping test; n_at_optimum: starts that ended within OPTIMUM_RTOL (relative) of the
    best objective. start_points / start_objectives: every start and the objective it ended at
    (bootstrap seeds).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    huber_delta: float
    n_points: int
    n_starts: int
    n_converged: int
    n_at_optimum: int
    status_counts: dict[str, int]
    start_points: np.ndarray = field(repr=False)
    start_objectives: np.ndarray = field(repr=False)

    @property
    def params(self) -> np.ndarray:
        """(a, b, e, alpha, beta) = (log A, log B, log E, alpha, beta)."""
        return np.array(
            [np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta], np.float64
        )

    @property
    def G(self) -> float:
        return float(compute_optimal(self.E, self.A, self.B, self.alpha, self.beta)[0])

    @property
    def a(self) -> float:
        """Exponent of N_opt proportional to C^a: beta / (alpha + beta)."""
        return float(compute_optimal(self.E, self.A, self.B, self.alpha, self.beta)[1])

    @property
    def b(self) -> float:
        """Exponent of D_opt proportional to C^b: alpha / (alpha + beta)."""
        return float(compute_optimal(self.E, self.A, self.B, self.alpha, self.beta)[2])

    def predict(self, N, D) -> np.ndarray:
        """Loss (nats) at N parameters and D tokens."""
        N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
        # N^-alpha, not 1 / N^alpha: an unidentified fit's huge exponent underflows to the
        # limit 0 quietly instead of overflowing with a warning.
        return self.E + self.A * N ** -self.alpha + self.B * D ** -self.beta

    def n_opt(self, C) -> np.ndarray:
        """Compute-optimal parameters at C training FLOPs: G (C/6)^a."""
        return self.G * (np.asarray(C, np.float64) / 6.0) ** self.a

    def d_opt(self, C) -> np.ndarray:
        """Compute-optimal tokens at C training FLOPs: (C/6)^b / G."""
        return (np.asarray(C, np.float64) / 6.0) ** self.b / self.G

    def loss_opt(self, C) -> np.ndarray:
        """Predicted loss of the compute-optimal model at C FLOPs."""
        return self.predict(self.n_opt(C), self.d_opt(C))

    def to_dict(self) -> dict:
        keys = ("E", "A", "B", "alpha", "beta", "objective")
        out: dict = {k: float(getattr(self, k)) for k in keys}
        out["huber_delta"] = None if np.isinf(self.huber_delta) else float(self.huber_delta)
        out["n_points"] = int(self.n_points)
        out.update(a=self.a, b=self.b, G=self.G, n_starts=int(self.n_starts))
        out.update(n_converged=int(self.n_converged), n_at_optimum=int(self.n_at_optimum))
        out["status_counts"] = dict(self.status_counts)
        out["method"] = "Hoffmann et al. 2022 Approach 3; Huber on log residuals, summed; L-BFGS"
        return out


def status_counts(result: MultistartResult) -> dict[str, int]:
    names = {1: "converged", 2: "linesearch_failed", 3: "max_iter", 4: "bad_start", 0: "unfinished"}
    codes, counts = np.unique(result.status, return_counts=True)
    return {names[int(c)]: int(k) for c, k in zip(codes, counts, strict=True)}


def prepare_points(N, D, L, *, what: str, min_points: int = 6):
    """Checked columns in canonical (sorted) order and their logs, as the fits consume them."""
    N, D, L = _inputs.columns(("N", "D", "L"), (N, D, L), min_points=min_points, what=what)
    order = _inputs.canonical_order(N, D, L)
    return N[order], D[order], L[order]


def fit_chinchilla(
    N,
    D,
    L,
    *,
    huber_delta: float | None = 1e-3,
    init_grid: InitGrid | None = None,
    max_iter: int = 1000,
    slots: int = 256,
) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3).

    N [n] parameters, D [n] training tokens, L [n] final loss (nats); n >= 6 (5 parameters + 1).
    huber_delta: Huber threshold on log-loss residuals (1e-3, the paper's; None for least
    squares). init_grid: a mapping from a, b, e, alpha, beta to value lists (Cartesian product),
    or rows [S, 5] in that order; default the paper's 4,500 starts. Every start runs L-BFGS to
    convergence (all starts at once, compiled, float64); the lowest objective wins, ties to the
    earliest start. max_iter: L-BFGS iterations per start; slots: starts advanced together.
    Points are sorted first, so the result does not depend on their order.
    """
    delta = _inputs.check_delta(huber_delta)
    N, D, L = prepare_points(N, D, L, what="fit_chinchilla")
    starts = init_starts(init_grid)
    with jax.enable_x64(True):
        result = minimize_multistart(
            chinchilla_value_and_grad,
            (np.log(N), np.log(D), np.log(L)),
            starts,
            scalars=(delta,),
            max_iter=max_iter,
            slots=slots,
        )
    return _fit_from_result(result, starts, n_points=len(N), huber_delta=delta)


def _fit_from_result(
    result: MultistartResult, starts: np.ndarray, *, n_points: int, huber_delta: float
) -> ChinchillaFit:
    fun = np.where(np.isfinite(result.fun), result.fun, np.inf)
    if not np.isfinite(fun).any():
        raise UserError("fit_chinchilla: the objective is not finite at any start; check N, D, L")
    best = int(np.argmin(fun))
    a, b, e, alpha, beta = result.x[best]
    tol = OPTIMUM_RTOL * abs(fun[best])
    return ChinchillaFit(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
        objective=float(fun[best]),
        huber_delta=float(huber_delta),
        n_points=int(n_points),
        n_starts=len(starts),
        n_converged=int(np.sum(result.status == CONVERGED)),
        n_at_optimum=int(np.sum(fun <= fun[best] + tol)),
        status_counts=status_counts(result),
        start_points=starts,
        start_objectives=fun,
    )
