"""Figures of the emergence section, drawn from an `EmergenceAnalysis` (matplotlib, PNG).

Like plots.py: `matplotlib.figure.Figure` objects (no pyplot state), log x axes. Per task, one
figure with a row against non-embedding N and a row against compute, and one column per metric
(all-or-nothing first, continuous beside it), a line per k; baselines dashed; a fitted sigmoid
where a transition was detected. Then the ICL and induction scores across scale, and every
probed checkpoint of every run against training tokens (phase changes).
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from llmjax.report.plots import save_figures
from llmjax.scaling.emergence import METRICS, EmergenceAnalysis, RunProbes

DPI = 110
N_LABEL = "non-embedding parameters N"


def _compute_label(a: EmergenceAnalysis) -> str:
    return ("training compute C (FLOPs, exact)" if a.compute == "flops"
            else "training compute C = 6 N D (FLOPs)")


def _k_colours(ks):
    """k -> colour on one scale (plasma), so k reads the same in every panel."""
    norm = Normalize(vmin=0, vmax=max(1, len(ks) - 1))
    cmap = colormaps["plasma"]
    return {k: cmap(0.85 * norm(i)) for i, k in enumerate(ks)}


def _size_colours(runs: list[RunProbes]):
    sizes = [r.n_non_embedding for r in runs]
    lo, hi = min(sizes), max(sizes)
    if hi <= lo:
        lo, hi = lo / 1.5, hi * 1.5
    norm, cmap = LogNorm(vmin=lo, vmax=hi), colormaps["viridis"]
    return {r.name: cmap(norm(r.n_non_embedding)) for r in runs}


def _xs(a: EmergenceAnalysis, axis: str) -> list[float]:
    return [r.n_non_embedding if axis == "N" else r.compute for r in a.runs]


def _line(ax, a: EmergenceAnalysis, axis: str, task: str, k: int, metric: str, **kw) -> bool:
    pts = [(x, r.value(task, k, metric)) for x, r in zip(_xs(a, axis), a.runs, strict=True)]
    pts = [(x, y) for x, y in pts if y is not None and x > 0]
    if not pts:
        return False
    x, y = zip(*pts, strict=True)
    ax.plot(x, y, **kw)
    return True


def _sigmoid_overlay(ax, a: EmergenceAnalysis, task: str, k: int, metric: str, colour) -> None:
    t = a.transition(task, k, metric)
    if t is None or not t.result.detected or t.result.fit is None:
        return
    grid = np.linspace(min(t.x), max(t.x), 200)
    ax.plot(10 ** grid, t.result.fit.predict(grid), color=colour, lw=2.5, alpha=0.35)
    ax.axvline(10 ** t.result.threshold, color=colour, ls=":", lw=1)
    if t.result.threshold_ci:
        lo, hi = t.result.threshold_ci
        ax.axvspan(10 ** lo, 10 ** hi, color=colour, alpha=0.08)


def plot_task(a: EmergenceAnalysis, task: str) -> Figure | None:
    """Metric vs N (top) and vs compute (bottom) for each k, metrics side by side."""
    info = a.tasks.get(task)
    if info is None or not a.runs:
        return None
    panels = info.panels
    fig = Figure(figsize=(4.3 * len(panels), 7.2))
    axes = fig.subplots(2, len(panels), squeeze=False)
    colours = _k_colours(info.ks)
    k_max = max(info.ks)
    for row, axis in enumerate(("N", "C")):
        for col, metric in enumerate(panels):
            ax = axes[row][col]
            for k in info.ks:
                _line(ax, a, axis, task, k, metric, color=colours[k], marker="o", ms=3,
                      label=f"k={k}" if info.few_shot else metric)
                if axis == "C":
                    _sigmoid_overlay(ax, a, task, k, metric, colours[k])
            if metric in ("exact_match", "acc"):
                _line(ax, a, axis, task, k_max, "baseline_chance", color="grey", ls="--",
                      label="chance")
                if metric == "exact_match" and info.few_shot:
                    _line(ax, a, axis, task, k_max, "baseline_freq", color="tab:red", ls="--",
                          label=f"frequency baseline (k={k_max})")
                    if _line(ax, a, axis, task, k_max, "exact_match_hard", color="black",
                             ls=":", marker="s", ms=3, label=f"hard subset (k={k_max})"):
                        if axis == "C":
                            _sigmoid_overlay(ax, a, task, k_max, "exact_match_hard", "black")
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.25)
            ax.set_xlabel(N_LABEL if axis == "N" else _compute_label(a))
            ax.set_ylabel(METRICS[metric].label if metric in METRICS else metric)
            if metric in ("exact_match", "acc"):
                ax.set_ylim(-0.03, 1.03)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{task}: {'k-shot' if info.few_shot else 'zero-shot'} probes against scale "
                 f"(last probed checkpoint of each run)")
    fig.tight_layout()
    return fig


def plot_icl_vs_scale(a: EmergenceAnalysis) -> Figure | None:
    """ICL score and best prefix-matching score against N and compute."""
    series = [("icl", "icl_score"), ("induction", "prefix_matching_max")]
    if not any(r.value(t, 0, m) is not None for r in a.runs for t, m in series):
        return None
    fig = Figure(figsize=(9.0, 7.2))
    axes = fig.subplots(2, 2, squeeze=False)
    for row, axis in enumerate(("N", "C")):
        for col, (task, metric) in enumerate(series):
            ax = axes[row][col]
            _line(ax, a, axis, task, 0, metric, color="tab:blue", marker="o")
            if axis == "C":
                _sigmoid_overlay(ax, a, task, 0, metric, "tab:blue")
            if metric == "icl_score":
                ax.axhline(0.0, color="grey", lw=0.8)
            else:
                ax.set_ylim(-0.02, 1.02)
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.25)
            ax.set_xlabel(N_LABEL if axis == "N" else _compute_label(a))
            ax.set_ylabel(METRICS[metric].label)
    fig.suptitle("In-context learning score and induction heads against scale")
    fig.tight_layout()
    return fig


def _few_shot_mean(r: RunProbes, a: EmergenceAnalysis, step: int, metric: str) -> float | None:
    """Mean over few-shot tasks of `metric` at each task's largest k, at one step."""
    vals = [r.value(t, max(info.ks), metric, step) for t, info in a.tasks.items()
            if info.few_shot]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def plot_training(a: EmergenceAnalysis) -> Figure | None:
    """Every probed checkpoint of every probed run against training tokens, coloured by N: the
    family solid, its controls (another depth) dashed, runs of other studies dotted."""
    every = a.runs + a.controls + a.others
    if not any(len(r.steps) > 1 for r in every):
        return None
    style = {**{r.name: "-" for r in a.runs}, **{r.name: "--" for r in a.controls},
             **{r.name: ":" for r in a.others}}
    panels = [("ICL score (nats)", lambda r, s: r.value("icl", 0, "icl_score", s)),
              ("best prefix-matching score",
               lambda r, s: r.value("induction", 0, "prefix_matching_max", s)),
              ("few-shot target cross-entropy at max k\n(mean over tasks, nats/token)",
               lambda r, s: _few_shot_mean(r, a, s, "target_cross_entropy")),
              ("few-shot exact match at max k, hard subset\n(mean over tasks)",
               lambda r, s: _few_shot_mean(r, a, s, "exact_match_hard"))]
    for task, info in a.tasks.items():  # knowledge in the weights (facts): zero-shot tasks
        if not info.few_shot:
            metric = info.zero_shot_metric
            panels.append((f"{task}: {metric} (zero-shot)",
                           lambda r, s, task=task, metric=metric: r.value(task, 0, metric, s)))
    cols = 3 if len(panels) > 4 else 2
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = _size_colours(every)
    for ax, (label, get) in zip(axes, panels, strict=False):
        for r in every:
            pts = [(r.steps[s][0], get(r, s)) for s in sorted(r.steps)]
            pts = [(x, y) for x, y in pts if y is not None and x > 0]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, color=colours[r.name], ls=style[r.name], marker="o", ms=3,
                        label=r.name)
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.25)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label, fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    # One legend, on the panel with the most runs drawn.
    best = max(axes[:len(panels)], key=lambda ax: len(ax.get_legend_handles_labels()[0]))
    if best.get_legend_handles_labels()[0]:
        best.legend(fontsize=6, loc="best")
    fig.suptitle("Probes through training (colour = model size; dashed: another depth; "
                 "dotted: another study)")
    fig.tight_layout()
    return fig


def emergence_figures(a: EmergenceAnalysis) -> dict[str, Figure | None]:
    """Every emergence figure drawn, by file name (None where there is nothing to show)."""
    figures = {f"emergence_{task}.png": plot_task(a, task) for task in a.tasks}
    figures["emergence_icl.png"] = plot_icl_vs_scale(a)
    figures["emergence_training.png"] = plot_training(a)
    return figures


def write_emergence_plots(a: EmergenceAnalysis, out_dir: str) -> dict[str, str]:
    """Writes every available emergence figure as PNG into out_dir; file name -> path."""
    return save_figures(emergence_figures(a), out_dir, dpi=DPI)


__all__ = ["DPI", "emergence_figures", "plot_icl_vs_scale", "plot_task", "plot_training",
           "write_emergence_plots"]
