"""Figures of the scaling report, drawn from a `ScalingAnalysis` (matplotlib, PNG).

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global state, no GUI
backend (PNG goes through Agg), and the same objects display inline in a notebook. Axes are
log-log, runs are coloured by non-embedding N on one log colour scale.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from llmjax.report.outputs import check_targets, ensure_out_dir, output
from llmjax.scaling.analysis import ScalingAnalysis, replicate_stats

FIGSIZE = (7.0, 4.8)
DPI = 120
LOSS_LABEL = "eval loss (nats / token)"
N_LABEL = "non-embedding parameters N"


def _ci(interval, digits: int = 3) -> str:
    """'0.342 [0.330, 0.350]' from an Interval."""
    text = f"{interval.value:.{digits}f}"
    if interval.lo is not None:
        text += f" [{interval.lo:.{digits}f}, {interval.hi:.{digits}f}]"
    return text


def _log_axes(ax, y: bool = True, plain_y: bool = True) -> None:
    """Log x (and y); plain_y: plain tick labels on y, losses read better as 3, 4, 6 than 10^0.5."""
    ax.set_xscale("log")
    if y:
        ax.set_yscale("log")
    if y and plain_y:
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(True, which="both", alpha=0.25)


def compute_label(analysis: ScalingAnalysis) -> str:
    if analysis.options.compute == "flops":
        return "training compute C (FLOPs, exact)"
    return "training compute C = 6 N D (FLOPs)"


def _size_colours(analysis: ScalingAnalysis):
    """Norm and colormap mapping non-embedding N to a colour (log scale)."""
    sizes = [r.n_non_embedding for r in analysis.used] or [1.0]
    lo, hi = min(sizes), max(sizes)
    if hi <= lo:
        lo, hi = lo / 1.5, hi * 1.5
    return LogNorm(vmin=lo, vmax=hi), colormaps["viridis"]


def _colourbar(fig: Figure, ax, norm, cmap, label: str) -> None:
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label, pad=0.02)


def plot_loss_vs_compute(analysis: ScalingAnalysis) -> Figure | None:
    """Eval curves of every used run against compute, the Approach 1 envelope, fitted frontiers.

    None when no run finished.
    """
    if not analysis.used:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    norm, cmap = _size_colours(analysis)
    column = analysis.options.compute
    if analysis.curves:
        for run in analysis.used:
            c = analysis.curves.get(run.name)
            if c is not None:
                colour = cmap(norm(c.n_non_embedding))
                ax.plot(c.compute, c.eval_loss, color=colour, lw=1.2, alpha=0.9)
    pts = [(r.compute(column), r.final_eval_loss, r.n_non_embedding) for r in analysis.used]
    pts = [p for p in pts if p[0]]
    C, L, N = (np.array(v) for v in zip(*pts, strict=True))
    ax.scatter(C, L, c=[cmap(norm(n)) for n in N], s=22, edgecolors="black", linewidths=0.5,
               zorder=3, label="final eval loss of a run")
    if analysis.approach1 is not None:
        env = analysis.approach1.fit
        ax.scatter(env.envelope_C, env.envelope_L, s=10, color="black", zorder=4,
                   label="lower envelope (Approach 1)")
    if analysis.frontier is not None:
        fr = analysis.frontier
        form = "E + (C_c/C)^α_C" if "E" in fr.params else "(C_c/C)^α_C"
        ax.plot(fr.grid, fr.fit.predict(fr.grid), "k--", lw=1.5,
                label=f"frontier L = {form}, α_C = {_ci(fr.params['alpha'])}")
        if fr.band_lo is not None:
            ax.fill_between(fr.grid, fr.band_lo, fr.band_hi, color="black", alpha=0.12, lw=0)
    if analysis.approach3 is not None:
        fit = analysis.approach3.fit
        grid = np.geomspace(C.min() / 2, C.max() * 4, 120)
        # Only where the fit's N_opt(C) lies among the sizes trained: outside, the parametric
        # law is extrapolated off the data and (for collinear N, D) can fall far below it.
        inside = (fit.n_opt(grid) >= N.min()) & (fit.n_opt(grid) <= N.max())
        if inside.any():
            ax.plot(grid[inside], fit.loss_opt(grid[inside]), color="tab:red", ls=":", lw=1.8,
                    label="compute-optimal loss of the Approach 3 fit (N_opt within sizes trained)")
    _log_axes(ax)
    ax.set_xlabel(compute_label(analysis))
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("Loss against training compute")
    ax.legend(fontsize=8, loc="upper right")
    _colourbar(fig, ax, norm, cmap, N_LABEL)
    return fig


def plot_loss_vs_params(analysis: ScalingAnalysis) -> Figure | None:
    """Final eval loss against non-embedding N, the L(N) fit and band, held-out point marked.

    None when no run finished.
    """
    if not analysis.used:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    sec = analysis.loss_vs_n
    if sec is None:
        x = np.array([r.n_non_embedding for r in analysis.used])
        y = np.array([r.final_eval_loss for r in analysis.used])
        ax.scatter(x, y, color="tab:blue", zorder=3, label="final eval loss")
        ax.set_title("Final loss against model size (too few sizes for a fit)")
    else:
        x, y = sec.x, sec.y
        stats = replicate_stats(x, y)
        if len(stats) < len(x):  # replicates: each run faint, the mean ± SE per size on top
            ax.scatter(x, y, color="tab:blue", alpha=0.35, s=12, zorder=3,
                       label="final eval loss (each replicate, all fitted)")
            xs, means, ses, counts = (np.array(c) for c in zip(*stats, strict=True))
            ax.errorbar(xs, means, yerr=np.nan_to_num(ses), fmt="o", color="tab:blue",
                        capsize=3, zorder=4,
                        label="mean ± SE over " + (f"{int(counts.min())}" if counts.min() ==
                                                   counts.max() else
                                                   f"{int(counts.min())}–{int(counts.max())}")
                        + " seeds")
        else:
            ax.scatter(x, y, color="tab:blue", zorder=3, label="final eval loss (fitted points)")
        E = sec.params.get("E")
        label = f"L = E + (N_c/N)^α_N, α_N = {_ci(sec.params['alpha'])}"
        if E is not None:
            label += f", E = {E.value:.3g}"
        ax.plot(sec.grid, sec.fit.predict(sec.grid), color="tab:blue", lw=1.5, label=label)
        if sec.band_lo is not None:
            pct = round(100 * analysis.options.confidence)
            ax.fill_between(sec.grid, sec.band_lo, sec.band_hi, color="tab:blue", alpha=0.15,
                            lw=0, label=f"{pct}% bootstrap band")
        ax.set_title("Final loss against model size")
    for ex in analysis.extrapolations:
        if ex.method != "L(N) power law":
            continue
        ax.scatter(ex.N, ex.actual, s=110, facecolors="none", edgecolors="tab:red", lw=1.8,
                   zorder=4, label="held out (largest model)")
        err = ", ".join(f"{100 * e:+.2f}%" for e in ex.relative_error)
        ax.scatter(ex.N, ex.predicted, marker="x", s=60, color="tab:red", zorder=5,
                   label=f"predicted from the smaller models ({err})")
        if ex.interval is not None:
            ax.vlines(ex.N, ex.interval[:, 0], ex.interval[:, 1], color="tab:red", lw=1.2,
                      zorder=4, label="its bootstrap interval")
    _draw_truth(ax, analysis, sec.params.get("E") if sec is not None else None)
    _log_axes(ax)
    ax.set_xlabel(N_LABEL)
    ax.set_ylabel("final " + LOSS_LABEL)
    ax.legend(fontsize=8)
    return fig


def _draw_truth(ax: Any, analysis: ScalingAnalysis, E: Any) -> None:
    """The corpus's entropy rate (from its generator) beside the fitted E, as horizontal lines."""
    truth = analysis.entropy
    if truth is None:
        return
    x, se = truth["nats_per_token"], truth.get("se") or 0.0
    ax.axhline(x, color="black", lw=1.2, ls="--",
               label=f"entropy rate of the corpus (generator): {x:.3f} ± {se:.3f}")
    if E is not None and E.lo is not None:
        ax.axhspan(max(E.lo, 1e-3), E.hi, color="tab:gray", alpha=0.12, lw=0,
                   label=f"fitted E interval [{E.lo:.3g}, {E.hi:.3g}]")


def plot_isoflop(analysis: ScalingAnalysis) -> Figure | None:
    """Loss against N per FLOP budget with each budget's parabola in log N and its minimum."""
    sec = analysis.approach2
    if sec is None:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    budgets = sorted(sec.points)
    norm = LogNorm(vmin=min(budgets), vmax=max(budgets)) if len(budgets) > 1 else Normalize(0, 2)
    cmap = colormaps["plasma"]
    fit = sec.fit
    for k, budget in enumerate(budgets):
        N, L = sec.points[budget]
        colour = cmap(0.85 * norm(budget))
        ax.scatter(N, L, color=colour, zorder=3, label=f"C = {budget:.2e} FLOPs")
        u = np.log(N)
        c2, c1, c0 = np.polyfit(u - u.mean(), L, 2)
        grid = np.linspace(u.min() - 0.3, u.max() + 0.3, 100)
        v = grid - u.mean()
        ax.plot(np.exp(grid), c2 * v * v + c1 * v + c0, color=colour, lw=1.2)
        ax.scatter([fit.n_opt_per_budget[k]], [fit.loss_opt_per_budget[k]], marker="*", s=120,
                   color=colour, edgecolors="black", zorder=4)
    ax.scatter([], [], marker="*", s=120, color="white", edgecolors="black",
               label="parabola minimum (N_opt)")
    _log_axes(ax, y=False)
    ax.set_xlabel(N_LABEL)
    ax.set_ylabel("final " + LOSS_LABEL)
    ax.set_title(f"IsoFLOP profiles (Approach 2): a = {_ci(sec.params['a'])}")
    ax.legend(fontsize=8)
    return fig


def plot_nopt_vs_compute(analysis: ScalingAnalysis) -> Figure | None:
    """Compute-optimal N against C from each available approach, exponent a in the legend."""
    sections = analysis.allocations()
    if not sections:
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    column = analysis.options.compute
    C_runs = [c for c in (r.compute(column) for r in analysis.used) if c]
    lo, hi = (min(C_runs), max(C_runs)) if C_runs else (1e12, 1e18)
    grid = np.geomspace(lo / 2, hi * 10, 100)
    colours = {"Approach 1": "tab:green", "Approach 2": "tab:purple", "Approach 3": "tab:red"}
    for sec in sections:
        colour = colours[sec.approach]
        label = f"{sec.approach}: N_opt ∝ C^a, a = {_ci(sec.params['a'])}"
        ax.plot(grid, sec.n_opt(grid), color=colour, lw=1.6, label=label)
        if sec.approach == "Approach 1":
            ax.scatter(sec.fit.envelope_C, sec.fit.envelope_N, s=12, color=colour, alpha=0.7)
        elif sec.approach == "Approach 2":
            ax.scatter(sec.fit.budgets, sec.fit.n_opt_per_budget, s=40, color=colour, zorder=3)
    ax.scatter([r.compute(column) for r in analysis.used if r.compute(column)],
               [r.n_non_embedding for r in analysis.used if r.compute(column)],
               marker="+", color="grey", s=30, label="runs (C, N)")
    _log_axes(ax, plain_y=False)
    ax.set_xlabel(compute_label(analysis))
    ax.set_ylabel("compute-optimal N (non-embedding parameters)")
    ax.set_title("Compute-optimal model size")
    ax.legend(fontsize=8)
    return fig


PLOTS = {
    "loss_vs_compute.png": plot_loss_vs_compute,
    "loss_vs_params.png": plot_loss_vs_params,
    "isoflop.png": plot_isoflop,
    "nopt_vs_compute.png": plot_nopt_vs_compute,
}


def save_figures(figures: dict[str, Figure | None], out_dir: str, dpi: int = DPI
                 ) -> dict[str, str]:
    """Saves each figure that is not None as out_dir/<name>, atomically; returns file name ->
    path. A path held by a directory, or a failed write, is a UserError naming the file (the
    figures saved before it stay written, the file that failed keeps its previous content)."""
    ensure_out_dir(out_dir)
    written = {name: os.path.join(out_dir, name) for name, fig in figures.items()
               if fig is not None}
    check_targets(written.values())
    for name, path in written.items():
        with output(path) as tmp:
            figures[name].savefig(tmp, dpi=dpi, format=os.path.splitext(name)[1][1:] or None)
    return written


def scaling_figures(analysis: ScalingAnalysis) -> dict[str, Figure | None]:
    """Every figure of PLOTS drawn (None where the analysis has nothing to show)."""
    return {name: draw(analysis) for name, draw in PLOTS.items()}


def write_plots(analysis: ScalingAnalysis, out_dir: str) -> dict[str, str]:
    """Write every available figure as PNG into out_dir; returns file name -> path."""
    return save_figures(scaling_figures(analysis), out_dir)
