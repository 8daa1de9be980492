"""Scaling-law fits from a sweep's tables: rows of results.csv and curves.csv in, fits out.

`analyze(rows, curves)` is pure: it parses the rows (dicts of strings or numbers), picks the points
each fit needs, runs the `llmjax.scaling` fits with bootstrap intervals, and returns a
`ScalingAnalysis`. Every fit is optional: too few points or a failed fit leaves it None and a
one-sentence reason in `ScalingAnalysis.absent`; nothing here raises on thin data.

The pieces (Kaplan et al. 2020; Hoffmann et al. 2022; Besiroglu et al. 2024; Li et al. 2025):
- L(N): final eval loss against non-embedding N, L = E + (N_c/N)^alpha_N, with a bootstrap band.
- Approach 1: lower envelope of the eval curves against compute C, giving N_opt ~ C^a, and the
  frontier L(C) = E + (C_c/C)^alpha_C fitted on the envelope points.
- Approach 2 (rows with a `budget`): parabolas of final loss in log N per FLOP budget.
- Approach 3: L(N, D) = E + A/N^alpha + B/D^beta on final points, plus intermediate eval points
  of the curves by default (`approach3_points`), since a fixed tokens-per-param sweep alone has
  log N and log D collinear.
- Extrapolation: hold out the largest model size, refit L(N) and Approach 3, predict its loss.

Units: N parameters, D tokens, C FLOPs, L nats per token.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmjax import scaling
from llmjax.errors import UserError
from llmjax.rundir import Status
from llmjax.scaling.isoflop import group_budgets

# Reduced Approach 3 start grid (675 starts): same ranges as the paper's 4,500, coarser steps.
COARSE_GRID: dict[str, tuple[float, ...]] = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 10.0, 20.0),
    "b": (0.0, 10.0, 20.0),
}
# |corr(log N, log D)| above this: N and D are collinear and Approach 3 is not identified.
COLLINEAR = 0.999
# approach3_points="auto" fits final points alone when their |corr(log N, log D)| is at most this.
FINAL_POINTS_CORR = 0.99
# Model sizes within this relative tolerance count as one size.
SIZE_RTOL = 1e-3
# The study (results.csv `study`) whose runs the fits use when a sweep marks its runs.
SCALING_STUDY = "scaling"

GRIDS: dict[str, Mapping[str, tuple[float, ...]]] = {
    "paper": scaling.PAPER_GRID,
    "coarse": COARSE_GRID,
}


@dataclass(frozen=True)
class AnalysisOptions:
    """Fit choices; all of them are written into the report (Li et al. 2025 ask for that).

    n_boot: bootstrap replicates per fit. compute: the compute column, "flops_6nd" (6 N D with
    non-embedding N, the convention C = 6 N D of Approaches 1-3 relies on) or "flops" (exact,
    with attention). approach3_points: "curves" (final points plus intermediate eval points at
    >= curve_min_fraction of each run's tokens, at most curve_points_per_run per run), "final",
    or "auto" (final points when they alone identify the fit, |corr(log N, log D)| <=
    FINAL_POINTS_CORR, as a sweep with several token counts per size does; else curves: an
    intermediate point of a decaying schedule is not the loss of a run that ends there).
    chinchilla_grid: "paper" (4,500 starts) or "coarse" (675). holdout_largest: model sizes held
    out by the extrapolation check. envelope_bins: log-spaced C bins of Approach 1.
    """

    n_boot: int = 200
    seed: int = 0
    confidence: float = 0.95
    huber_delta: float = 1e-3
    compute: str = "flops_6nd"
    approach3_points: str = "auto"
    curve_min_fraction: float = 0.25
    curve_points_per_run: int = 8
    chinchilla_grid: str = "paper"
    holdout_largest: int = 1
    envelope_bins: int = 30

    def check(self) -> None:
        if not (isinstance(self.n_boot, int) and self.n_boot >= 2):
            raise UserError(f"n_boot must be an integer >= 2; got {self.n_boot!r}")
        if self.compute not in ("flops_6nd", "flops"):
            raise UserError(f"compute must be 'flops_6nd' or 'flops'; got {self.compute!r}")
        if self.approach3_points not in ("auto", "curves", "final"):
            raise UserError(f"approach3_points must be 'auto', 'curves' or 'final'; got "
                            f"{self.approach3_points!r}")
        if self.chinchilla_grid not in GRIDS:
            raise UserError(
                f"chinchilla_grid must be one of {', '.join(GRIDS)}; got {self.chinchilla_grid!r}"
            )
        if not 0.0 <= self.curve_min_fraction <= 1.0:
            raise UserError(f"curve_min_fraction must lie in [0, 1]; got {self.curve_min_fraction}")
        if not (isinstance(self.holdout_largest, int) and self.holdout_largest >= 1):
            raise UserError(f"holdout_largest must be an integer >= 1; got {self.holdout_largest}")


def to_float(value: Any) -> float | None:
    """A finite float from a CSV cell or number; None for empty, 'nan', inf or text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Run:
    """One row of results.csv, parsed. Counts in parameters, tokens, FLOPs; losses in nats."""

    name: str
    status: str
    error: str
    n_params: float | None
    n_non_embedding: float | None
    n_embedding: float | None
    tokens: float | None
    flops: float | None
    flops_6nd: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    wall_time_s: float | None
    budget: float | None
    lr: float | None
    usable: bool
    reason: str  # why the run is left out of the fits; "" when usable
    group: str = ""  # the point this run replicates (results.csv `group`; its name if none)
    study: str = ""  # the sweep's study it belongs to (results.csv `study`; "" if unmarked)
    entropy: float | None = None  # its corpus's entropy rate, nats/token (generator-computed)
    entropy_se: float | None = None
    schedule: str = ""  # its learning-rate schedule (results.csv `schedule`)

    def compute(self, column: str) -> float | None:
        if column == "flops" and self.flops is not None:
            return self.flops
        return self.flops_6nd  # parse_run fills it from N and tokens when the table has none


def parse_run(row: Mapping[str, Any]) -> Run:
    """A results.csv row (strings or numbers) as a Run; unusable rows say why in `reason`."""
    name = str(row.get("name") or "").strip()
    status = str(row.get("status") or "").strip()
    error = str(row.get("error") or "").strip()
    nums = {
        k: to_float(row.get(k))
        for k in (
            "n_params", "n_non_embedding", "n_embedding", "tokens", "flops", "flops_6nd",
            "final_eval_loss", "best_eval_loss", "wall_time_s", "budget", "lr",
        )
    }
    if nums["flops_6nd"] is None and nums["n_non_embedding"] and nums["tokens"]:
        nums["flops_6nd"] = 6.0 * nums["n_non_embedding"] * nums["tokens"]
    reason = ""
    if status != Status.COMPLETE:  # only a complete run's numbers are final
        reason = f"status {status or '(none)'}" + (f": {error}" if error else "")
    elif error:
        reason = f"error: {error}"
    else:
        for key in ("n_non_embedding", "tokens", "final_eval_loss"):
            if nums[key] is None or nums[key] <= 0:
                reason = f"no valid {key}"
                break
    group = str(row.get("group") or "").strip() or name
    return Run(name=name, status=status, error=error, usable=not reason, reason=reason,
               group=group, study=str(row.get("study") or "").strip(),
               entropy=to_float(row.get("entropy_nats_per_token")),
               entropy_se=to_float(row.get("entropy_se")),
               schedule=str(row.get("schedule") or "").strip(), **nums)


@dataclass(frozen=True)
class Curve:
    """Eval curve of one run: arrays [k] sorted by tokens (tokens, FLOPs, loss in nats)."""

    name: str
    n_non_embedding: float
    tokens: np.ndarray
    compute: np.ndarray
    eval_loss: np.ndarray


def parse_curves(
    curves: Iterable[Mapping[str, Any]], runs: Mapping[str, Run], compute: str
) -> dict[str, Curve]:
    """Eval curves of the usable runs; points without a finite positive loss or tokens dropped."""
    by_name: dict[str, list[tuple[float, float, float]]] = {}
    for row in curves:
        name = str(row.get("name") or "").strip()
        run = runs.get(name)
        if run is None or not run.usable:
            continue
        tokens, loss = to_float(row.get("tokens")), to_float(row.get("eval_loss"))
        if not tokens or not loss or tokens <= 0 or loss <= 0:
            continue
        n = to_float(row.get("n_non_embedding")) or run.n_non_embedding
        c = to_float(row.get(compute))
        if compute == "flops_6nd" or c is None:
            c = to_float(row.get("flops_6nd")) or 6.0 * n * tokens
        by_name.setdefault(name, []).append((tokens, c, loss))
    out = {}
    for name, pts in by_name.items():
        arr = np.array(sorted(pts), np.float64)
        out[name] = Curve(name, float(runs[name].n_non_embedding), arr[:, 0], arr[:, 1], arr[:, 2])
    return out


@dataclass(frozen=True, eq=False)
class Interval:
    """A fitted value with its bootstrap percentile interval (None where no bootstrap ran)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": None if self.lo is None else [self.lo, self.hi]}


def _intervals(boot: scaling.BootstrapResult | None, values: Mapping[str, float]) -> dict:
    out = {}
    for k, v in values.items():
        if boot is not None and k in boot.intervals:
            lo, hi = boot.intervals[k]
            out[k] = Interval(float(v), float(lo), float(hi))
        else:
            out[k] = Interval(float(v))
    return out


@dataclass(frozen=True, eq=False)
class PowerLawSection:
    """L(x) = E + (x_c/x)^alpha fitted on points x [n], y [n] with bootstrap band on `grid`."""

    x: np.ndarray
    y: np.ndarray
    names: list[str]  # run names of the points ([] for envelope points)
    fit: scaling.PowerLawFit
    boot: scaling.BootstrapResult | None
    params: dict[str, Interval]
    grid: np.ndarray  # [g] x values of the band
    band_lo: np.ndarray | None  # [g]
    band_hi: np.ndarray | None  # [g]
    note: str = ""


@dataclass(frozen=True, eq=False)
class AllocationSection:
    """Compute-optimal allocation of one approach: a, b with intervals and the fit object."""

    approach: str
    fit: Any  # EnvelopeFit | IsoFLOPFit | ChinchillaFit
    boot: scaling.BootstrapResult | None
    params: dict[str, Interval]
    n_points: int
    note: str = ""

    def n_opt(self, C) -> np.ndarray:
        return np.asarray(self.fit.n_opt(C), np.float64)


@dataclass(frozen=True, eq=False)
class IsoFLOPSection(AllocationSection):
    """Approach 2, with each budget's points for the plot: budget -> (N [k], L [k])."""

    points: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ChinchillaSection(AllocationSection):
    """Approach 3 with its points and the identification diagnostics."""

    N: np.ndarray = field(default_factory=lambda: np.zeros(0))
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    L: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_final: int = 0
    n_intermediate: int = 0
    corr_final: float | None = None  # correlation of log N and log D over final points only
    corr_all: float | None = None  # over all points used


@dataclass(frozen=True, eq=False)
class Extrapolation:
    """A fit on all but the largest model size(s), predicting the held-out final loss."""

    method: str  # "L(N) power law" | "Approach 3"
    names: list[str]
    N: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    relative_error: np.ndarray  # (predicted - actual) / actual
    n_train: int
    note: str = ""
    interval: np.ndarray | None = None  # [m, 2] bootstrap interval of `predicted`
    confidence: float | None = None

    @property
    def mean_abs_relative_error(self) -> float:
        return float(np.mean(np.abs(self.relative_error)))

    @property
    def covered(self) -> np.ndarray | None:
        """Whether each held-out truth lies inside its prediction interval."""
        if self.interval is None:
            return None
        return (self.interval[:, 0] <= self.actual) & (self.actual <= self.interval[:, 1])

    def to_dict(self) -> dict:
        interval = {} if self.interval is None else {
            "interval": self.interval.tolist(), "covered": self.covered.tolist()}
        return {
            **interval,
            "method": self.method,
            "runs": self.names,
            "N": self.N.tolist(),
            "actual": self.actual.tolist(),
            "predicted": self.predicted.tolist(),
            "relative_error": self.relative_error.tolist(),
            "mean_abs_relative_error": self.mean_abs_relative_error,
            "n_train": self.n_train,
            "note": self.note,
        }


@dataclass(frozen=True, eq=False)
class ScalingAnalysis:
    """Everything the report shows. A fit that could not be made is None, its reason in `absent`."""

    options: AnalysisOptions
    runs: list[Run]
    used: list[Run]  # usable runs that survive the best-per-(N, D) selection
    dropped_duplicates: list[Run]  # usable runs beaten by another at the same (N, D)
    curves: dict[str, Curve]
    loss_vs_n: PowerLawSection | None
    frontier: PowerLawSection | None  # L(C) on the Approach 1 envelope
    approach1: AllocationSection | None
    approach2: IsoFLOPSection | None
    approach3: ChinchillaSection | None
    extrapolations: list[Extrapolation]
    absent: dict[str, str]  # piece -> one sentence why it is missing
    # The entropy rate of the corpus the used runs trained on, as its generator computed it
    # ({"nats_per_token", "se"}; None when not computed or the runs' corpora differ): the truth
    # a fitted E can be checked against (it bounds E from below: a model's context is finite).
    entropy: dict | None = None

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.usable]

    def allocations(self) -> list[AllocationSection]:
        return [s for s in (self.approach1, self.approach2, self.approach3) if s is not None]

    def headline(self) -> dict:
        """The headline numbers (JSON-able): exponents with intervals and extrapolation errors."""
        out: dict[str, Any] = {
            "n_runs": len(self.runs),
            "n_used": len(self.used),
            "n_failed": len(self.failed),
            "n_other_study": sum(1 for r in self.failed if r.reason.startswith("study ")),
            "confidence": self.options.confidence,
        }
        if self.loss_vs_n is not None:
            out["alpha_N"] = self.loss_vs_n.params["alpha"].to_dict()
            if "E" in self.loss_vs_n.params:  # fitted without E below 4 sizes
                out["E"] = self.loss_vs_n.params["E"].to_dict()
        if self.frontier is not None:
            out["alpha_C"] = self.frontier.params["alpha"].to_dict()
        out["a"] = {s.approach: s.params["a"].to_dict() for s in self.allocations()}
        out["b"] = {s.approach: s.params["b"].to_dict() for s in self.allocations()}
        if self.approach3 is not None:
            out["chinchilla"] = {k: v.to_dict() for k, v in self.approach3.params.items()}
        if self.entropy is not None:
            out["entropy"] = dict(self.entropy)
        out["extrapolation"] = {
            e.method: {
                "runs": e.names,
                "N": e.N.tolist(),
                "actual": e.actual.tolist(),
                "predicted": e.predicted.tolist(),
                "relative_error": e.relative_error.tolist(),
                **({} if e.interval is None else {"interval": e.interval.tolist(),
                                                  "covered": e.covered.tolist()}),
            }
            for e in self.extrapolations
        }
        out["absent"] = dict(self.absent)
        return out


def _best_group(runs: list[Run]) -> list[Run]:
    """The runs of the group (replicates of one point) with the lowest mean final eval loss."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    return min(groups.values(), key=lambda g: (float(np.mean([r.final_eval_loss for r in g])),
                                                sorted(r.name for r in g)))


def best_per_point(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """Keep the lowest final eval loss per (N, D): the best learning rate (Li et al. 2025).
    Replicates (runs of one group, e.g. seeds) are judged by their mean and kept together, so
    the fits weigh every replicate and the bootstrap resamples them."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        key = (round(math.log(r.n_non_embedding), 6), round(math.log(r.tokens), 6))
        groups.setdefault(key, []).append(r)
    kept, dropped = [], []
    for members in groups.values():
        best = _best_group(members)
        kept += best
        dropped += [r for r in members if r not in best]
    kept.sort(key=lambda r: (r.n_non_embedding, r.tokens, r.name))
    return kept, dropped


def replicate_stats(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float, int]]:
    """(x, mean y, standard error of the mean, count) per distinct x; SE is nan for one point."""
    out = []
    for value in np.unique(x):
        ys = y[x == value]
        se = float(np.std(ys, ddof=1) / math.sqrt(len(ys))) if len(ys) > 1 else float("nan")
        out.append((float(value), float(np.mean(ys)), se, len(ys)))
    return out


def _band(boot: scaling.BootstrapResult, grid: np.ndarray, confidence: float, irreducible: bool):
    """Pointwise percentile band [g] of E + (x_c/x)^alpha over the bootstrap replicates."""
    cols = {n: boot.samples[:, i] for i, n in enumerate(boot.names)}
    E = cols["E"][:, None] if irreducible else 0.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        curves = E + np.exp(cols["alpha"][:, None] * (np.log(cols["x_c"])[:, None] - np.log(grid)))
    curves = curves[np.all(np.isfinite(curves), axis=1)]
    if len(curves) < 2:
        return None, None
    q = 50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)
    lo, hi = np.percentile(curves, q, axis=0)
    return lo, hi


def fit_power_law_section(
    x: np.ndarray, y: np.ndarray, names: list[str], opts: AnalysisOptions, *, what: str,
    grid_span: tuple[float, float] = (0.5, 4.0),
) -> PowerLawSection:
    """Power law with E when >= 4 distinct x values, else without (>= 3); bootstrap band."""
    n_distinct = len(np.unique(np.round(np.log(x), 9)))
    irreducible = n_distinct >= 4
    if n_distinct < 3:
        raise UserError(f"{what} needs at least 3 distinct points; got {n_distinct}")
    note = "" if irreducible else f"only {n_distinct} points: fitted without the irreducible term E"
    fit = scaling.fit_power_law(x, y, irreducible=irreducible, huber_delta=opts.huber_delta)
    boot = None
    try:
        boot = scaling.bootstrap_power_law(
            x, y, irreducible=irreducible, n_boot=opts.n_boot, seed=opts.seed,
            confidence=opts.confidence, huber_delta=opts.huber_delta, fit=fit,
        )
    except UserError as e:
        note = (note + "; " if note else "") + f"no bootstrap: {e}"
    grid = np.geomspace(x.min() * grid_span[0], x.max() * grid_span[1], 120)
    lo = hi = None
    if boot is not None:
        lo, hi = _band(boot, grid, opts.confidence, irreducible)
    params = _intervals(boot, {"E": fit.E, "x_c": fit.x_c, "alpha": fit.alpha})
    if not irreducible:
        params.pop("E")
    return PowerLawSection(x, y, names, fit, boot, params, grid, lo, hi, note)


def _loss_vs_n(used: list[Run], opts: AnalysisOptions, absent: dict) -> PowerLawSection | None:
    """Final eval loss vs N: runs without a budget (the size sweep), lowest loss per size."""
    pool = [r for r in used if r.budget is None] or used
    by_size: dict[int, list[Run]] = {}
    sizes = np.array([r.n_non_embedding for r in pool])
    labels = scaling.cluster_labels(sizes, SIZE_RTOL) if pool else []
    for r, lab in zip(pool, labels, strict=True):
        by_size.setdefault(int(lab), []).append(r)
    # Per size the best group (learning rate...), every replicate of it a point of the fit.
    pts = sorted((r for runs in by_size.values() for r in _best_group(runs)),
                 key=lambda r: (r.n_non_embedding, r.name))
    if len(by_size) < 3:
        absent["loss_vs_n"] = (
            f"L(N) needs at least 3 model sizes with a final eval loss; the sweep has "
            f"{len(by_size)}."
        )
        return None
    x = np.array([r.n_non_embedding for r in pts])
    y = np.array([r.final_eval_loss for r in pts])
    try:
        return fit_power_law_section(x, y, [r.name for r in pts], opts, what="L(N)")
    except UserError as e:
        absent["loss_vs_n"] = f"L(N) fit failed: {e}."
        return None


def _size_spans(C: np.ndarray, N: np.ndarray) -> dict[float, tuple[float, float]]:
    """Compute range (first C, last C) covered by each model size's curve points."""
    return {float(n): (float(C[N == n].min()), float(C[N == n].max())) for n in np.unique(N)}


def _trim_envelope(C, L, N, env, opts: AnalysisOptions):
    """Drop the envelope's ends where N_opt is clipped to the sweep's sizes, and refit.

    At the low-compute end the envelope's model is clipped when it is the smallest size whose
    curve has begun by that C (nothing smaller was trained there); at the high-compute end when
    it is the largest size whose curve reaches that C. Such points flatten a. Keeps curve points
    with C between the first and last unclipped envelope points; if fewer than 3 envelope points
    are left, keeps everything and says so.
    """
    spans = _size_spans(C, N)
    eC, eN = env.envelope_C, env.envelope_N

    def smallest_begun(c):
        return min(n for n, (lo, _) in spans.items() if lo <= c)

    def largest_reaching(c):
        return max(n for n, (_, hi) in spans.items() if hi >= c)

    i0, i1 = 0, len(eN)
    while i0 < i1 and eN[i0] <= smallest_begun(eC[i0]):
        i0 += 1
    while i1 > i0 and eN[i1 - 1] >= largest_reaching(eC[i1 - 1]):
        i1 -= 1
    if i0 == 0 and i1 == len(eN):
        return C, L, N, env, ""
    if i1 - i0 >= 3:
        keep = (C >= eC[i0]) & (C <= eC[i1 - 1])
        try:
            trimmed = scaling.fit_envelope(C[keep], L[keep], N[keep], num_bins=opts.envelope_bins)
        except UserError:
            trimmed = None
        if trimmed is not None:
            note = (
                f"compute restricted to {eC[i0]:.3g}-{eC[i1 - 1]:.3g} FLOPs: outside it the "
                "envelope's model is the smallest (largest) size trained that far, so N_opt is "
                "clipped to the sweep's sizes"
            )
            return C[keep], L[keep], N[keep], trimmed, note
    return C, L, N, env, (
        "the envelope sits mostly at the smallest or largest size trained, so N_opt(C) is "
        "clipped to the sweep's sizes and a is biased toward 0"
    )


def _switches_at_run_end(C: np.ndarray, N: np.ndarray, env) -> tuple[int, int]:
    """(switches of the envelope from one size to another, of which where the first run ended).

    A switch at a run's end, not at a crossing of two curves, means the envelope follows how far
    each size was trained rather than which size is better: a fixed tokens-per-parameter sweep
    then gives N_opt proportional to C^0.5 by construction.
    """
    spans = _size_spans(C, N)
    eC, eN = env.envelope_C, env.envelope_N
    switches = ended = 0
    for j in range(1, len(eN)):
        if eN[j] != eN[j - 1]:
            switches += 1
            ended += int(spans[float(eN[j - 1])][1] < eC[j])
    return switches, ended


def _approach1(curves: dict[str, Curve], opts: AnalysisOptions, absent: dict):
    """Approach 1 envelope of all curve points; L(C) frontier power law on the envelope."""
    if not curves:
        absent["approach1"] = "Approach 1 needs eval curves (curves.csv); none were found."
        absent["frontier"] = "The L(C) frontier needs eval curves (curves.csv); none were found."
        return None, None
    C = np.concatenate([c.compute for c in curves.values()])
    L = np.concatenate([c.eval_loss for c in curves.values()])
    N = np.concatenate([np.full(len(c.compute), c.n_non_embedding) for c in curves.values()])
    sizes = len(np.unique(N))
    if sizes < 2:
        absent["approach1"] = f"Approach 1 needs curves of at least 2 model sizes; got {sizes}."
        absent["frontier"] = absent["approach1"].replace("Approach 1", "The L(C) frontier")
        return None, None
    try:
        env = scaling.fit_envelope(C, L, N, num_bins=opts.envelope_bins)
    except UserError as e:
        absent["approach1"] = f"Approach 1 failed: {e}."
        absent["frontier"] = "The L(C) frontier needs the Approach 1 envelope."
        return None, None
    C, L, N, env, note = _trim_envelope(C, L, N, env, opts)
    switches, ended = _switches_at_run_end(C, N, env)
    if switches and ended >= max(1, switches // 2):
        note = (note + "; " if note else "") + (
            f"{ended} of the envelope's {switches} switches between sizes happen where the "
            "smaller run ended, not where two curves cross: there the envelope follows how far "
            "each size was trained (for a fixed tokens-per-parameter sweep, N_opt ~ C^0.5 by "
            "construction), so a from Approach 1 is not informative about the optimum"
        )
    boot = None
    if len(np.unique(env.envelope_N)) < 2:
        note = (note + "; " if note else "") + (
            "the envelope holds a single model size, so N_opt(C) is flat"
        )
    try:
        boot = scaling.bootstrap_envelope(
            C, L, N, num_bins=opts.envelope_bins, n_boot=opts.n_boot, seed=opts.seed,
            confidence=opts.confidence,
        )
    except UserError as e:
        note = (note + "; " if note else "") + f"no bootstrap: {e}"
    section = AllocationSection(
        approach="Approach 1",
        fit=env,
        boot=boot,
        params=_intervals(boot, {"a": env.a, "b": env.b}),
        n_points=len(env.envelope_C),
        note=note,
    )
    frontier = None
    try:
        frontier = fit_power_law_section(
            env.envelope_C, env.envelope_L, [], opts, what="L(C) frontier", grid_span=(1.0, 4.0)
        )
    except UserError as e:
        absent["frontier"] = f"L(C) frontier fit failed: {e}."
    return section, frontier


def _approach2(used: list[Run], opts: AnalysisOptions, absent: dict) -> IsoFLOPSection | None:
    """IsoFLOP parabolas on the runs with a FLOP budget; C = the budget column."""
    pts = [r for r in used if r.budget is not None and r.budget > 0]
    if not pts:
        absent["approach2"] = (
            "Approach 2 needs iso-FLOP runs (a `budget` column); the sweep has none."
        )
        return None
    N = np.array([r.n_non_embedding for r in pts])
    D = np.array([r.tokens for r in pts])
    L = np.array([r.final_eval_loss for r in pts])
    C = np.array([r.budget for r in pts])
    try:
        fit = scaling.fit_isoflop(N, D, L, C)
    except UserError as e:
        absent["approach2"] = f"Approach 2 not fitted: {e}."
        return None
    boot, note = None, ""
    try:
        boot = scaling.bootstrap_isoflop(
            N, D, L, C, n_boot=opts.n_boot, seed=opts.seed, confidence=opts.confidence
        )
    except UserError as e:
        note = f"no bootstrap: {e}"
    if not np.all(fit.vertex_in_range):
        out = [f"{b:.3g}" for b, ok in zip(fit.budgets, fit.vertex_in_range, strict=True) if not ok]
        note = (note + "; " if note else "") + (
            f"the parabola minimum lies outside the sampled sizes at budget(s) {', '.join(out)} "
            "(extrapolated)"
        )
    labels = group_budgets(C)
    per_budget = {}
    for k, budget in enumerate(fit.budgets):
        m = labels == k
        order = np.argsort(N[m])
        per_budget[float(budget)] = (N[m][order], L[m][order])
    return IsoFLOPSection(
        approach="Approach 2",
        fit=fit,
        boot=boot,
        params=_intervals(boot, {"a": fit.a, "b": fit.b}),
        n_points=len(pts),
        note=note,
        points=per_budget,
    )


def approach3_points(
    used: list[Run], curves: dict[str, Curve], opts: AnalysisOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(N, D, L, run index) for Approach 3, and how many are final points (listed first).

    Final points: (N, tokens, final eval loss) of each used run. With approach3_points="curves",
    plus up to curve_points_per_run intermediate eval points per run at tokens >=
    curve_min_fraction of the run's tokens (log-spaced picks), excluding the final one.
    """
    rows = [(r.n_non_embedding, r.tokens, r.final_eval_loss, i) for i, r in enumerate(used)]
    n_final = len(rows)
    mode = opts.approach3_points
    if mode == "auto":
        corr = _corr(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
        mode = "final" if corr is not None and abs(corr) <= FINAL_POINTS_CORR else "curves"
    if mode == "curves":
        for i, r in enumerate(used):
            c = curves.get(r.name)
            if c is None:
                continue
            m = (c.tokens >= opts.curve_min_fraction * r.tokens) & (c.tokens < r.tokens * 0.999)
            idx = np.flatnonzero(m)
            if len(idx) > opts.curve_points_per_run:
                pick = np.unique(np.round(np.linspace(0, len(idx) - 1, opts.curve_points_per_run)))
                idx = idx[pick.astype(int)]
            rows += [(r.n_non_embedding, float(c.tokens[j]), float(c.eval_loss[j]), i) for j in idx]
    arr = np.array(rows, np.float64).reshape(-1, 4)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(int), n_final


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(np.log(x), np.log(y))[0, 1])


def _approach3(used, curves, opts: AnalysisOptions, absent: dict) -> ChinchillaSection | None:
    """Approach 3 on final (+ intermediate) points with a point bootstrap."""
    N, D, L, _, n_final = approach3_points(used, curves, opts)
    if len(N) < 6:
        absent["approach3"] = (
            f"Approach 3 needs at least 6 (N, D, loss) points; the sweep gives {len(N)}."
        )
        return None
    n_sizes = len(np.unique(scaling.cluster_labels(N, SIZE_RTOL)))
    if n_sizes < 3:
        absent["approach3"] = (
            f"Approach 3 needs at least 3 model sizes to pin down A/N^α next to E; got {n_sizes}."
        )
        return None
    corr = _corr(N, D)
    if corr is None or abs(corr) > COLLINEAR:
        r = "" if corr is None else f" (correlation of log N and log D: {corr:.4f})"
        absent["approach3"] = (
            f"Approach 3 not fitted: over its {len(N)} points N and D move together{r}, as in a "
            "sweep at a fixed tokens-per-parameter ratio without eval curves, so A/N^α and B/D^β "
            "cannot be told apart; add curves.csv or runs with several token counts per size."
        )
        return None
    grid = GRIDS[opts.chinchilla_grid]
    try:
        fit = scaling.fit_chinchilla(N, D, L, huber_delta=opts.huber_delta, init_grid=grid)
    except UserError as e:
        absent["approach3"] = f"Approach 3 fit failed: {e}."
        return None
    boot, note = None, ""
    try:
        boot = scaling.bootstrap_chinchilla(
            N, D, L, n_boot=opts.n_boot, seed=opts.seed, confidence=opts.confidence,
            huber_delta=opts.huber_delta, fit=fit,
        )
    except UserError as e:
        note = f"no bootstrap: {e}"
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    return ChinchillaSection(
        approach="Approach 3",
        fit=fit,
        boot=boot,
        params=_intervals(boot, {k: getattr(fit, k) for k in names}),
        n_points=len(N),
        note=note,
        N=N,
        D=D,
        L=L,
        n_final=n_final,
        n_intermediate=len(N) - n_final,
        corr_final=_corr(N[:n_final], D[:n_final]),
        corr_all=_corr(N, D),
    )


def _extrapolations(
    loss_vs_n: PowerLawSection | None, used, curves, opts: AnalysisOptions, absent: dict,
    approach3: ChinchillaSection | None,
) -> list[Extrapolation]:
    """Hold out the largest size(s): refit L(N) (and Approach 3) on the rest, predict their final
    loss with a bootstrap interval (`scaling.extrapolation_check`)."""
    out = []
    k = opts.holdout_largest
    boot = {"n_boot": opts.n_boot, "seed": opts.seed, "confidence": opts.confidence,
            "huber_delta": opts.huber_delta, "size_rtol": SIZE_RTOL}
    if loss_vs_n is not None:
        x, y, names = loss_vs_n.x, loss_vs_n.y, loss_vs_n.names
        labels = scaling.cluster_labels(x, SIZE_RTOL)
        n_train = len(np.unique(labels[labels < labels.max() + 1 - k]))  # sizes left to fit
        if n_train < 3:
            absent["extrapolation"] = (
                f"The extrapolation check needs at least 3 model sizes besides the {k} held out; "
                f"the sweep has {n_train}."
            )
        else:
            irreducible = n_train >= 4
            note = "" if irreducible else "fitted without E (only 3 sizes left)"
            try:
                r = scaling.extrapolation_check(x, x, y, holdout_largest=k, fit="power_law",
                                                irreducible=irreducible, **boot)
                out.append(_extrapolation("L(N) power law", r, x, x, y, names, note))
            except UserError as e:
                absent["extrapolation"] = f"The L(N) extrapolation fit failed: {e}."
    elif "extrapolation" not in absent:
        absent["extrapolation"] = "The extrapolation check needs the L(N) fit, which is absent."
    if approach3 is not None:
        N, D, L, run_idx, n_final = approach3_points(used, curves, opts)
        labels = scaling.cluster_labels(N, SIZE_RTOL)
        held = labels >= labels.max() + 1 - k
        # Only the held-out sizes' final losses are predicted; their curve points are dropped.
        keep = ~held | (np.arange(len(N)) < n_final)
        N, D, L, run_idx = N[keep], D[keep], L[keep], run_idx[keep]
        if int((~held).sum()) >= 6 and len(np.unique(N[~held[keep]])) >= 2:
            try:
                r = scaling.extrapolation_check(N, D, L, holdout_largest=k, fit="chinchilla",
                                                init_grid=GRIDS[opts.chinchilla_grid], **boot)
                out.append(_extrapolation("Approach 3", r, N, D, L,
                                          [used[i].name for i in run_idx]))
            except UserError as e:
                absent["extrapolation_approach3"] = f"The Approach 3 extrapolation fit failed: {e}."
        else:
            absent["extrapolation_approach3"] = (
                "The Approach 3 extrapolation needs at least 6 points of 2 smaller sizes."
            )
    return out


def _extrapolation(method: str, r: Any, N, D, L, names: list[str], note: str = ""
                   ) -> Extrapolation:
    """An ExtrapolationResult with the names of its held-out runs (matched on N, D, L)."""
    where = {(float(n), float(d), float(loss)): name
             for n, d, loss, name in zip(N, D, L, names, strict=True)}
    held = [where[(float(n), float(d), float(loss))] for n, d, loss in zip(r.N, r.D, r.L,
                                                                           strict=True)]
    return Extrapolation(method, held, r.N, r.L, r.predicted, r.relative_error, r.n_train, note,
                         interval=r.interval, confidence=r.confidence)


def _entropy(used: list[Run]) -> dict | None:
    """The used runs' shared corpus entropy (module doc of llmjax.data.entropy), or None."""
    values = {(r.entropy, r.entropy_se) for r in used}
    if len(values) != 1:
        return None
    value, se = values.pop()
    return None if value is None else {"nats_per_token": value, "se": se}


def _guarded(piece: str, absent: dict, fallback, fn, *args):
    """fn(*args); a numerical failure inside one fit leaves that fit absent, not the report.

    UserError is expected input trouble; LinAlgError / FloatingPointError / ValueError come from
    degenerate data reaching numpy (a singular polyfit, say).
    """
    try:
        return fn(*args)
    except (UserError, np.linalg.LinAlgError, FloatingPointError, ValueError) as e:
        absent[piece] = f"{piece} failed: {type(e).__name__}: {e}."
        return fallback


def analyze(
    rows: Iterable[Mapping[str, Any]],
    curves: Iterable[Mapping[str, Any]] = (),
    *,
    n_boot: int | None = None,
    seed: int | None = None,
    options: AnalysisOptions | None = None,
) -> ScalingAnalysis:
    """All fits of the report from results.csv rows and curves.csv rows (dicts, str or numbers).

    n_boot / seed override `options`' (defaults: AnalysisOptions()). Never raises on thin or
    failed data: missing fits are None with a reason in `absent`. Bad options raise UserError.
    """
    opts = options or AnalysisOptions()
    if n_boot is not None or seed is not None:
        opts = dataclasses.replace(
            opts,
            n_boot=opts.n_boot if n_boot is None else n_boot,
            seed=opts.seed if seed is None else int(seed),
        )
    opts.check()
    runs = [parse_run(r) for r in rows]
    if any(r.study == SCALING_STUDY for r in runs):
        # A sweep with several studies (the demo's scaling and emergence runs): the fits use the
        # scaling study's runs only, one shape family on one corpus.
        runs = [r if r.study == SCALING_STUDY or not r.usable else dataclasses.replace(
            r, usable=False, reason=f"study {r.study or '(none)'}: not in the scaling fits")
                for r in runs]
    usable = [r for r in runs if r.usable]
    used, dropped = best_per_point(usable)
    by_name = {r.name: r for r in used}
    curve_map = parse_curves(curves, by_name, opts.compute)
    absent: dict[str, str] = {}
    if not used:
        absent["all"] = f"No usable runs: {len(runs)} row(s), none finished with a final eval loss."
    loss_vs_n = _guarded("loss_vs_n", absent, None, _loss_vs_n, used, opts, absent)
    approach1, frontier = _guarded(
        "approach1", absent, (None, None), _approach1, curve_map, opts, absent
    )
    approach2 = _guarded("approach2", absent, None, _approach2, used, opts, absent)
    approach3 = _guarded("approach3", absent, None, _approach3, used, curve_map, opts, absent)
    extrapolations = _guarded(
        "extrapolation", absent, [], _extrapolations, loss_vs_n, used, curve_map, opts, absent,
        approach3,
    )
    return ScalingAnalysis(
        entropy=_entropy(used),
        options=opts,
        runs=runs,
        used=used,
        dropped_duplicates=dropped,
        curves=curve_map,
        loss_vs_n=loss_vs_n,
        frontier=frontier,
        approach1=approach1,
        approach2=approach2,
        approach3=approach3,
        extrapolations=extrapolations,
        absent=absent,
    )
