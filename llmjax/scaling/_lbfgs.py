"""Many L-BFGS runs at once: a fixed pool of slots fed from a queue of starts, all on device.

Fitting a scaling law the way Hoffmann et al. (2022) and Besiroglu et al. (2024) do means running
L-BFGS from thousands of initial points and keeping the best. Running one start after another in
scipy costs minutes; running them as one vmapped while-loop costs as much as the slowest start
times the number of starts. Here a pool of `slots` rows advances together, one objective evaluation
per row per step, and a row whose run ends (converged, stalled, out of iterations) writes its result
and takes the next start from the queue in the same step. Total work is the sum of the runs'
lengths, not the maximum, and there is one compiled program per problem shape.

Each row is a small state machine: evaluate the trial point; if it is a fresh start or satisfies the
Armijo condition, accept it, update the L-BFGS memory and compute the next direction (two-loop
recursion, Nocedal & Wright 2006, Alg. 7.4); otherwise shrink the step (backtracking, their
Alg. 3.1, by the safeguarded quadratic interpolation of their Section 3.5).

Stopping tests: max |grad| <= gtol, or (f_old - f_new) / max(|f_old|, |f_new|, f_floor) <= ftol,
with scipy L-BFGS-B's gtol and ftol. scipy's floor is 1, which makes the test absolute for the
summed Huber objectives here (about 1e-3): runs then stop after any step that gains under 2e-9,
far from their minimum (a bootstrap replicate of the Chinchilla data stopped 7e-4 relative above
it). The default floor is tiny, so the test is relative.

Must be called inside `jax.enable_x64(True)`: the objectives need float64 (see callers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

# Row outcome codes, one per start.
CONVERGED = 1  # gtol or ftol test met
LINESEARCH_FAILED = 2  # no acceptable step even along steepest descent (precision floor)
MAX_ITER = 3  # ran out of iterations
BAD_START = 4  # objective not finite at the initial point

# value_and_grad(x [P, k], points (arrays [n]), scalars, weights [P, n]) -> (f [P], g [P, k])
ValueAndGrad = Callable[[jax.Array, tuple, tuple, jax.Array], tuple[jax.Array, jax.Array]]


@dataclass(frozen=True)
class MultistartResult:
    """Per-start outcome of `minimize_multistart`; arrays have one row per start."""

    x: np.ndarray  # [S, k] final parameters
    fun: np.ndarray  # [S] final objective
    status: np.ndarray  # [S] int, one of CONVERGED, LINESEARCH_FAILED, MAX_ITER, BAD_START
    n_iter: np.ndarray  # [S] accepted iterations
    n_eval: np.ndarray  # [S] objective evaluations


def _two_loop(g: jax.Array, s_hist: jax.Array, y_hist: jax.Array, rho: jax.Array) -> jax.Array:
    """H^-1 g (two-loop recursion). g [P, k]; s_hist, y_hist [P, m, k] oldest first; rho [P, m]."""
    m = s_hist.shape[1]

    def backward(j, carry):  # newest first; empty slots have rho = 0 and do nothing
        q, alphas = carry
        i = m - 1 - j
        a = rho[:, i] * jnp.sum(s_hist[:, i] * q, axis=1)
        return q - a[:, None] * y_hist[:, i], alphas.at[:, i].set(a)

    q, alphas = jax.lax.fori_loop(0, m, backward, (g, jnp.zeros_like(rho)))
    s_new, y_new = s_hist[:, -1], y_hist[:, -1]
    yy = jnp.sum(y_new * y_new, axis=1)
    sy = jnp.sum(s_new * y_new, axis=1)
    gamma = jnp.where(rho[:, -1] > 0, sy / jnp.where(yy > 0, yy, 1.0), 1.0)

    def forward(i, r):
        b = rho[:, i] * jnp.sum(y_hist[:, i] * r, axis=1)
        return r + (alphas[:, i] - b)[:, None] * s_hist[:, i]

    return jax.lax.fori_loop(0, m, forward, gamma[:, None] * q)


@partial(
    jax.jit,
    static_argnames=("value_and_grad", "slots", "memory", "max_iter", "max_linesearch"),
)
def _run(
    starts: jax.Array,  # [S, k], padded; only the first n_real are run
    n_real: jax.Array,  # int scalar
    start_group: jax.Array,  # [S] int: row of `weights` each start fits
    weights: jax.Array,  # [R, n], zero on padded points
    points: tuple,  # arrays [n]
    scalars: tuple,
    gtol: jax.Array,
    ftol: jax.Array,
    f_floor: jax.Array,
    max_steps: jax.Array,  # int scalar: guard on pool steps
    *,
    value_and_grad: ValueAndGrad,
    slots: int,
    memory: int,
    max_iter: int,
    max_linesearch: int,
):
    n_starts, k = starts.shape
    dtype = starts.dtype
    c1 = 1e-4  # Armijo sufficient-decrease constant (Nocedal & Wright's usual choice)
    idle = n_starts  # slot id meaning "no start assigned"; scatters to it are dropped

    first = jnp.arange(slots)
    slot_id = jnp.where(first < n_real, first, idle)
    state = dict(
        slot_id=slot_id,
        x=starts[jnp.minimum(slot_id, n_starts - 1)],
        f=jnp.zeros(slots, dtype),
        g=jnp.zeros((slots, k), dtype),
        d=jnp.zeros((slots, k), dtype),
        t=jnp.zeros(slots, dtype),
        gd=jnp.zeros(slots, dtype),
        n_trial=jnp.zeros(slots, jnp.int32),
        fresh=jnp.ones(slots, bool),
        s_hist=jnp.zeros((slots, memory, k), dtype),
        y_hist=jnp.zeros((slots, memory, k), dtype),
        rho=jnp.zeros((slots, memory), dtype),
        n_iter=jnp.zeros(slots, jnp.int32),
        n_eval=jnp.zeros(slots, jnp.int32),
        next_start=jnp.minimum(slots, n_real).astype(jnp.int32),
        step=jnp.asarray(0, jnp.int32),
        # One row per start: x (k columns), f, status, iterations, evaluations; one scatter a step.
        out=jnp.full((n_starts, k + 4), jnp.nan, dtype),
    )

    def cond(st):
        return jnp.any(st["slot_id"] < idle) & (st["step"] < max_steps)

    def body(st):
        active = st["slot_id"] < idle
        fresh = st["fresh"]
        x, f, g, d, t = st["x"], st["f"], st["g"], st["d"], st["t"]
        xt = jnp.where(fresh[:, None], x, x + t[:, None] * d)
        w = weights[start_group[jnp.minimum(st["slot_id"], n_starts - 1)]]
        ft, gt = value_and_grad(xt, points, scalars, w)
        finite = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt), axis=1)
        n_eval = st["n_eval"] + 1

        armijo = ft <= f + c1 * t * st["gd"]
        accept = finite & (fresh | armijo)
        step_taken = accept & ~fresh

        # Memory update from the accepted step; skip pairs without positive curvature.
        s = xt - x
        y = gt - g
        sy = jnp.sum(s * y, axis=1)
        yy = jnp.sum(y * y, axis=1)
        keep_pair = step_taken & (sy > 1e-10 * yy) & (sy > 0)
        shift = lambda h, new: jnp.concatenate([h[:, 1:], new[:, None]], axis=1)
        s_hist = jnp.where(keep_pair[:, None, None], shift(st["s_hist"], s), st["s_hist"])
        y_hist = jnp.where(keep_pair[:, None, None], shift(st["y_hist"], y), st["y_hist"])
        rho_new = jnp.where(keep_pair, 1.0 / jnp.where(sy > 0, sy, 1.0), 0.0)
        rho = jnp.where(keep_pair[:, None], shift(st["rho"], rho_new), st["rho"])

        x_new = jnp.where(accept[:, None], xt, x)
        f_new = jnp.where(accept, ft, f)
        g_new = jnp.where(accept[:, None], gt, g)
        n_iter = st["n_iter"] + step_taken.astype(jnp.int32)

        gmax = jnp.max(jnp.abs(g_new), axis=1)
        f_drop = (f - ft) / jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(ft)), f_floor)
        converged = accept & ((gmax <= gtol) | (step_taken & (f_drop <= ftol)))

        # Backtracking failed: retry once along steepest descent with empty memory, then give up.
        n_trial = jnp.where(accept, 0, st["n_trial"] + 1)
        ls_out = ~accept & ~fresh & (n_trial >= max_linesearch)
        has_memory = jnp.any(st["rho"] > 0, axis=1)
        restart = ls_out & has_memory
        failed = ls_out & ~has_memory
        bad_start = fresh & ~finite
        out_of_iter = n_iter >= max_iter
        clear = restart[:, None]
        s_hist = jnp.where(clear[:, :, None], 0.0, s_hist)
        y_hist = jnp.where(clear[:, :, None], 0.0, y_hist)
        rho = jnp.where(clear, 0.0, rho)

        # New direction for rows that moved (or restart); -g if it is not a descent direction.
        d_new = -_two_loop(g_new, s_hist, y_hist, rho)
        gd_new = jnp.sum(g_new * d_new, axis=1)
        not_descent = ~(gd_new < 0)
        d_new = jnp.where(not_descent[:, None], -g_new, d_new)
        gd_new = jnp.where(not_descent, -jnp.sum(g_new * g_new, axis=1), gd_new)
        empty = not_descent | ~jnp.any(rho > 0, axis=1)
        s_hist = jnp.where((not_descent & accept)[:, None, None], 0.0, s_hist)
        y_hist = jnp.where((not_descent & accept)[:, None, None], 0.0, y_hist)
        rho = jnp.where((not_descent & accept)[:, None], 0.0, rho)
        gnorm = jnp.sqrt(jnp.sum(g_new * g_new, axis=1))
        t_first = jnp.where(empty, jnp.minimum(1.0, 1.0 / jnp.maximum(gnorm, 1e-300)), 1.0)

        # Shrink the step of rejected rows: minimiser of the quadratic through f, slope, f(t).
        denom = 2.0 * (ft - f - st["gd"] * t)
        t_quad = -st["gd"] * t * t / jnp.where(denom > 0, denom, 1.0)
        t_quad = jnp.where(finite & (denom > 0), t_quad, 0.1 * t)
        t_back = jnp.clip(t_quad, 0.1 * t, 0.5 * t)

        new_dir = accept | restart
        d = jnp.where(new_dir[:, None], d_new, d)
        gd = jnp.where(new_dir, gd_new, st["gd"])
        t = jnp.where(new_dir, t_first, t_back)

        done = active & (converged | failed | bad_start | out_of_iter)
        status = jnp.select(
            [converged, bad_start, failed, out_of_iter],
            [CONVERGED, BAD_START, LINESEARCH_FAILED, MAX_ITER],
            0,
        )
        sid = jnp.where(done, st["slot_id"], idle)
        record = jnp.concatenate(
            [
                x_new,
                jnp.stack([jnp.where(bad_start, jnp.nan, f_new), status, n_iter, n_eval], 1),
            ],
            axis=1,
        )
        out = st["out"].at[sid].set(record.astype(dtype), mode="drop")

        # Refill finished slots from the queue, in slot order.
        rank = jnp.cumsum(done, dtype=jnp.int32) - 1
        candidate = st["next_start"] + rank
        new_id = jnp.where(candidate < n_real, candidate, idle)
        slot_id = jnp.where(done, new_id, st["slot_id"])
        next_start = jnp.minimum(st["next_start"] + jnp.sum(done, dtype=jnp.int32), n_real)
        refill = done
        x_start = starts[jnp.minimum(slot_id, n_starts - 1)]

        zero_hist = refill[:, None, None]
        return dict(
            slot_id=slot_id,
            x=jnp.where(refill[:, None], x_start, x_new),
            f=f_new,
            g=g_new,
            d=d,
            t=t,
            gd=gd,
            n_trial=jnp.where(refill | restart, 0, n_trial),
            fresh=refill | (fresh & ~accept & ~bad_start),
            s_hist=jnp.where(zero_hist, 0.0, s_hist),
            y_hist=jnp.where(zero_hist, 0.0, y_hist),
            rho=jnp.where(refill[:, None], 0.0, rho),
            n_iter=jnp.where(refill, 0, n_iter),
            n_eval=jnp.where(refill, 0, n_eval),
            next_start=next_start,
            step=st["step"] + 1,
            out=out,
        )

    return jax.lax.while_loop(cond, body, state)["out"]


def _bucket(n: int) -> int:
    """Padded size for n: powers of two up to 32, then multiples of 32 (bounds recompiles)."""
    if n <= 32:
        return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))
    return 32 * -(-n // 32)


def _pow2(n: int) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def minimize_multistart(
    value_and_grad: ValueAndGrad,
    points: tuple,
    starts: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    scalars: tuple = (),
    start_group: np.ndarray | None = None,
    slots: int = 256,
    memory: int = 10,
    max_iter: int = 1000,
    max_linesearch: int = 30,
    gtol: float = 1e-5,
    ftol: float = 2.220446049250313e-09,
    f_floor: float = 1e-300,
) -> MultistartResult:
    """Minimise a weighted sum over points from every start, in float64; best-of is the caller's.

    points: arrays [n] (e.g. log N, log D, log L); starts [S, k]; weights [R, n] per-point weights
    (default one row of ones; a bootstrap replicate is a row of resampling counts); start_group [S]
    picks each start's weights row (default 0). `value_and_grad` must be a module-level function (a
    static jit argument). Points, starts and weight rows are zero-padded to bucketed sizes so refits
    of similar size reuse one compiled program; padded points carry weight 0. gtol/ftol defaults are
    scipy L-BFGS-B's (pgtol = 1e-5; factr = 1e7 -> ftol = 1e7 * machine epsilon); f_floor: see the
    module doc.
    """
    if jnp.zeros(0).dtype != jnp.float64:
        raise RuntimeError("minimize_multistart must run inside jax.enable_x64(True)")
    starts = np.asarray(starts, np.float64)
    n_starts, k = starts.shape
    n_points = len(points[0])
    if weights is None:
        weights = np.ones((1, n_points))
    weights = np.asarray(weights, np.float64)
    group = np.zeros(n_starts, np.int32) if start_group is None else np.asarray(start_group)

    n_pad, s_pad, r_pad = _bucket(n_points), _pow2(n_starts), _pow2(weights.shape[0])
    pad_points = tuple(np.pad(np.asarray(a, np.float64), (0, n_pad - n_points)) for a in points)
    pad_weights = np.zeros((r_pad, n_pad))
    pad_weights[: weights.shape[0], :n_points] = weights
    pad_starts = np.zeros((s_pad, k))
    pad_starts[:n_starts] = starts
    pad_group = np.zeros(s_pad, np.int32)
    pad_group[:n_starts] = group

    pool = min(slots, s_pad)
    max_evals = max_iter * (max_linesearch + 2)
    max_steps = int(min(2**31 - 1, max_evals * (-(-n_starts // pool) + 1)))
    out = _run(
        jnp.asarray(pad_starts),
        jnp.asarray(n_starts, jnp.int32),
        jnp.asarray(pad_group),
        jnp.asarray(pad_weights),
        tuple(jnp.asarray(a) for a in pad_points),
        tuple(jnp.asarray(a, jnp.float64) for a in scalars),
        jnp.asarray(gtol, jnp.float64),
        jnp.asarray(ftol, jnp.float64),
        jnp.asarray(f_floor, jnp.float64),
        jnp.asarray(max_steps, jnp.int32),
        value_and_grad=value_and_grad,
        slots=pool,
        memory=memory,
        max_iter=max_iter,
        max_linesearch=max_linesearch,
    )
    out = np.asarray(out)[:n_starts]
    ints = np.nan_to_num(out[:, k + 1 :]).astype(np.int64)  # never-finished rows read as 0
    return MultistartResult(
        x=out[:, :k], fun=out[:, k], status=ints[:, 0], n_iter=ints[:, 1], n_eval=ints[:, 2]
    )
