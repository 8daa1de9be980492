"""Scaling-law fits: known laws recovered, order invariance, bad input, Chinchilla's own points."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy.optimize import minimize

from llmjax.errors import UserError
from llmjax.scaling import (
    bootstrap_chinchilla,
    bootstrap_isoflop,
    bootstrap_power_law,
    extrapolation_check,
    fit_chinchilla,
    fit_envelope,
    fit_isoflop,
    fit_power_law,
)
from llmjax.scaling._lbfgs import CONVERGED, minimize_multistart
from llmjax.scaling.analysis import COARSE_GRID
from llmjax.scaling.chinchilla import (
    PAPER_GRID,
    chinchilla_objective,
    chinchilla_value_and_grad,
    init_starts,
)

DATA = Path(__file__).resolve().parent / "data" / "chinchilla_fig4_epoch_extract.csv"

# Published fit to the 240 points (Besiroglu et al. 2024), value and bootstrap standard error.
PUBLISHED = {
    "E": (1.817, 0.026),
    "A": (482.01, 124.52),
    "B": (2085.43, 1293.28),
    "alpha": (0.3478, 0.0154),
    "beta": (0.3659, 0.0206),
}

# A Chinchilla-like law for synthetic data: L = E + A/N^alpha + B/D^beta.
TRUE = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
G_TRUE = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (
    1 / (TRUE["alpha"] + TRUE["beta"])
)
SMALL_GRID = {"a": [5.0, 10.0], "b": [5.0, 10.0], "e": [0.0, 0.5], "alpha": [0.5], "beta": [0.5]}


def law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def n_opt_true(C):
    return G_TRUE * (C / 6.0) ** A_TRUE


def synthetic_nd(seed=0, noise=0.003):
    """80 (N, D, L) points on a 10 x 8 grid, multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.logspace(7.5, 10, 10), 8)
    D = np.tile(np.logspace(9, 12, 8), 10)
    return N, D, law(N, D) * np.exp(noise * rng.standard_normal(len(N)))


def synthetic_isoflop(seed=0, noise=0.002):
    """5 budgets x 7 sizes spread x/÷ 4 around the true optimum, D = C / (6 N)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.logspace(18, 21, 5):
        for n in n_opt_true(C) * np.logspace(-0.6, 0.6, 7):
            rows.append((n, C / (6 * n), C))
    N, D, C = (np.array(c) for c in zip(*rows, strict=True))
    return N, D, law(N, D) * np.exp(noise * rng.standard_normal(len(N))), C


@pytest.fixture(scope="module")
def chinchilla_points():
    """The 240 points the replication fits: the 245 extracted, less the 5 highest losses."""
    with DATA.open() as fh:
        rows = list(csv.DictReader(fh))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    L = np.array([float(r["loss"]) for r in rows])
    assert len(N) == 245
    keep = np.argsort(L, kind="stable")[:-5]
    return N[keep], C[keep] / (6 * N[keep]), L[keep]


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla_points):
    return fit_chinchilla(*chinchilla_points)  # the paper's 4,500-start grid


# --- Approach 3 ----------------------------------------------------------------------------


def test_approach3_on_chinchilla_points_matches_published_fit(chinchilla_fit):
    fit = chinchilla_fit
    print("fitted on 240 points:", json.dumps(fit.to_dict()))
    assert fit.n_starts == 4500 and fit.n_points == 240
    # The replication's objective adds a Huber scale parameter; the optimum should still sit well
    # inside the published bootstrap spread (half a standard error).
    for name, (value, se) in PUBLISHED.items():
        assert abs(getattr(fit, name) - value) <= 0.5 * se, (name, getattr(fit, name), value)
    assert abs(fit.a - 0.513) < 0.005
    assert fit.n_converged > 0.9 * fit.n_starts
    assert fit.n_at_optimum >= 10  # many starts agree on the optimum: not a lucky start


def test_approach3_objective_value_recomputed_in_numpy(chinchilla_fit, chinchilla_points):
    fit = chinchilla_fit
    assert chinchilla_objective(fit.params, *chinchilla_points) == pytest.approx(
        fit.objective, rel=1e-9
    )


def test_lbfgs_pool_matches_scipy_lbfgsb_from_the_same_starts(chinchilla_points):
    N, D, L = chinchilla_points
    starts = np.array(
        [
            [20, 10, -0.5, 1.0, 0.5],
            [20, 0, 0, 0.5, 0.5],
            [0, 20, -0.5, 0, 1],
            [10, 0, -0.5, 0.5, 0.5],
            [0, 25, -0.5, 0.5, 0.5],
            [25, 15, 1, 1.5, 1],
            [15, 0, 0, 1, 0],
            [20, 25, -0.5, 1, 0],
            [5, 5, 0, 0.5, 0.5],
            [10, 10, 0.5, 0.5, 0.5],
        ],
        np.float64,
    )
    with jax.enable_x64(True):
        res = minimize_multistart(
            chinchilla_value_and_grad, (np.log(N), np.log(D), np.log(L)), starts, scalars=(1e-3,)
        )
    assert np.all(res.status == CONVERGED)
    refs = [minimize(chinchilla_objective, x0, args=(N, D, L), method="L-BFGS-B") for x0 in starts]
    ref_fun = np.array([r.fun for r in refs])
    best = min(res.fun.min(), ref_fun.min())
    ours_at_best = res.fun <= best * (1 + 1e-5)
    scipy_at_best = ref_fun <= best * (1 + 1e-5)
    # Same problem, same starts: the pool finds the optimum at least as often as scipy does...
    assert res.fun.min() <= ref_fun.min() * (1 + 1e-6)
    assert ours_at_best.sum() >= scipy_at_best.sum() >= 5
    # ...and where both get there, they agree on the parameters.
    for i in np.flatnonzero(ours_at_best & scipy_at_best):
        np.testing.assert_allclose(res.x[i][3:], refs[i].x[3:], atol=5e-4)  # alpha, beta
        np.testing.assert_allclose(np.exp(res.x[i][2]), np.exp(refs[i].x[2]), rtol=1e-3)  # E
    for i in range(len(starts)):
        assert res.fun[i] == pytest.approx(chinchilla_objective(res.x[i], N, D, L), rel=1e-9)


def test_approach3_recovers_known_law():
    N, D, L = synthetic_nd()
    fit = fit_chinchilla(N, D, L, init_grid=SMALL_GRID)
    assert fit.E == pytest.approx(TRUE["E"], rel=0.01)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.01)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.01)
    assert fit.A == pytest.approx(TRUE["A"], rel=0.15)
    assert fit.B == pytest.approx(TRUE["B"], rel=0.25)
    assert fit.a == pytest.approx(A_TRUE, abs=0.015)
    assert fit.a + fit.b == pytest.approx(1.0)
    # Allocation obeys C = 6 N D and lands near the true optimum.
    for C in (1e19, 1e21, 1e23):
        assert 6 * fit.n_opt(C) * fit.d_opt(C) == pytest.approx(C, rel=1e-9)
        assert fit.n_opt(C) == pytest.approx(n_opt_true(C), rel=0.15)
    np.testing.assert_allclose(fit.predict(N, D), law(N, D), rtol=0.005)
    json.dumps(fit.to_dict(), allow_nan=False)


def test_approach3_does_not_depend_on_point_order():
    N, D, L = synthetic_nd(seed=1)
    perm = np.random.default_rng(5).permutation(len(N))
    a = fit_chinchilla(N, D, L, init_grid=SMALL_GRID)
    b = fit_chinchilla(N[perm], D[perm], L[perm], init_grid=SMALL_GRID)
    assert a.to_dict() == b.to_dict()
    assert jax.numpy.zeros(1).dtype == np.float32  # float64 stayed inside the fit


def test_paper_grid_is_the_4500_starts():
    starts = init_starts()
    assert starts.shape == (4500, 5)
    for j, name in enumerate(("a", "b", "e", "alpha", "beta")):
        assert sorted(set(starts[:, j])) == list(PAPER_GRID[name])


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_on_chinchilla_points_is_deterministic_and_matches_published_spread(
    chinchilla_points, chinchilla_fit
):
    N, D, L = chinchilla_points
    boot = bootstrap_chinchilla(N, D, L, fit=chinchilla_fit, n_boot=200, seed=7)
    print("bootstrap se:", boot.se)
    assert boot.n_failed == 0 and boot.samples.shape == (200, 7)
    for name, (_, se) in PUBLISHED.items():
        assert 0.5 * se < boot.se[name] < 2 * se, (name, boot.se[name], se)
    for name in boot.names:
        lo, hi = boot.intervals[name]
        assert lo < boot.estimate[name] < hi
    np.testing.assert_allclose(boot.samples[:, 5] + boot.samples[:, 6], 1.0)  # a + b = 1
    perm = np.random.default_rng(1).permutation(len(N))
    again = bootstrap_chinchilla(N[perm], D[perm], L[perm], fit=chinchilla_fit, n_boot=200, seed=7)
    np.testing.assert_array_equal(again.samples, boot.samples)
    other = bootstrap_chinchilla(N, D, L, fit=chinchilla_fit, n_boot=200, seed=8)
    assert not np.array_equal(other.samples, boot.samples)
    json.dumps(boot.to_dict(), allow_nan=False)


def test_bootstrap_spread_matches_refits_on_fresh_noise():
    # The bootstrap should estimate the sampling spread of the fit: compare its standard errors
    # with the spread of fits to 20 independent noisy draws from the same law.
    fresh = [fit_chinchilla(*synthetic_nd(seed=s), init_grid=SMALL_GRID) for s in range(10, 30)]
    boot = bootstrap_chinchilla(*synthetic_nd(seed=2), n_boot=100, seed=0, init_grid=SMALL_GRID)
    for name in ("alpha", "beta", "E", "a"):
        spread = np.std([getattr(f, name) for f in fresh], ddof=1)
        assert 0.5 * spread < boot.se[name] < 2 * spread, (name, boot.se[name], spread)


# --- power laws ------------------------------------------------------------------------------


def test_power_law_without_irreducible_term_recovers_kaplan_law():
    rng = np.random.default_rng(0)
    x = np.logspace(7, 10, 12)
    y = (8.8e13 / x) ** 0.076 * np.exp(0.002 * rng.standard_normal(12))
    for delta in (1e-3, None):
        fit = fit_power_law(x, y, irreducible=False, huber_delta=delta)
        assert fit.E == 0.0
        assert fit.alpha == pytest.approx(0.076, abs=0.002)
        assert fit.x_c == pytest.approx(8.8e13, rel=0.15)
        np.testing.assert_allclose(fit.predict(x), (8.8e13 / x) ** 0.076, rtol=0.003)


def test_power_law_with_irreducible_term_recovers_known_law():
    rng = np.random.default_rng(1)
    x = np.logspace(7, 10, 12)
    y = (1.69 + 406.4 / x**0.34) * np.exp(0.002 * rng.standard_normal(12))
    fit = fit_power_law(x, y, irreducible=True)
    assert fit.E == pytest.approx(1.69, abs=0.03)
    assert fit.alpha == pytest.approx(0.34, abs=0.015)
    assert fit.x_c == pytest.approx(406.4 ** (1 / 0.34), rel=0.2)
    perm = np.random.default_rng(2).permutation(12)
    again = fit_power_law(x[perm], y[perm], irreducible=True)
    assert again.to_dict() == fit.to_dict()
    boot = bootstrap_power_law(x, y, irreducible=True, fit=fit, n_boot=100, seed=0)
    lo, hi = boot.intervals["alpha"]
    assert lo < 0.34 < hi and boot.n_failed == 0


# --- Approach 2 ------------------------------------------------------------------------------


def test_isoflop_recovers_compute_optimal_exponent():
    N, D, L, C = synthetic_isoflop()
    fit = fit_isoflop(N, D, L, C)
    assert len(fit.budgets) == 5 and np.all(fit.points_per_budget == 7)
    assert np.all(fit.vertex_in_range)
    assert fit.a == pytest.approx(A_TRUE, abs=0.02)
    assert fit.a + fit.b == pytest.approx(1.0)  # D_opt = C / (6 N_opt)
    np.testing.assert_allclose(fit.n_opt_per_budget, n_opt_true(fit.budgets), rtol=0.05)
    assert fit.n_opt(1e20) == pytest.approx(n_opt_true(1e20), rel=0.05)
    data = fit_isoflop(N, D, L, C, d_from="data")
    assert data.b == pytest.approx(1 - A_TRUE, abs=0.03)
    perm = np.random.default_rng(0).permutation(len(N))
    assert fit_isoflop(N[perm], D[perm], L[perm], C[perm]).to_dict() == fit.to_dict()
    json.dumps(fit.to_dict(), allow_nan=False)


def test_isoflop_groups_budgets_within_tolerance_and_bootstraps_per_budget():
    N, D, L, C = synthetic_isoflop(seed=1)
    jitter = C * (1 + 0.01 * np.random.default_rng(0).uniform(-1, 1, len(C)))
    fit = fit_isoflop(N, D, L, jitter)
    assert len(fit.budgets) == 5
    boot = bootstrap_isoflop(N, D, L, C, n_boot=200, seed=0)
    lo, hi = boot.intervals["a"]
    assert lo < A_TRUE < hi
    again = bootstrap_isoflop(N, D, L, C, n_boot=200, seed=0)
    np.testing.assert_array_equal(again.samples, boot.samples)


def test_isoflop_names_budget_with_too_few_points():
    N, D, L, C = synthetic_isoflop()
    keep = ~((C == C.max()) & (N > np.sort(N[C == C.max()])[1]))  # leave 2 points at the top
    with pytest.raises(UserError, match=r"budget C=1e\+21 has 2 distinct N"):
        fit_isoflop(N[keep], D[keep], L[keep], C[keep])


# --- Approach 1 ------------------------------------------------------------------------------


def test_envelope_recovers_compute_optimal_exponent():
    rng = np.random.default_rng(0)
    rows = []
    for n in np.logspace(7, 10.5, 30):  # curves all spanning the same FLOP range
        for C in np.logspace(17, 21, 60):
            rows.append((C, law(n, C / (6 * n)), n))
    C, L, N = (np.array(c) for c in zip(*rows, strict=True))
    L = L * np.exp(0.001 * rng.standard_normal(len(L)))
    fit = fit_envelope(C, L, N)
    assert fit.a == pytest.approx(A_TRUE, abs=0.03)
    assert fit.n_opt(1e19) == pytest.approx(n_opt_true(1e19), rel=0.1)
    np.testing.assert_allclose(fit.envelope_D, fit.envelope_C / (6 * fit.envelope_N))
    # The envelope point in a bin is the lowest loss there.
    assert np.all(np.diff(fit.envelope_C) > 0)
    perm = rng.permutation(len(C))
    assert fit_envelope(C[perm], L[perm], N[perm]).to_dict() == fit.to_dict()


# --- extrapolation ---------------------------------------------------------------------------


def test_extrapolation_to_largest_chinchilla_models(chinchilla_points):
    N, D, L = chinchilla_points
    res = extrapolation_check(N, D, L, holdout_largest=3)
    print("held out", res.N, "relative errors", res.relative_error)
    assert res.n_train + len(res.N) == 240
    train_sizes = np.setdiff1d(N, res.N)
    assert res.N.min() > train_sizes.max() * (1 + 1e-3)  # held out: the largest sizes only
    assert len(np.unique(np.round(np.log(res.N), 2))) == 3
    assert res.mean_abs_relative_error < 0.05
    np.testing.assert_allclose(res.relative_error, (res.predicted - res.L) / res.L)


def test_extrapolation_with_power_law_on_synthetic_sweep():
    N = np.logspace(7, 10, 12)
    L = law(N, 20 * N)
    res = extrapolation_check(N, 20 * N, L, holdout_largest=2, fit="power_law")
    np.testing.assert_array_equal(res.N, N[-2:])
    assert res.max_abs_relative_error < 0.01


def test_extrapolation_intervals_cover_the_truth_of_noisy_law_data():
    # Held-out points of a noisy law: the bootstrap interval of each prediction (refits on the
    # resampled training points) covers the noiseless truth, and is narrow.
    N, D, L = synthetic_nd(seed=3, noise=0.005)
    res = extrapolation_check(N, D, L, holdout_largest=2, n_boot=40, seed=1,
                              init_grid=COARSE_GRID)
    truth = law(res.N, res.D)
    lo, hi = res.interval[:, 0], res.interval[:, 1]
    assert np.mean((lo <= truth) & (truth <= hi)) >= 0.8
    assert np.all(lo <= res.predicted + 1e-9) and np.all(res.predicted <= hi + 1e-9)
    assert np.median((hi - lo) / truth) < 0.05
    assert res.to_dict()["covered"] == res.covered.tolist()
    pl = extrapolation_check(N[D == D.max()], D[D == D.max()], L[D == D.max()],
                             holdout_largest=1, fit="power_law", n_boot=40)
    assert pl.interval.shape == (1, 2) and pl.interval[0, 0] < pl.interval[0, 1]
    with pytest.raises(UserError, match="n_boot needs"):
        extrapolation_check(N, D, L, fit=lambda n, d, loss: None, n_boot=10)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fit_chinchilla([1e8] * 5, [1e9] * 5, [3.0] * 5), "at least 6 points; got 5"),
        (lambda: fit_chinchilla([1e8, 0] * 4, [1e9] * 8, [3.0] * 8), r"N must be positive.*N\[1\]"),
        (
            lambda: fit_chinchilla([1e8] * 8, [1e9] * 8, [3.0] * 7 + [np.nan]),
            r"L must be pos.*L\[7\]",
        ),
        (lambda: fit_chinchilla([1e8] * 8, [-1e9] * 8, [3.0] * 8), "D must be positive"),
        (lambda: fit_chinchilla([1e8] * 8, [1e9] * 7, [3.0] * 8), "same length"),
        (lambda: fit_chinchilla(*synthetic_nd(), huber_delta=0), "huber_delta"),
        (lambda: fit_chinchilla(*synthetic_nd(), init_grid=np.ones((3, 4))), "init_grid"),
        (lambda: fit_power_law([1, 2, 3], [3, 2, 1], irreducible=True), "at least 4 points"),
        (lambda: fit_power_law([1, 2], [3, 2], irreducible=False), "at least 3 points"),
        (lambda: fit_power_law([1, 2, np.inf], [3, 2, 1], irreducible=False), "x must be pos"),
        (lambda: fit_envelope([1e18] * 5, [3.0] * 5, [1e8] * 5), "envelope point"),
        (lambda: fit_envelope([1e18, 1e19, 1e20], [3, 2, 1], [1e8, 1e8, -1]), "N must be pos"),
        (lambda: fit_isoflop(*synthetic_isoflop()[:3], np.full(35, 1e20)), "1 FLOP budget"),
        (lambda: fit_isoflop(*synthetic_isoflop()[:3], np.full(34, 1e20)), "same length"),
        (lambda: extrapolation_check(*synthetic_nd(), holdout_largest=10), "leaves no model"),
        (lambda: bootstrap_chinchilla(*synthetic_nd(), n_boot=1), "n_boot"),
    ],
)
def test_bad_input_is_a_one_line_user_error(call, message):
    with pytest.raises(UserError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_isoflop_budget_without_minimum_is_named():
    N, D, L, C = synthetic_isoflop()
    top = C == C.max()
    L = L.copy()
    L[top] = 3.0 - 0.01 * (np.log(N[top]) - np.log(N[top]).mean()) ** 2  # opens downward
    with pytest.raises(UserError, match=r"budget C=1e\+21.*no minimum"):
        fit_isoflop(N, D, L, C)
