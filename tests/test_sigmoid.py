"""Emergence fits: known sigmoids recovered, smooth trends and edge jumps not called transitions."""

import json

import numpy as np
import pytest
from scipy.special import expit

from llmjax.errors import UserError
from llmjax.scaling import SigmoidFit, TransitionResult, detect_transition, fit_sigmoid

# Seven runs half a decade apart in training FLOPs, as a small sweep gives.
X = np.linspace(17.0, 20.0, 7)
GAP = 0.5
N_DOCS = 1000


def s_curve(x, x0, width, lo, hi):
    return lo + (hi - lo) * expit((x - x0) / width)


def binomial(p, seed, n=N_DOCS):
    return np.random.default_rng(seed).binomial(n, p) / n


def test_fit_sigmoid_recovers_a_noiseless_curve():
    x = np.linspace(16.0, 20.0, 9)
    y = s_curve(x, 18.3, 0.3, 0.2, 0.7)
    fit = fit_sigmoid(x, y)
    assert isinstance(fit, SigmoidFit)
    for got, want in ((fit.lo, 0.2), (fit.hi, 0.7), (fit.x0, 18.3), (fit.width, 0.3)):
        assert got == pytest.approx(want, abs=1e-4)
    line_sse = np.sum((np.polyval(np.polyfit(x, y, 1), x) - y) ** 2)
    assert fit.sse_linear == pytest.approx(line_sse, rel=1e-9)
    assert fit.sse < 1e-10 and fit.p_value < 1e-6 and fit.n == 9
    np.testing.assert_allclose(fit.predict(x), y, atol=1e-5)


def test_fit_sigmoid_on_a_noiseless_line_prefers_the_line():
    y = 0.1 + 0.05 * X
    fit = fit_sigmoid(X, y)
    assert fit.sse_linear < 1e-20 and fit.p_value == 1.0
    np.testing.assert_allclose(fit.predict_linear(X), y, atol=1e-12)


def test_s_curve_with_binomial_noise_is_detected_and_located():
    x0, width, lo, hi = 18.7, 0.2, 0.25, 0.85  # x0 between the runs at 18.5 and 19.0
    covered = 0
    for seed in range(5):
        y = binomial(s_curve(X, x0, width, lo, hi), seed)
        res = detect_transition(X, y, n=N_DOCS, seed=seed)
        assert res.detected, res.reason
        assert res.reason.startswith("transition at x = ")
        assert 18.5 <= res.threshold <= 19.0
        ci_lo, ci_hi = res.threshold_ci
        assert ci_lo <= res.threshold <= ci_hi
        covered += ci_lo <= x0 <= ci_hi
        assert res.jump == pytest.approx(hi - lo, abs=0.1)
        assert 0 <= res.fit.lo and res.fit.hi <= 1  # accuracy plateaus stay in [0, 1]
        assert res.detected_fraction >= 0.5
        json.dumps(res.to_dict())
    assert covered >= 4  # a 95% interval; one miss in five is allowed


def test_known_sigma_uses_a_chi2_test():
    x0, sigma = 18.3, 0.02
    rng = np.random.default_rng(3)
    y = s_curve(X, x0, 0.25, 0.3, 0.8) + sigma * rng.standard_normal(len(X))
    res = detect_transition(X, y, sigma=sigma, seed=1)
    assert res.fit.test == "chi2"
    assert res.detected, res.reason
    assert res.threshold_ci[0] <= x0 <= res.threshold_ci[1]


def test_near_step_interval_spans_the_gap_between_bracketing_runs():
    # A step much sharper than the spacing: the data cannot place it within the gap 18.5-19.0.
    y = binomial(s_curve(X, 18.6, 0.005, 0.25, 0.8), seed=4)
    res = detect_transition(X, y, n=N_DOCS)
    assert res.detected, res.reason
    assert res.threshold_ci[0] <= 18.5 and res.threshold_ci[1] >= 19.0


@pytest.mark.parametrize("rise", [0.2, 0.6])
def test_straight_line_rise_is_not_a_transition(rise):
    for seed in range(5):
        y = binomial(0.25 + rise * (X - X[0]) / np.ptp(X), seed)
        res = detect_transition(X, y, n=N_DOCS, seed=seed)
        assert not res.detected, res.reason
        assert res.reason.startswith("no transition detected: ")
        assert res.threshold is None and res.threshold_ci is None and res.jump is None


def test_flat_at_chance_is_not_a_transition():
    for seed in range(5):
        res = detect_transition(X, binomial(np.full(len(X), 0.25), seed), n=N_DOCS, seed=seed)
        assert not res.detected, res.reason


@pytest.mark.parametrize(
    ("y", "kwargs"),
    [
        (np.full(7, 0.25), {"n": N_DOCS}),
        (np.zeros(7), {"n": 50}),
        (np.ones(7), {"n": 50}),
        (np.full(7, 3.2), {}),
        (np.full(7, 3.2), {"sigma": 0.1}),
    ],
)
def test_constant_metric_is_not_a_transition(y, kwargs):
    res = detect_transition(X, y, **kwargs)
    assert not res.detected
    assert "constant" in res.reason
    assert res.fit.lo == res.fit.hi == y[0] and res.fit.p_value == 1.0
    json.dumps(res.to_dict())


def test_jump_at_the_last_run_only_is_an_edge_artefact():
    p = np.where(X > X[-2], 0.8, 0.25)
    res = detect_transition(X, binomial(p, seed=5), n=N_DOCS)
    assert not res.detected
    assert "edge" in res.reason and "1 distinct x above" in res.reason


def test_drop_at_the_first_run_only_is_an_edge_artefact():
    y = np.where(X < X[1], 5.0, 3.0) + 0.01 * np.random.default_rng(6).standard_normal(len(X))
    res = detect_transition(X, y)
    assert not res.detected
    assert "edge" in res.reason and "1 distinct x below" in res.reason


def test_too_few_points():
    res = detect_transition(X[:4], [0.25, 0.25, 0.8, 0.8], n=N_DOCS)
    assert not res.detected and res.fit is None
    assert "too few distinct x values (4" in res.reason
    res = detect_transition([], [])
    assert not res.detected and res.fit is None and "too few" in res.reason


def test_repeated_runs_at_one_compute_count_once():
    # Ten points but only four compute budgets: still too few distinct x.
    x = np.repeat(X[:4], [3, 3, 2, 2])
    y = binomial(np.where(x > 17.7, 0.8, 0.25), seed=7)
    res = detect_transition(x, y, n=N_DOCS)
    assert not res.detected and "(4;" in res.reason and res.fit is not None


def test_falling_cross_entropy_is_detected_with_negative_jump():
    x0, width, before, after = 18.7, 0.2, 4.0, 3.0
    rng = np.random.default_rng(8)
    y = s_curve(X, x0, width, before, after) + 0.02 * rng.standard_normal(len(X))
    res = detect_transition(X, y, seed=2)  # unbounded, no counts: residual bootstrap
    assert res.detected, res.reason
    assert res.jump == pytest.approx(after - before, abs=0.2) and res.jump < 0
    assert res.change < 0
    assert res.threshold_ci[0] <= x0 <= res.threshold_ci[1]


def test_smooth_power_law_loss_is_not_a_transition():
    # L = E + A C^-alpha falls fastest at small compute: a bend at one end, not a step.
    rng = np.random.default_rng(9)
    y = 2.0 + 3.0 * 10 ** (-0.3 * (X - X[0])) + 0.01 * rng.standard_normal(len(X))
    res = detect_transition(X, y)
    assert not res.detected, res.reason


def test_change_within_binomial_noise_is_not_reported():
    # A clean sigmoid (so the F test passes) whose 0.02 rise is below 3 x SE with 100 documents.
    y = s_curve(X, 18.5, 0.2, 0.30, 0.32)
    res = detect_transition(X, y, n=100)
    assert not res.detected
    assert "within the noise" in res.reason
    se = np.sqrt(0.31 * 0.69 / 100)
    assert res.noise == pytest.approx(se, rel=0.05)


def test_bootstrap_must_agree():
    # A noiseless small sigmoid passes the test, the edge and the 3 x SE checks on the data (its
    # 0.05 rise is 3.4 binomial SE with 1000 documents), but noisy replicates rarely see it.
    y = s_curve(X, 18.5, 0.2, 0.30, 0.35)
    se = np.sqrt(0.3 * 0.7 / N_DOCS)
    assert 0.05 > 3 * se
    res = detect_transition(X, y, n=N_DOCS)
    assert not res.detected
    assert "bootstrap replicates also detect one" in res.reason and res.detected_fraction < 0.5


def test_bounds_keep_the_plateaus_in_range():
    # A line from 0 to 1: an unbounded broad sigmoid mimics it with asymptotes beyond [0, 1].
    y = (X - X[0]) / np.ptp(X)
    free, boxed = fit_sigmoid(X, y), fit_sigmoid(X, y, bounds=(0.0, 1.0))
    assert free.lo < 0 and free.hi > 1
    assert 0 <= boxed.lo and boxed.hi <= 1 and boxed.sse > free.sse
    assert fit_sigmoid(X, y, n=N_DOCS) == boxed  # counts imply a [0, 1] metric


def test_min_jump_floor():
    y = binomial(s_curve(X, 18.7, 0.2, 0.25, 0.85), seed=0)
    assert detect_transition(X, y, n=N_DOCS).detected
    res = detect_transition(X, y, n=N_DOCS, min_jump=0.8)
    assert not res.detected and "min_jump" in res.reason


def test_seeded_and_order_invariant():
    y = binomial(s_curve(X, 18.4, 0.3, 0.25, 0.7), seed=10)
    a = detect_transition(X, y, n=N_DOCS, seed=3)
    b = detect_transition(X, y, n=N_DOCS, seed=3)
    perm = np.random.default_rng(0).permutation(len(X))
    c = detect_transition(X[perm], y[perm], n=N_DOCS, seed=3)
    assert a.to_dict() == b.to_dict() == c.to_dict()
    d = detect_transition(X, y, n=N_DOCS, seed=4)
    assert d.fit == a.fit and d.threshold_ci != a.threshold_ci


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((X, np.zeros(6)), {}, "x, y"),
        ((np.where(X > 19, np.nan, X), np.zeros(7)), {}, "x"),
        ((X, np.where(X > 19, np.inf, 0.5)), {}, "y"),
        ((X, np.full(7, 0.5)), {"n": 0}, "n"),
        ((X, np.full(7, 0.5)), {"n": np.full(7, 10.5)}, "n"),
        ((X, np.full(7, 0.5)), {"n": np.full(6, 10)}, "n"),
        ((X, np.full(7, 0.5)), {"sigma": -1.0}, "sigma"),
        ((X, np.full(7, 0.5)), {"n": 10, "sigma": 0.1}, "n"),
        ((X, np.full(7, 1.5)), {"n": 10}, "y"),
        ((X, np.full(7, 0.5)), {"bounds": (1.0, 0.0)}, "bounds"),
        ((X, np.full(7, 0.5)), {"n_boot": 1}, "n_boot"),
        ((X, np.full(7, 0.5)), {"confidence": 1.5}, "confidence"),
        ((X, np.full(7, 0.5)), {"alpha": 0.0}, "alpha"),
        ((X, np.full(7, 0.5)), {"min_jump": -0.1}, "min_jump"),
        ((X, [[0.5] * 7]), {}, "y"),
    ],
)
def test_bad_input_is_a_one_line_value_error(args, kwargs, name):
    with pytest.raises(ValueError) as info:
        detect_transition(*args, **kwargs)
    msg = str(info.value)
    assert isinstance(info.value, UserError)  # the CLI prints it as `error: <msg>`
    assert name in msg and "\n" not in msg


def test_fit_sigmoid_needs_five_points():
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_sigmoid(X[:4], [0.1, 0.2, 0.3, 0.4])


def test_result_types():
    res = detect_transition(X, binomial(np.full(7, 0.25), 0), n=N_DOCS)
    assert isinstance(res, TransitionResult)
    d = res.to_dict()
    assert set(d) >= {"detected", "reason", "fit", "threshold", "threshold_ci", "jump"}
    assert d["detected_fraction"] is None or 0 <= d["detected_fraction"] <= 1
