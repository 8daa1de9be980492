"""Emergence: a sigmoid in log-compute, and an honest test of whether the data show a transition.

Wei et al. 2022 call an ability emergent when it is absent in small models and present in large
ones; Schaeffer et al. 2023 show the sharpness can come from the metric. This module only asks
whether one series (x = log10 training FLOPs of each run, or log10 tokens along one run; y = the
metric) shows a sigmoid-shaped step, and where; scoring the same outputs with several metrics is
the caller's job.

Model: y(x) = lo + (hi - lo) / (1 + exp(-(x - x0) / width)), x0 in [min x, max x], width in
[w_min, span] with span = max x - min x and w_min = 0.1 x the smallest gap between distinct x
(a near step: a point half a gap away sits 0.7% of the way into the jump). With bounds (a, b)
(e.g. (0, 1) for accuracy; the default when n is given) lo and hi are kept inside them.
Null: the straight line y = a + b x, a smooth trend in log-compute.

Fit (deterministic): for fixed (x0, width) the model is linear in (lo, hi), so they are profiled
out in closed form by weighted least squares (clipped to the bounds box: interior solution or the
best of the four edges); (x0, log width) is searched on a 33 x 13 grid, refined by four rounds of
5 x 5 local grids at halving steps, and (for the data themselves) polished with bounded Powell.
Weights: 1/sigma^2 with sigma; n_i / mean(n) with n (binomial counts; the p(1 - p) factor is
left out so points at 0 or 1 keep their weight); 1 otherwise. Rows are sorted first, so the
result does not depend on their order.

Detection: all of these must hold; the reason names the first that fails.
1. At least 5 distinct x values: 4 sigmoid parameters need at least one spare point.
2. y is not constant (a model at chance everywhere, exactly).
3. The sigmoid beats the line, p < alpha. Without sigma: F = ((SSE_line - SSE_sig) / 2) /
   (SSE_sig / (n - 4)) on F(2, n - 4), which estimates the noise from the sigmoid's residuals, so
   seed-to-seed scatter beyond the binomial noise does not pass for curvature. With sigma:
   chi^2(2) on SSE_line - SSE_sig, divided by the sigmoid's reduced chi^2 when that exceeds 1
   (sigma too small for the scatter seen). x0 and width are searched, so both tests are somewhat
   optimistic; criteria 4-6 guard against the cases that exploit it.
4. The midpoint lies inside the data: at least 2 distinct x values strictly on each side of x0.
   One jumping point, or a curve that only bends at one end (a power law in log-compute), puts x0
   at the edge; that is not a transition with a level seen on both sides.
5. The change the data show, |y_fit(max x) - y_fit(min x)| (not hi - lo, whose asymptotes may lie
   beyond the data), is at least 3 x the per-point noise: the larger of the known standard error
   (binomial sqrt(q (1 - q) / n_i) at the fitted q, root mean square over points; or sigma) and
   the sigmoid's residual standard deviation; and at least min_jump when given.
6. The bootstrap agrees: at least half of the replicates pass 3-5 too.

Bootstrap (seeded numpy PCG64, n_boot replicates refitted at once, vectorised): with n,
parametric from the observed points, y*_i ~ Binomial(n_i, q_i) / n_i, q_i = y_i clipped to
[0.5 / n_i, 1 - 0.5 / n_i] so a point at 0 or 1 keeps some noise; with sigma, y*_i = y_i +
Normal(0, sigma_i). Drawing around the observed points, not the fitted sigmoid, keeps the sigmoid
from being assumed by its own check. Otherwise a residual bootstrap (Davison & Hinkley 1997,
sec. 6.2): y* = sigmoid fit + residuals r_i / sqrt(1 - h_i) (leverage h_i of the linearised fit,
capped at 0.9) drawn with replacement; each replicate's residuals are also scaled by
sqrt(dof / chi^2_dof), dof = n - 4, since the noise level itself comes from only dof residuals.
threshold_ci is the percentile interval of x0 over all replicates; when the fit is a near step
(width < a quarter of the gap between the runs that bracket x0) the data cannot place x0 within
that gap, so the interval is widened to cover it. Measured on 7 runs half a decade apart with x0
drawn inside them: the 95% interval covered the true x0 in 94% of detected binomial S-curves
(n = 1000) and in 89-92% of residual-bootstrap ones (Gaussian noise 1-5% of the jump), but
only 72% of borderline ones (noise 10% of a broad jump, half detected); false detections on
lines, flat series and power laws were at most 1%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from llmjax.errors import UserError
from llmjax.scaling import _inputs

MIN_DISTINCT_X = 5
MIN_SIDE = 2  # distinct x values needed on each side of the midpoint
NOISE_FACTOR = 3.0
MIN_AGREE = 0.5  # share of bootstrap replicates that must detect too
GRID_X0, GRID_WIDTH, REFINE_ROUNDS = 33, 13, 4
WIDTH_MIN_FRACTION = 0.1  # of the smallest gap between distinct x
STEP_FRACTION = 0.25  # width below this share of the bracketing gap: a near step


class SigmoidInputError(UserError, ValueError):
    """Bad input to the sigmoid fits: a one-line UserError (CLI exit 2), also a ValueError."""


Array = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class SigmoidFit:
    """y(x) = lo + (hi - lo) / (1 + exp(-(x - x0) / width)), x in the caller's units (log10 FLOPs).

    sse, sse_linear: weighted residual sums of squares of the sigmoid and of the line a + b x
    (chi^2 values when sigma was given); p_value: the sigmoid against the line (`test` says which).
    """

    lo: float
    hi: float
    x0: float
    width: float
    sse: float
    sse_linear: float
    n: int
    p_value: float
    a: float = 0.0  # the line's intercept
    b: float = 0.0  # the line's slope per unit x
    test: str = "F"  # "F" (noise from residuals) or "chi2" (sigma given)
    statistic: float = 0.0  # F, or the (scaled) chi^2 difference

    def predict(self, x) -> np.ndarray:
        """The sigmoid at x (same units as the fitted x)."""
        s = special.expit((np.asarray(x, np.float64) - self.x0) / self.width)
        return self.lo + (self.hi - self.lo) * s

    def predict_linear(self, x) -> np.ndarray:
        """The straight-line null at x."""
        return self.a + self.b * np.asarray(x, np.float64)

    def to_dict(self) -> dict:
        return {
            "lo": float(self.lo),
            "hi": float(self.hi),
            "x0": float(self.x0),
            "width": float(self.width),
            "sse": float(self.sse),
            "sse_linear": float(self.sse_linear),
            "n": int(self.n),
            "p_value": float(self.p_value),
            "a": float(self.a),
            "b": float(self.b),
            "test": self.test,
            "statistic": float(self.statistic) if np.isfinite(self.statistic) else None,
            "method": "y = lo + (hi - lo) / (1 + exp(-(x - x0) / width)) against y = a + b x",
        }


@dataclass(frozen=True)
class TransitionResult:
    """Whether a series shows a sigmoid transition (see the module doc for the criteria).

    threshold, threshold_ci, jump are None unless detected; change (y_fit(max x) - y_fit(min x))
    and noise (the per-point noise it was compared with) are set whenever there is a fit.
    """

    detected: bool
    reason: str
    fit: SigmoidFit | None
    threshold: float | None
    threshold_ci: tuple[float, float] | None
    detected_fraction: float | None
    jump: float | None
    change: float | None = None
    noise: float | None = None
    confidence: float = 0.95
    n_boot: int = 0  # bootstrap replicates drawn (0 when there was nothing to bootstrap)

    def to_dict(self) -> dict:
        def opt(v):
            return None if v is None else float(v)

        ci = self.threshold_ci
        return {
            "detected": bool(self.detected),
            "reason": self.reason,
            "fit": None if self.fit is None else self.fit.to_dict(),
            "threshold": opt(self.threshold),
            "threshold_ci": None if ci is None else [float(ci[0]), float(ci[1])],
            "detected_fraction": opt(self.detected_fraction),
            "jump": opt(self.jump),
            "change": opt(self.change),
            "noise": opt(self.noise),
            "confidence": float(self.confidence),
            "n_boot": int(self.n_boot),
        }


# ---------------------------------------------------------------------------- input checks


def _finite_column(name: str, values: object, length: int | None = None) -> np.ndarray:
    """1-D float64 array of finite numbers (a scalar repeated to `length`), or a one-line error."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SigmoidInputError(f"{name} must be an array of numbers") from None
    if arr.ndim == 0 and length is not None:
        arr = np.full(length, float(arr))
    if arr.ndim != 1:
        raise SigmoidInputError(f"{name} must be one-dimensional; got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise SigmoidInputError(
            f"{name} must be finite; {name}[{i}] = {arr[i]!r} ({bad.size} bad values)"
        )
    return arr


def _first_bad(name: str, arr: np.ndarray, bad: np.ndarray, what: str) -> None:
    idx = np.flatnonzero(bad)
    if idx.size:
        i = int(idx[0])
        raise SigmoidInputError(
            f"{name} must be {what}; {name}[{i}] = {arr[i]!r} ({idx.size} bad values)"
        )


def _prepare(x, y, n, sigma, bounds):
    """Checked, sorted columns: x, y [m], weights [m], n or None, sigma or None, bounds or None."""
    x = _finite_column("x", x)
    y = _finite_column("y", y)
    if len(x) != len(y):
        raise SigmoidInputError(f"x, y must have the same length; got x={len(x)}, y={len(y)}")
    if n is not None and sigma is not None:
        raise SigmoidInputError("give n (binomial counts) or sigma (standard errors), not both")
    if n is not None:
        n = _finite_column("n", n, len(x))
        _first_bad("n", n, (n <= 0) | (n != np.round(n)), "positive whole numbers of documents")
        if bounds is None:
            bounds = (0.0, 1.0)
    if sigma is not None:
        sigma = _finite_column("sigma", sigma, len(x))
        _first_bad("sigma", sigma, sigma <= 0, "positive")
    for name, col in (("n", n), ("sigma", sigma)):
        if col is not None and len(col) != len(x):
            raise SigmoidInputError(
                f"x, {name} must have the same length; got x={len(x)}, {name}={len(col)}"
            )
    if bounds is not None:
        try:
            a, b = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise SigmoidInputError(f"bounds must be a pair (lo, hi); got {bounds!r}") from None
        if not (np.isfinite(a) and np.isfinite(b) and a < b):
            raise SigmoidInputError(f"bounds must be finite with lo < hi; got {bounds!r}")
        _first_bad("y", y, (y < a) | (y > b), f"within bounds ({a:g}, {b:g})")
        bounds = (a, b)
    order = _inputs.canonical_order(x, y)
    x, y = x[order], y[order]
    n = None if n is None else n[order]
    sigma = None if sigma is None else sigma[order]
    if sigma is not None:
        w = 1.0 / sigma**2
    elif n is not None:
        w = n / n.mean()
    else:
        w = np.ones_like(x)
    return x, y, w, n, sigma, bounds


def _distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of x, merging those closer than 1e-9 of the span."""
    xs = np.unique(x)
    if xs.size == 0:
        return xs
    tol = 1e-9 * max(float(np.ptp(xs)), 1.0)
    keep = np.concatenate([[True], np.diff(xs) > tol])
    return xs[keep]


# ---------------------------------------------------------------------------- the fit


def _profile(s: np.ndarray, yw: np.ndarray, syy: np.ndarray, w: np.ndarray, box):
    """Best (lo, hi) and SSE for each curve shape.

    s [G, m] or [B, G, m]: the logistic at each point; yw [B, m] = w * y; syy [B] = sum w y^2;
    w [m]; box: (a, b) for lo and hi, or None. Returns sse, lo, hi, each [B, G].
    """
    u = 1.0 - s
    # einsum, not BLAS: these products are tiny, and threaded BLAS stalls on a busy machine.
    suu, suv, svv = (np.einsum("...m,...m,m->...", p, q, w) for p, q in ((u, u), (u, s), (s, s)))
    spec = "gm,bm->bg" if s.ndim == 2 else "bgm,bm->bg"
    suy, svy = np.einsum(spec, u, yw), np.einsum(spec, s, yw)
    suu, suv, svv = (np.broadcast_to(v, suy.shape) for v in (suu, suv, svv))
    syy = syy[:, None]

    def sse(lo, hi):
        return syy - 2 * (lo * suy + hi * svy) + lo * lo * suu + 2 * lo * hi * suv + hi * hi * svv

    det = suu * svv - suv * suv
    ok = det > 1e-12 * suu * svv
    safe = np.where(ok, det, 1.0)
    lo = np.where(ok, (svv * suy - suv * svy) / safe, 0.0)
    hi = np.where(ok, (suu * svy - suv * suy) / safe, 0.0)
    if box is not None:
        ok &= (lo >= box[0]) & (lo <= box[1]) & (hi >= box[0]) & (hi <= box[1])
    best = np.where(ok, sse(lo, hi), np.inf)
    # A flat curve is always feasible: it covers shapes the normal equations cannot resolve.
    flat = (suy + svy) / (suu + 2 * suv + svv)
    if box is not None:
        flat = np.clip(flat, *box)
    cands = [(flat, flat)]
    if box is not None:
        for edge in box:
            cands.append((np.full_like(lo, edge), np.clip((svy - edge * suv) / svv, *box)))
            cands.append((np.clip((suy - edge * suv) / suu, *box), np.full_like(lo, edge)))
    for c_lo, c_hi in cands:
        c_sse = sse(c_lo, c_hi)
        better = c_sse < best
        lo, hi, best = (
            np.where(better, c_lo, lo),
            np.where(better, c_hi, hi),
            np.where(better, c_sse, best),
        )
    return np.maximum(best, 0.0), lo, hi


def _logistic(x: np.ndarray, x0: np.ndarray, log_w: np.ndarray) -> np.ndarray:
    """[..., m] logistic at each point for shapes x0, log_w [...]."""
    return special.expit((x - x0[..., None]) / np.exp(log_w)[..., None])


def _search(x, ys, w, box, x_range, lw_range):
    """Grid then local refinement of (x0, log width) for each row of ys [B, m] (standardised y).

    Returns x0, log_w, lo, hi, sse, each [B].
    """
    yw, syy = ys * w, (ys * ys) @ w
    g_x0 = np.linspace(*x_range, GRID_X0)
    g_lw = np.linspace(*lw_range, GRID_WIDTH)
    X0, LW = (v.ravel() for v in np.meshgrid(g_x0, g_lw, indexing="ij"))
    sse, _, _ = _profile(_logistic(x, X0, LW), yw, syy, w, box)
    best = np.argmin(sse, axis=1)
    c_x0, c_lw = X0[best], LW[best]
    h_x0, h_lw = g_x0[1] - g_x0[0], g_lw[1] - g_lw[0]
    off_x0, off_lw = (v.ravel() for v in np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)))
    rows = np.arange(len(ys))
    for r in range(1, REFINE_ROUNDS + 1):
        step = 0.5**r
        cand_x0 = np.clip(c_x0[:, None] + off_x0 * h_x0 * step, *x_range)
        cand_lw = np.clip(c_lw[:, None] + off_lw * h_lw * step, *lw_range)
        sse, lo, hi = _profile(_logistic(x, cand_x0, cand_lw), yw, syy, w, box)
        best = np.argmin(sse, axis=1)
        c_x0, c_lw = cand_x0[rows, best], cand_lw[rows, best]
    return c_x0, c_lw, lo[rows, best], hi[rows, best], sse[rows, best]


def _linear_sse(x, ys, w):
    """Weighted least-squares line for each row of ys [B, m]: intercept, slope, sse, each [B]."""
    W = w.sum()
    xm = (w @ x) / W
    xc = x - xm
    ym = (ys @ w) / W
    sxx = (w * xc * xc).sum()
    b = (ys * (w * xc)).sum(-1) / sxx
    a = ym - b * xm
    r = ys - a[:, None] - b[:, None] * x
    return a, b, np.maximum((r * r) @ w, 0.0)


def _p_values(sse, sse_lin, m, chi2_test, tol):
    """Test of the sigmoid (4 params) against the line (2): p-values and statistics [B]."""
    diff = sse_lin - sse
    dof = m - 4
    if chi2_test:
        stat = diff / np.maximum(1.0, sse / dof)
        p = stats.chi2.sf(stat, 2)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = (diff / 2) / (sse / dof)
        stat = np.where(sse <= tol, np.inf, stat)
        p = stats.f.sf(stat, 2, dof)
    no_gain = diff <= tol  # the line does as well (covers both fits exact: 0/0)
    return np.where(no_gain, 1.0, p), np.where(no_gain, 0.0, stat)


@dataclass(frozen=True)
class _Batch:
    """Fits of B series on the same x: every field [B] (original y units)."""

    x0: np.ndarray
    width: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    sse: np.ndarray
    a: np.ndarray
    b: np.ndarray
    sse_lin: np.ndarray
    p: np.ndarray
    stat: np.ndarray


def _fit_batch(x, ys, w, bounds, *, chi2_test, center, scale, polish):
    """Sigmoid and line fits of each row of ys [B, m]; y standardised as (y - center) / scale."""
    xs = _distinct(x)
    x_range = (float(xs[0]), float(xs[-1]))
    span = x_range[1] - x_range[0]
    lw_range = (float(np.log(WIDTH_MIN_FRACTION * np.diff(xs).min())), float(np.log(span)))
    z = (ys - center) / scale
    box = None if bounds is None else ((bounds[0] - center) / scale, (bounds[1] - center) / scale)
    x0, lw, lo, hi, sse = _search(x, z, w, box, x_range, lw_range)
    if polish:
        for i in range(len(z)):
            zi = z[i : i + 1]
            yw, syy = zi * w, (zi * zi) @ w

            def objective(theta, yw=yw, syy=syy):
                s = _logistic(x, np.array([theta[0]]), np.array([theta[1]]))
                return float(_profile(s, yw, syy, w, box)[0][0, 0])

            res = optimize.minimize(
                objective, [x0[i], lw[i]], method="Powell", bounds=[x_range, lw_range]
            )
            if res.fun < sse[i]:
                x0[i], lw[i] = res.x
                s = _logistic(x, np.array([res.x[0]]), np.array([res.x[1]]))
                f, l_, h_ = _profile(s, yw, syy, w, box)
                sse[i], lo[i], hi[i] = f[0, 0], l_[0, 0], h_[0, 0]
    a, b, sse_lin = _linear_sse(x, z, w)
    # Back to y units first: chi^2 needs sums of squares in units of sigma.
    sse, sse_lin = sse * scale**2, sse_lin * scale**2
    sst = ((z - (z @ w)[:, None] / w.sum()) ** 2) @ w * scale**2
    p, stat = _p_values(sse, sse_lin, len(x), chi2_test, 1e-12 * sst)
    return _Batch(
        x0=x0,
        width=np.exp(lw),
        lo=center + scale * lo,
        hi=center + scale * hi,
        sse=sse,
        a=center + scale * a,
        b=scale * b,
        sse_lin=sse_lin,
        p=p,
        stat=stat,
    )


def _standardise(y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean and standard deviation of y; the fits work on (y - mean) / sd."""
    center = float(w @ y / w.sum())
    return center, float(np.sqrt(w @ (y - center) ** 2 / w.sum()))


def _constant(y: np.ndarray) -> bool:
    """All y equal (to rounding): nothing to fit, and no division by a zero spread."""
    return float(np.ptp(y)) <= 1e-12 * max(float(np.max(np.abs(y))), 1e-300)


def fit_sigmoid(
    x: Array,
    y: Array,
    *,
    sigma: Array | float | None = None,
    n: Array | float | None = None,
    bounds: tuple[float, float] | None = None,
) -> SigmoidFit:
    """Fit y = lo + (hi - lo) / (1 + exp(-(x - x0) / width)) and the line y = a + b x.

    x [m]: log10 training FLOPs (or log10 tokens); y [m]: the metric; m >= 5 points at >= 4
    distinct x. sigma [m] (or scalar): standard errors of y (weights 1/sigma^2, chi^2 test);
    n [m] (or scalar): documents behind each y of a [0, 1] metric (weights n, bounds (0, 1) by
    default, F test); bounds (lo, hi): range lo and hi must stay in. See the module doc.
    """
    x, y, w, n, sigma, bounds = _prepare(x, y, n, sigma, bounds)
    return _fit_checked(x, y, w, sigma is not None, bounds)


def _fit_checked(x, y, w, chi2_test, bounds) -> SigmoidFit:
    m = len(x)
    n_distinct = len(_distinct(x))
    if m < 5 or n_distinct < 4:
        raise SigmoidInputError(
            f"fit_sigmoid needs at least 5 points at 4 distinct x; got {m} at {n_distinct}"
        )
    test = "chi2" if chi2_test else "F"
    center, scale = _standardise(y, w)
    if _constant(y):
        # Constant y: the flat curve and the flat line both fit exactly; nothing to test.
        level = float(y[0])
        return SigmoidFit(
            lo=level,
            hi=level,
            x0=float(np.median(x)),
            width=float(np.ptp(x)),
            sse=0.0,
            sse_linear=0.0,
            n=m,
            p_value=1.0,
            a=level,
            b=0.0,
            test=test,
            statistic=0.0,
        )
    f = _fit_batch(
        x, y[None, :], w, bounds, chi2_test=chi2_test, center=center, scale=scale, polish=True
    )
    return SigmoidFit(
        lo=float(f.lo[0]),
        hi=float(f.hi[0]),
        x0=float(f.x0[0]),
        width=float(f.width[0]),
        sse=float(f.sse[0]),
        sse_linear=float(f.sse_lin[0]),
        n=m,
        p_value=float(f.p[0]),
        a=float(f.a[0]),
        b=float(f.b[0]),
        test=test,
        statistic=float(f.stat[0]),
    )


# ---------------------------------------------------------------------------- detection


def _checks(x, xs, w, n, sigma, f: _Batch, alpha, min_jump):
    """Criteria 3-5 for each fit in the batch: dict of [B] arrays (see the module doc)."""
    m = len(x)
    s_lo = special.expit((xs[0] - f.x0) / f.width)
    s_hi = special.expit((xs[-1] - f.x0) / f.width)
    change = (f.hi - f.lo) * (s_hi - s_lo)
    resid_sd = np.sqrt(f.sse / (m - 4) / w.mean())
    if n is not None:
        s = special.expit((x - f.x0[:, None]) / f.width[:, None])
        q = np.clip(f.lo[:, None] + (f.hi - f.lo)[:, None] * s, 0.5 / n, 1 - 0.5 / n)
        known = np.sqrt(np.mean(q * (1 - q) / n, axis=1))
    elif sigma is not None:
        known = np.full(len(f.x0), np.sqrt(1.0 / np.mean(1.0 / sigma**2)))
    else:
        known = np.zeros(len(f.x0))
    noise = np.maximum(known, resid_sd)
    below = np.searchsorted(xs, f.x0, side="left")  # distinct x strictly below x0
    above = len(xs) - np.searchsorted(xs, f.x0, side="right")
    big = np.abs(change) >= NOISE_FACTOR * noise
    if min_jump is not None:
        big &= np.abs(change) >= min_jump
    return {
        "significant": f.p < alpha,
        "inside": (below >= MIN_SIDE) & (above >= MIN_SIDE),
        "big": big,
        "change": change,
        "noise": noise,
        "below": below,
        "above": above,
        "known": known,
    }


def _check_options(n_boot, seed, confidence, alpha, min_jump) -> None:
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 2):
        raise SigmoidInputError(f"n_boot must be an integer >= 2; got {n_boot!r}")
    if not isinstance(seed, int | np.integer):
        raise SigmoidInputError(f"seed must be an integer; got {seed!r}")
    if not 0 < confidence < 1:
        raise SigmoidInputError(f"confidence must lie in (0, 1); got {confidence!r}")
    if not 0 < alpha < 1:
        raise SigmoidInputError(f"alpha must lie in (0, 1); got {alpha!r}")
    if min_jump is not None and not (np.isfinite(min_jump) and min_jump >= 0):
        raise SigmoidInputError(f"min_jump must be a non-negative number or None; got {min_jump!r}")


def _not_detected(reason, fit=None, **kw) -> TransitionResult:
    return TransitionResult(
        detected=False,
        reason=f"no transition detected: {reason}",
        fit=fit,
        threshold=None,
        threshold_ci=None,
        detected_fraction=kw.pop("detected_fraction", None),
        jump=None,
        **kw,
    )


def _replicates(x, y, w, n, sigma, fit: SigmoidFit, n_boot, seed) -> np.ndarray:
    """Bootstrap series [n_boot, m] (see the module doc)."""
    rng = np.random.default_rng(seed)
    if n is not None:
        q = np.clip(y, 0.5 / n, 1 - 0.5 / n)
        return rng.binomial(n.astype(np.int64), q, size=(n_boot, len(y))) / n
    if sigma is not None:
        return y + sigma * rng.standard_normal((n_boot, len(y)))
    fitted = fit.predict(x)
    resid = (y - fitted) / np.sqrt(1.0 - _leverage(x, w, fit))
    resid -= resid.mean()
    dof = len(y) - 4
    # The noise scale is estimated from dof residuals: draw it too (sigma^2 * dof / chi^2_dof).
    scale = np.sqrt(dof / rng.chisquare(dof, size=(n_boot, 1)))
    return fitted + scale * resid[rng.integers(0, len(y), size=(n_boot, len(y)))]


def _leverage(x: np.ndarray, w: np.ndarray, fit: SigmoidFit) -> np.ndarray:
    """Leverage h [m] of each point in the linearised sigmoid fit, capped at 0.9.

    Residuals at high-leverage points (those inside the transition) are shrunk by the fit; the
    residual bootstrap divides them by sqrt(1 - h) (Davison & Hinkley 1997, sec. 6.2).
    """
    s = special.expit((x - fit.x0) / fit.width)
    ds = (fit.hi - fit.lo) * s * (1 - s) / fit.width
    jac = np.stack([1 - s, s, -ds, -ds * (x - fit.x0)], axis=1) * np.sqrt(w)[:, None]
    h = np.einsum("mi,mi->m", jac @ np.linalg.pinv(jac.T @ jac, rcond=1e-10), jac)
    return np.clip(h, 0.0, 0.9)


def detect_transition(
    x: Array,
    y: Array,
    *,
    n: Array | float | None = None,
    bounds: tuple[float, float] | None = None,
    sigma: Array | float | None = None,
    n_boot: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
    min_jump: float | None = None,
) -> TransitionResult:
    """Is there a sigmoid transition in y against x, and where? (criteria: the module doc).

    x [m]: log10 training FLOPs of each run (or log10 tokens along a run); y [m]: the metric.
    n [m] (or scalar): documents behind each y of a [0, 1] metric (binomial noise); bounds:
    (lo, hi) range of a bounded metric ((0, 1) by default with n), None for unbounded ones such
    as cross-entropy; sigma [m] (or scalar): known standard errors instead of n. Bootstrap:
    n_boot replicates from `seed`, interval at `confidence`. alpha: level of the sigmoid-vs-line
    test; min_jump: smallest change in y worth reporting (y units), None for no floor.
    """
    x, y, w, n, sigma, bounds = _prepare(x, y, n, sigma, bounds)
    _check_options(n_boot, seed, confidence, alpha, min_jump)
    xs = _distinct(x)
    if len(xs) < MIN_DISTINCT_X:
        fittable = len(x) >= 5 and len(xs) >= 4
        fit = _fit_checked(x, y, w, sigma is not None, bounds) if fittable else None
        return _not_detected(
            f"too few distinct x values ({len(xs)}; need at least {MIN_DISTINCT_X})",
            fit,
            confidence=confidence,
        )
    fit = _fit_checked(x, y, w, sigma is not None, bounds)
    if _constant(y):
        return _not_detected(
            f"the metric is constant ({fit.lo:.4g} at all {len(x)} points)",
            fit,
            change=0.0,
            noise=0.0,
            confidence=confidence,
        )
    full = _Batch(
        *(
            np.array([v])
            for v in (
                fit.x0,
                fit.width,
                fit.lo,
                fit.hi,
                fit.sse,
                fit.a,
                fit.b,
                fit.sse_linear,
                fit.p_value,
                fit.statistic,
            )
        )
    )
    main = {k: v[0] for k, v in _checks(x, xs, w, n, sigma, full, alpha, min_jump).items()}
    reps = _replicates(x, y, w, n, sigma, fit, int(n_boot), int(seed))
    center, scale = _standardise(y, w)
    boot = _fit_batch(
        x, reps, w, bounds, chi2_test=sigma is not None, center=center, scale=scale, polish=False
    )
    bc = _checks(x, xs, w, n, sigma, boot, alpha, min_jump)
    agree = float(np.mean(bc["significant"] & bc["inside"] & bc["big"]))
    change, noise = float(main["change"]), float(main["noise"])
    common = dict(change=change, noise=noise, confidence=confidence, n_boot=int(n_boot))
    test = "F test" if fit.test == "F" else "chi^2 test"
    known_noise = n is not None or sigma is not None
    noise_name = "SE" if known_noise and main["known"] >= main["noise"] else "residual sd"
    if not main["significant"]:
        why = f"a straight line in x fits as well as a sigmoid ({test} p = {fit.p_value:.2g})"
    elif not main["inside"]:
        side, k = ("below", main["below"]) if main["below"] < MIN_SIDE else ("above", main["above"])
        why = (
            f"the midpoint lies at the edge of the data ({k} distinct x {side} it; need {MIN_SIDE})"
        )
    elif abs(change) < NOISE_FACTOR * noise:
        why = (
            f"the change ({change:+.3g}) is within the noise "
            f"({NOISE_FACTOR:g} x {noise_name} = {NOISE_FACTOR * noise:.3g})"
        )
    elif min_jump is not None and abs(change) < min_jump:
        why = f"the change ({change:+.3g}) is below min_jump ({min_jump:.3g})"
    elif agree < MIN_AGREE:
        why = (
            f"only {agree:.0%} of {n_boot} bootstrap replicates also detect one "
            f"(need {MIN_AGREE:.0%})"
        )
    else:
        why = None
    if why is not None:
        return _not_detected(why, fit, detected_fraction=agree, **common)
    q = 50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)
    ci_lo, ci_hi = (float(v) for v in np.percentile(boot.x0, q))
    i = np.searchsorted(xs, fit.x0)
    left, right = xs[max(i - 1, 0)], xs[min(i, len(xs) - 1)]
    if fit.width < STEP_FRACTION * (right - left):
        ci_lo, ci_hi = min(ci_lo, float(left)), max(ci_hi, float(right))
    y_lo, y_hi = fit.predict(xs[0]), fit.predict(xs[-1])
    reason = (
        f"transition at x = {fit.x0:.2f} ({confidence:.0%} interval {ci_lo:.2f} to {ci_hi:.2f}): "
        f"the metric changes by {change:+.3g} ({y_lo:.3g} to {y_hi:.3g}; noise {noise:.2g}), "
        f"a sigmoid beats a straight line ({test} p = {fit.p_value:.2g}), "
        f"{agree:.0%} of {n_boot} bootstrap replicates agree"
    )
    return TransitionResult(
        detected=True,
        reason=reason,
        fit=fit,
        threshold=fit.x0,
        threshold_ci=(ci_lo, ci_hi),
        detected_fraction=agree,
        jump=fit.hi - fit.lo,
        **common,
    )
