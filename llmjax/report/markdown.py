"""report.md and the headline lines, rendered from a `ScalingAnalysis`.

The report states its fit choices (what N counts, which loss, Huber delta, start grids, bootstrap)
because fitted exponents move with them (Li, Kudugunta & Zettlemoyer 2025).
"""

from __future__ import annotations

import math
import re
from typing import Any

from llmjax.scaling.analysis import (
    GRIDS,
    Interval,
    Run,
    ScalingAnalysis,
    replicate_stats,
)


def fmt(x: float | None, digits: int = 3) -> str:
    """Number for a table: '' for None, 2.00e7 style for large or tiny values, else `digits`
    significant digits (trailing zeros kept, so intervals line up); integers as integers."""
    if x is None or not math.isfinite(x):
        return ""
    ax = abs(x)
    if ax != 0 and (ax >= 1e5 or ax < 1e-3):
        mantissa, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa}e{int(exp)}"
    if float(x).is_integer():
        return str(int(x))
    return f"{x:#.{digits}g}".rstrip(".")


def ci(interval: Interval | dict, digits: int = 3) -> str:
    """'0.342 [0.330, 0.350]' from an Interval or its to_dict()."""
    if isinstance(interval, dict):
        value, bounds = interval["value"], interval.get("ci")
    else:
        value = interval.value
        bounds = None if interval.lo is None else (interval.lo, interval.hi)
    text = fmt(value, digits)
    if bounds is not None:
        text += f" [{fmt(bounds[0], digits)}, {fmt(bounds[1], digits)}]"
    return text


def _si(x: float) -> str:
    """A count in engineering notation: 107000 -> '107K', 3.4e6 -> '3.4M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _e_verdict(interval: dict[str, Any], truth: float, se: float | None) -> str:
    lo, hi = interval["ci"]
    if hi - lo > max(truth, 1e-9):  # wider than the value itself
        return "not identified"
    slack = 2 * (se or 0.0)
    return "covers the truth" if lo - slack <= truth <= hi + slack else "excludes the truth"


def headline_lines(headline: dict[str, Any]) -> list[str]:
    """What the sweep showed, in at most ~10 lines (the first lines of report.md and what `llmjax
    report` and `make demo` print): the law, its error on the held-out model(s), the irreducible
    loss against the generator's truth, the abilities that emerged where, the phase changes."""
    pct = round(100 * headline.get("confidence", 0.95))
    lines = []
    ch = headline.get("chinchilla")
    if ch:
        lines.append(f"Scaling law (Approach 3): L(N, D) = E + A/N^alpha + B/D^beta with alpha = "
                     f"{ci(ch['alpha'])}, beta = {ci(ch['beta'])}, E = {ci(ch['E'])} nats "
                     f"({pct}% CI)")
    if "alpha_N" in headline:
        e = f", E = {ci(headline['E'])} nats" if "E" in headline else ""
        lines.append(f"L(N): alpha_N = {ci(headline['alpha_N'])}{e}")
    if "alpha_C" in headline and not ch:  # the frontier when no parametric law was fitted
        lines.append(f"L(C) frontier: alpha_C = {ci(headline['alpha_C'])}")
    for method, ex in headline.get("extrapolation", {}).items():
        parts = []
        for i, (name, n, e) in enumerate(zip(ex["runs"], ex["N"], ex["relative_error"],
                                             strict=True)):
            text = f"{name} (N = {_si(n)}) {100 * e:+.2f}%"
            if "interval" in ex:
                lo, hi = ex["interval"][i]
                inside = "inside" if ex["covered"][i] else "OUTSIDE"
                text += (f" (predicted {fmt(ex['predicted'][i])} [{fmt(lo)}, {fmt(hi)}], actual "
                         f"{fmt(ex['actual'][i])}: {inside} the interval)")
            parts.append(text)
        lines.append(f"Held-out prediction, {method}: " + "; ".join(parts))
    truth = headline.get("entropy")
    if truth:
        x, se = truth["nats_per_token"], truth.get("se")
        fits = []
        for label, interval in (("L(N)", headline.get("E")),
                                ("Approach 3", (ch or {}).get("E"))):
            if interval and interval.get("ci"):
                fits.append(f"{label} E = {ci(interval)} ({_e_verdict(interval, x, se)})")
        lines.append(f"Irreducible loss: the corpus's entropy rate from its generator is "
                     f"{fmt(x)} ± {fmt(se)} nats/token (a lower bound for a finite context); "
                     + ("; ".join(fits) if fits else "no fit estimates E"))
    lines += _emergence_lines(headline.get("emergence") or {})
    other = headline.get("n_other_study", 0)
    lines.append(f"runs: {headline['n_runs']} ({headline['n_used']} in the scaling fits"
                 + (f", {other} in other studies" if other else "")
                 + f", {headline['n_failed'] - other} failed or unfinished)")
    if "alpha_N" not in headline and not headline.get("a") and not ch:
        absent = headline.get("absent", {})
        why = absent["all"] if "all" in absent else " ".join(absent.values())
        lines.append("no scaling-law fit: " + why)
    return lines


def _emergence_lines(e: dict[str, Any]) -> list[str]:
    """The headline's emergence lines: abilities by task (largest k shown), phase changes."""
    if not e.get("n_runs_probed"):
        return []
    out = []
    by_task: dict[str, list[dict[str, Any]]] = {}
    for a in e.get("abilities", []):
        by_task.setdefault(a["task"], []).append(a)
    for task, items in by_task.items():
        emerged = [a for a in items if a["emerged"]]
        shown = (emerged or items)[-1]
        big, small = shown["largest"], shown["smallest"]
        numbers = (f"hard-subset exact match {fmt(big['exact_match_hard'])} ± "
                   f"{fmt(big['se_hard'])} in {big['run']} (chance {fmt(big['chance_hard'])}, "
                   f"frequency baseline {fmt(big['baseline_freq'])}), "
                   f"{fmt(small['exact_match_hard'])} in {small['run']}")
        ctrl = "".join(f"; control {c['run']} {fmt(c['exact_match_hard'])} "
                       f"({'present' if c['present'] else 'absent'})"
                       for c in shown["controls"])
        if emerged:
            ks = ",".join(str(a["k"]) for a in emerged)
            t, c = shown["transition"], shown["continuous"]
            trans = ""
            if t is not None and t["detected"]:
                trans = "; transition at C = 10^{:.2f}".format(t["log10_compute"]) + (
                    " [10^{:.2f}, 10^{:.2f}] FLOPs".format(*t["ci"]) if t["ci"] else " FLOPs")
                if c is not None and c["detected"]:
                    trans += ("; the continuous target cross-entropy has a transition too, so "
                              "the jump is not the metric's alone")
                elif c is not None:
                    trans += (f"; the continuous target cross-entropy has none ({c['reason']}): "
                              "the jump may be the metric's (Schaeffer et al. 2023)")
            elif t is not None:
                trans = f"; {t['reason']}"
            gaps = shown.get("absent_above") or []
            order = (f"; not monotone in N: absent in {', '.join(gaps)}" if gaps else "")
            out.append(f"Emerged with scale: {task} k={ks} (k={shown['k']}: {numbers}; first in "
                       f"{shown['smallest_with']}{order}{trans}{ctrl})")
        else:
            out.append(f"Not detected: {task} at any k beats chance and the frequency baseline "
                       f"by 3 SE in the largest model and not the smallest (k={shown['k']}: "
                       f"{numbers}{ctrl})")
    if not by_task:
        out.append("No few-shot task was probed.")
    phases = e.get("phase_changes", [])
    if phases:
        grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for p in phases:  # one entry per run, task and metric; the ks side by side
            grouped.setdefault((p["run"], p["task"], p["metric"]), []).append(p)
        parts = []
        for (run, task, metric), ps in grouped.items():
            ks = (f" (k={','.join(str(p['k']) for p in ps)})"
                  if metric in ("exact_match", "exact_match_hard") else "")
            at = "/".join(_si(p["tokens"]) for p in ps)
            parts.append(f"{run} {task} {metric}{ks} at {at} tokens")
        absent = e.get("phase_absent", [])
        out.append("Phase changes over training: " + "; ".join(parts)
                   + (f"; none in {', '.join(absent)}" if absent else ""))
    elif e.get("phase_absent"):
        out.append("No phase change over training in any run followed ("
                   + ", ".join(e["phase_absent"]) + ")")
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def _run_status(run: Run, dropped: set[str]) -> str:
    if not run.usable:
        return f"not used ({run.reason})"
    if run.name in dropped:
        return f"{run.status} (another run at this (N, D) has lower loss)"
    return run.status


def _runs_table(a: ScalingAnalysis) -> list[str]:
    dropped = {r.name for r in a.dropped_duplicates}
    header = ["run", "N non-emb.", "N total", "tokens", "C = 6ND", "FLOPs (exact)",
              "final eval loss", "best eval loss", "wall time (s)", "budget", "status"]
    rows = []
    ordered = sorted(a.runs, key=lambda r: (r.n_non_embedding or 0.0, r.tokens or 0.0, r.name))
    for r in ordered:
        rows.append([r.name, fmt(r.n_non_embedding), fmt(r.n_params), fmt(r.tokens),
                     fmt(r.flops_6nd), fmt(r.flops), fmt(r.final_eval_loss, 4),
                     fmt(r.best_eval_loss, 4), fmt(r.wall_time_s), fmt(r.budget),
                     _run_status(r, dropped)])
    return _table(header, rows)


def _params_table(params: dict[str, Interval], units: dict[str, str]) -> list[str]:
    rows = [[k, ci(v, 4), units.get(k, "")] for k, v in params.items()]
    return _table(["parameter", "estimate [CI]", "meaning"], rows)


def _section_loss_vs_n(a: ScalingAnalysis, plots: dict[str, str]) -> list[str]:
    out = ["## Final loss against model size: L(N)", ""]
    sec = a.loss_vs_n
    if sec is None:
        out.append(a.absent.get("loss_vs_n", "Not fitted."))
    else:
        form = "E + (N_c/N)^α_N" if "E" in sec.params else "(N_c/N)^α_N"
        stats = replicate_stats(sec.x, sec.y)
        out.append(
            f"L(N) = {form} fitted on the final eval loss of {len(stats)} model sizes "
            f"({fmt(sec.x.min())} to {fmt(sec.x.max())} non-embedding parameters)."
        )
        out.append("")
        if len(stats) < len(sec.x):
            out += [f"Replicates (seeds): every one of the {len(sec.x)} runs is a point of the "
                    "fit, and the bootstrap resamples runs. Per size, mean ± standard error:", "",
                    "| N (non-embedding) | seeds | final eval loss (mean ± SE) |",
                    "|---|---|---|"]
            out += [f"| {fmt(x)} | {n} | {m:.4f} ± {se:.4f} |" if n > 1 else
                    f"| {fmt(x)} | 1 | {m:.4f} (one run: no SE) |" for x, m, se, n in stats]
            out.append("")
        out += _params_table(sec.params, {
            "E": "irreducible loss (nats / token)",
            "x_c": "N_c (parameters)",
            "alpha": "α_N: loss falls as N^-α_N",
        })
        if sec.note:
            out += ["", f"Note: {sec.note}."]
    if "loss_vs_params.png" in plots:
        out += ["", "![final loss against N](loss_vs_params.png)"]
    return out + [""]


def _section_compute(a: ScalingAnalysis, plots: dict[str, str]) -> list[str]:
    out = ["## Loss against compute: Approach 1 and the frontier", ""]
    if a.approach1 is None:
        out.append(a.absent.get("approach1", "Approach 1 not fitted."))
    else:
        env = a.approach1
        out.append(
            f"Lower envelope of {sum(len(c.tokens) for c in a.curves.values())} eval points from "
            f"{len(a.curves)} runs: {env.n_points} envelope points in "
            f"{a.options.envelope_bins} log-spaced compute bins, N_opt ∝ C^a with "
            f"a = {ci(env.params['a'])}, D_opt ∝ C^b with b = {ci(env.params['b'])}."
        )
        if env.note:
            out += ["", f"Note: {env.note}."]
    out.append("")
    if a.frontier is not None:
        fr = a.frontier
        form = "E + (C_c/C)^α_C" if "E" in fr.params else "(C_c/C)^α_C"
        extra = f", E = {ci(fr.params['E'])} nats" if "E" in fr.params else ""
        out.append(
            f"Frontier L(C) = {form} fitted on the {len(fr.x)} envelope points: "
            f"α_C = {ci(fr.params['alpha'])}, C_c = {ci(fr.params['x_c'])} FLOPs{extra}."
        )
        if fr.note:
            out += ["", f"Note: {fr.note}."]
    elif "frontier" in a.absent:
        out.append(a.absent["frontier"])
    if "loss_vs_compute.png" in plots:
        out += ["", "![loss against compute](loss_vs_compute.png)"]
    return out + [""]


def _section_isoflop(a: ScalingAnalysis, plots: dict[str, str]) -> list[str]:
    out = ["## Approach 2: IsoFLOP profiles", ""]
    sec = a.approach2
    if sec is None:
        return out + [a.absent.get("approach2", "Not fitted."), ""]
    fit = sec.fit
    out.append(
        f"{sec.n_points} runs in {len(fit.budgets)} FLOP budgets; per budget a parabola of final "
        f"loss in log N, its minimum is N_opt(C): a = {ci(sec.params['a'])}, "
        f"b = {ci(sec.params['b'])}."
    )
    out.append("")
    rows = [
        [fmt(b), str(int(k)), fmt(n), fmt(d), fmt(lv, 4), "yes" if ok else "no (extrapolated)"]
        for b, k, n, d, lv, ok in zip(fit.budgets, fit.points_per_budget, fit.n_opt_per_budget,
                                      fit.d_opt_per_budget, fit.loss_opt_per_budget,
                                      fit.vertex_in_range, strict=True)
    ]
    out += _table(["budget C (FLOPs)", "runs", "N_opt", "D_opt (tokens)", "loss at N_opt",
                   "minimum inside sampled N"], rows)
    if sec.note:
        out += ["", f"Note: {sec.note}."]
    if "isoflop.png" in plots:
        out += ["", "![isoflop profiles](isoflop.png)"]
    return out + [""]


def _section_approach3(a: ScalingAnalysis) -> list[str]:
    out = ["## Approach 3: parametric fit L(N, D) = E + A/N^α + B/D^β", ""]
    sec = a.approach3
    if sec is None:
        return out + [a.absent.get("approach3", "Not fitted."), ""]
    out.append(
        f"Fitted on {sec.n_points} points: {sec.n_final} final losses and {sec.n_intermediate} "
        "intermediate eval points (N, D = tokens seen so far, eval loss)."
    )
    out.append("")
    out += _params_table(sec.params, {
        "E": "irreducible loss (nats / token)",
        "A": "parameter term coefficient",
        "B": "data term coefficient",
        "alpha": "α: exponent of N",
        "beta": "β: exponent of D",
        "a": "N_opt ∝ C^a, a = β/(α+β)",
        "b": "D_opt ∝ C^b, b = α/(α+β)",
    })
    out.append("")
    collinear = sec.corr_final is not None and abs(sec.corr_final) > 0.98
    if collinear or sec.corr_final is None:
        r = "" if sec.corr_final is None else f" (log N, log D correlation {sec.corr_final:.4f})"
        out.append(
            f"**Identification.** Over the final points alone, N and D move together{r}: a sweep "
            "at a fixed tokens-per-parameter ratio cannot tell A/N^α from B/D^β, so A, B, α and β "
            "— and a, b, which depend on α and β — are poorly identified by the final losses. "
        )
        if sec.n_intermediate:
            out[-1] += (
                "Here they rest on the intermediate eval points, which vary D at fixed N. Those "
                "points come from runs part-way through their learning-rate schedule; under a "
                "cosine schedule their loss is biased upward relative to a run trained to that D "
                "with a matched schedule (Hoffmann et al. used final losses of such runs), which "
                "biases β. Treat A, B, α, β, a, b as indicative; the iso-FLOP approach or a sweep "
                "with several token counts per size identifies them properly."
            )
        else:
            out[-1] += "Treat these values as unidentified."
    elif sec.n_intermediate and _constant_lr(a):
        out.append(
            "Every run trains at a constant learning rate after warmup, so an intermediate eval "
            "point is the loss of the same run stopped there: the curves give the D axis, with "
            f"log N and log D correlated {sec.corr_all:.2f} over the points fitted."
        )
    elif sec.n_intermediate:
        out.append(
            "The final points vary N and D independently; intermediate eval points (from runs "
            "part-way through their schedule, so biased upward under a cosine schedule) were "
            "added as well (option approach3_points)."
        )
    out += _truth_lines(a)
    if sec.note:
        out += ["", f"Note: {sec.note}."]
    return out + [""]


def _section_allocation(a: ScalingAnalysis) -> list[str]:
    out = ["## Compute-optimal exponents", ""]
    secs = a.allocations()
    if not secs:
        return out + ["No approach could be fitted: " + " ".join(
            a.absent.get(k, "") for k in ("approach1", "approach2", "approach3")
        ), ""]
    rows = [[s.approach, ci(s.params["a"]), ci(s.params["b"]), str(s.n_points)] for s in secs]
    out += _table(["approach", "a (N_opt ∝ C^a)", "b (D_opt ∝ C^b)", "points"], rows)
    out += ["", "For reference, Hoffmann et al. 2022 report a = 0.50 / 0.49 / 0.46 for "
            "Approaches 1 / 2 / 3; Kaplan et al. 2020 report N_opt ∝ C^0.73."]
    return out + [""]


def _constant_lr(a: ScalingAnalysis) -> bool:
    return bool(a.used) and all(r.schedule == "constant" for r in a.used)


def _truth_lines(a: ScalingAnalysis) -> list[str]:
    """The fitted E beside the corpus's entropy rate from its generator, when known."""
    if a.entropy is None:
        return []
    x, se = a.entropy["nats_per_token"], a.entropy.get("se")
    fits = []
    if a.loss_vs_n is not None and "E" in a.loss_vs_n.params:
        fits.append(("L(N)", a.loss_vs_n.params["E"]))
    if a.approach3 is not None:
        fits.append(("Approach 3", a.approach3.params["E"]))
    lines = ["", f"**Irreducible loss against the truth.** The generator of this corpus computes "
             f"its entropy rate, {fmt(x, 4)} ± {fmt(se, 2)} nats/token (`llmjax.data.entropy`: "
             "exact log-probability of each validation document, summed over the latent "
             "choices). A model with a finite context cannot reach it, so a fitted E should "
             "lie at or above it."]
    for label, e in fits:
        verdict = "" if e.lo is None else " " + _e_verdict(e.to_dict(), x, se)
        lines[-1] += f" {label}: E = {ci(e)}{verdict}."
    return lines


def _section_extrapolation(a: ScalingAnalysis) -> list[str]:
    out = ["## Extrapolation check", ""]
    k = a.options.holdout_largest
    out.append(
        f"Each fit is redone without the {k} largest model size(s); the refit predicts their "
        "final eval loss. Relative error = (predicted − actual) / actual."
    )
    pct = round(100 * a.options.confidence)
    out[-1] += (f" The interval is the {pct}% percentile interval of the predictions of the fit's "
                "bootstrap replicates (resampling its training points).")
    rows = []
    for ex in a.extrapolations:
        for i, (name, n, act, pred, err) in enumerate(zip(ex.names, ex.N, ex.actual, ex.predicted,
                                                          ex.relative_error, strict=True)):
            interval = "-" if ex.interval is None else (
                f"[{fmt(ex.interval[i, 0], 4)}, {fmt(ex.interval[i, 1], 4)}]"
                + (" covers it" if ex.covered[i] else " misses it"))
            rows.append([ex.method, name, fmt(n), fmt(act, 4), fmt(pred, 4), interval,
                         f"{100 * err:+.2f}%",
                         str(ex.n_train) + (f" ({ex.note})" if ex.note else "")])
    if rows:
        header = ["fit", "held-out run", "N", "actual loss", "predicted",
                  f"{pct}% interval", "relative error", "training points"]
        out += [""] + _table(header, rows)
    for key in ("extrapolation", "extrapolation_approach3"):
        if key in a.absent:
            out += ["", a.absent[key]]
    return out + [""]


def _section_choices(a: ScalingAnalysis) -> list[str]:
    o = a.options
    pct = round(100 * o.confidence)
    grid = GRIDS[o.chinchilla_grid]
    n_grid = math.prod(len(v) for v in grid.values())
    compute = (
        "C = 6·N·D with non-embedding N (column flops_6nd), the convention under which "
        "D_opt = C / (6 N_opt)" if o.compute == "flops_6nd"
        else "exact training FLOPs including attention (column flops)"
    )
    a3 = (
        f"final points plus intermediate eval points at ≥ {o.curve_min_fraction:.0%} of each "
        f"run's tokens (at most {o.curve_points_per_run} per run, evenly spaced)"
        if a.approach3 is not None and a.approach3.n_intermediate
        else "final points only"
    ) + (" (chosen by approach3_points='auto')" if o.approach3_points == "auto" else "")
    lines = [
        "## Fit choices",
        "",
        "- **N** counts non-embedding parameters (Kaplan et al. 2020); totals are in the run "
        "table only.",
        "- **Loss** is the final eval loss (nats per token on the validation split); the best "
        "eval loss is listed but not fitted.",
        f"- **Compute**: {compute}.",
        f"- **One point per (N, D)**: the run with the lowest final eval loss (the best learning "
        f"rate, as Li et al. 2025 recommend); {len(a.dropped_duplicates)} run(s) dropped this way.",
        "- **L(N)** uses the runs without a FLOP budget (all runs if every run has one), lowest "
        "loss per size; E is fitted when there are ≥ 4 sizes.",
        f"- **Objective**: Huber loss with δ = {o.huber_delta:g} on log-loss residuals, summed "
        "over points, L-BFGS from many starts, best objective kept (Hoffmann et al. 2022; "
        "Besiroglu et al. 2024). L(N) starts: 54 (E at fractions of the lowest loss × α from "
        f"0.05 to 2). Approach 3 starts: the {o.chinchilla_grid} grid, {n_grid} starts "
        f"(α, β ∈ {list(grid['alpha'])}, e ∈ {list(grid['e'])}, a, b ∈ {list(grid['a'])}).",
        f"- **Approach 3 points**: {a3}.",
        f"- **Approach 1**: lowest eval loss per log-spaced compute bin ({o.envelope_bins} bins), "
        "N_opt and D_opt = C/(6 N_opt) fitted as lines in log-log.",
        "- **Approach 2**: C is the `budget` column; a parabola in log N per budget; "
        "D_opt = C / (6 N_opt).",
        f"- **Uncertainty**: {o.n_boot} bootstrap replicates resampling points with replacement "
        f"(seed {o.seed}), {pct}% percentile intervals. Curve points of one run are correlated, "
        "so for Approaches 1 and 3 treating them as independent makes the intervals too narrow.",
        f"- **Extrapolation**: the {o.holdout_largest} largest size(s) held out.",
        "",
    ]
    return lines


def _section_failed(a: ScalingAnalysis) -> list[str]:
    failed = a.failed
    out = ["## Failed or unused runs", ""]
    if not failed:
        return out + ["None: every run finished with a final eval loss.", ""]
    rows = [[r.name or "(no name)", r.status, r.reason] for r in failed]
    return out + _table(["run", "status", "why it is not used"], rows) + [""]


def render_markdown(
    analysis: ScalingAnalysis, plots: dict[str, str], *, title: str = "Scaling report",
    emergence=None,
) -> str:
    """The whole report.md; `plots` maps PNG file names (next to report.md) to paths;
    `emergence`: an EmergenceAnalysis of the sweep's probes, rendered after the scaling fits."""
    a = analysis
    headline = a.headline()
    if emergence is not None:
        headline["emergence"] = emergence.headline()
    # The headline comes first, right under the title: what the sweep showed, in <= 10 lines.
    out = [f"# {title}", ""]
    out += [f"- {line}" for line in headline_lines(headline)]
    out.append("")
    if "all" in a.absent:
        out += [a.absent["all"], ""]
    out += _section_loss_vs_n(a, plots)
    out += _section_compute(a, plots)
    out += _section_isoflop(a, plots)
    out += _section_approach3(a)
    out += _section_allocation(a)
    if "nopt_vs_compute.png" in plots:
        out += ["![compute-optimal N against C](nopt_vs_compute.png)", ""]
    out += _section_extrapolation(a)
    if emergence is not None:
        out += section_emergence(emergence, plots)
    out += ["## Runs", ""] + _runs_table(a) + [""]
    out += _section_failed(a)
    out += _section_choices(a)
    return "\n".join(out)


# ----------------------------------------------------------------------------- emergence


def _threshold(r) -> str:
    """'10^12.31 [10^12.1, 10^12.5]' FLOPs of a TransitionResult, or ''."""
    if r.threshold is None:
        return ""
    text = f"10^{r.threshold:.2f}"
    if r.threshold_ci:
        text += f" [10^{r.threshold_ci[0]:.2f}, 10^{r.threshold_ci[1]:.2f}]"
    return text


def _why_not(reason: str) -> str:
    """The kind of reason of a series without a transition: its text after 'no transition
    detected: ', without the numbers in parentheses (so series group by reason)."""
    text = reason.split(": ", 1)[1] if reason.startswith("no transition") else reason
    return re.sub(r"\s*\([^)]*\)", "", text)


def section_emergence(e, plots: dict[str, str]) -> list[str]:
    """The emergence section of report.md from an `llmjax.scaling.emergence.EmergenceAnalysis`."""
    from llmjax.scaling.emergence import INDUCTION_HEAD

    out = ["## Few-shot probes and emergence", ""]
    if "all" in e.absent:
        return out + [e.absent["all"] + ".", ""]
    compute = "exact FLOPs" if e.compute == "flops" else "6ND"
    out += [
        f"{len(e.runs)} runs probed (`llmjax probe`; values at each run's last probed checkpoint,"
        f" compute as {compute} at that checkpoint). Every task is scored with an all-or-nothing "
        "metric beside continuous ones, because exact match on a multi-token answer can jump "
        "while per-token probability rises smoothly (Schaeffer et al. 2023). Few-shot rules are "
        "held out of training; *chance* guesses uniformly among the rule's answers, the "
        "*frequency baseline* answers what is most frequent in the context so far, and the "
        "*hard subset* holds the queries where that baseline is wrong.",
        "",
        "A transition is reported when a sigmoid in log10 compute beats a straight line, its "
        "jump exceeds the noise, its midpoint has runs on both sides, and most bootstrap "
        "replicates agree (`llmjax.scaling.sigmoid`); otherwise the series says why not.", ""]
    if e.skipped:
        out += [f"Left out (not complete): {', '.join(e.skipped)}.", ""]
    out += ["### Findings", ""] + [f"- {f}" for f in e.findings]
    out += [f"- Not measured: {v}." for k, v in e.absent.items() if k != "all"] + [""]

    detected = e.detected()
    out += ["### Transitions across scale", ""]
    if detected:
        rows = [[t.task, str(t.k), t.metric, _threshold(t.result), f"{t.result.jump:+.3f}",
                 fmt(t.result.detected_fraction, 2)] for t in detected]
        out += _table(["task", "k", "metric", "threshold C (FLOPs) [CI]", "jump",
                       "bootstrap agreement"], rows) + [""]
    reasons: dict[str, int] = {}
    for t in e.transitions:
        if not t.result.detected:
            key = _why_not(t.result.reason)
            reasons[key] = reasons.get(key, 0) + 1
    out.append(f"{len(detected)} of {len(e.transitions)} series show a transition.")
    if reasons:
        out += ["", "Why the others do not (series per reason):", ""]
        out += _table(["reason", "series"], [[k, str(v)] for k, v in
                                             sorted(reasons.items(), key=lambda kv: -kv[1])])
    out.append("")

    few = [t for t, info in e.tasks.items() if info.few_shot]
    if few:
        largest = e.runs[-1]
        out += [f"### Few-shot tasks at the largest model ({largest.name})", ""]
        head = ["task", "k", "exact match", "hard", "chance", "frequency baseline",
                "edit dist. / chrF", "target CE (nats/token)"]
        rows = []
        for task in few:
            cont = next((m for m in ("chrf", "normalized_token_edit_distance")
                         if m in e.tasks[task].panels), None)
            for k in e.tasks[task].ks:
                v = lambda m, k=k, task=task: fmt(largest.value(task, k, m))  # noqa: E731
                rows.append([task, str(k), v("exact_match"), v("exact_match_hard"),
                             v("baseline_chance"), v("baseline_freq"),
                             v(cont) if cont else "", v("target_cross_entropy")])
        out += _table(head, rows) + [""]
        k_of = {t: max(e.tasks[t].ks) for t in few}
        out += ["### Hard-subset exact match at the largest k, across sizes", ""]
        rows = [[r.name, fmt(r.n_non_embedding), fmt(r.compute)]
                + [fmt(r.value(t, k_of[t], "exact_match_hard")) for t in few] for r in e.runs]
        out += _table(["run", "N", "C (FLOPs)"] + [f"{t} (k={k_of[t]})" for t in few], rows)
        out.append("")
    for task in e.tasks:
        name = f"emergence_{task}.png"
        if name in plots:
            out += [f"![{task} against scale]({name})", ""]

    out += ["### In-context-learning score and induction heads across sizes", ""]
    rows = []
    for r in e.runs:
        layer, head = r.value("induction", 0, "strongest_layer"), r.value("induction", 0,
                                                                           "strongest_head")
        rows.append([r.name, fmt(r.n_non_embedding), fmt(r.compute),
                     fmt(r.value("icl", 0, "icl_score")),
                     fmt(r.value("induction", 0, "prefix_matching_max")),
                     "" if layer is None else f"L{int(layer)}H{int(head)}",
                     fmt(r.value("induction", 0, "copying_of_max")),
                     fmt(r.value("perplexity", 0, "bits_per_byte"))])
    out += _table(["run", "N", "C (FLOPs)", "ICL score (nats)", "best prefix matching",
                   "head", "copying", "bits/byte"], rows)
    out += ["", "ICL score: loss at a late token minus the loss at an early one, averaged over "
            "validation documents (Olsson et al. 2022); negative = later tokens gain from the "
            "context. Prefix matching: on a repeated random sequence, the attention from a token "
            "to the token that followed its earlier occurrence; a head at "
            f"{INDUCTION_HEAD} or more is called an induction head here.", ""]
    if "emergence_icl.png" in plots:
        out += ["![ICL score and prefix matching against scale](emergence_icl.png)", ""]

    if any(len(r.steps) > 1 for r in e.runs):
        out += ["### Through training", ""]
        zero_shot = [t for t, info in e.tasks.items() if not info.few_shot]
        rows = []
        for r in e.runs:
            for s in sorted(r.steps):
                rows.append([r.name, str(s), fmt(r.steps[s][0]),
                             fmt(r.value("icl", 0, "icl_score", s)),
                             fmt(r.value("induction", 0, "prefix_matching_max", s))]
                            + [fmt(r.value(t, 0, e.tasks[t].zero_shot_metric, s))
                               for t in zero_shot])
        out += _table(["run", "step", "tokens", "ICL score", "best prefix matching"]
                      + [f"{t} {e.tasks[t].zero_shot_metric}" for t in zero_shot], rows) + [""]
        for p in e.phase_changes:
            out.append(f"- {p.task} {p.metric}: {p.result.reason}")
        if e.phase_changes:
            out.append("")
        if "emergence_training.png" in plots:
            out += ["![probes through training](emergence_training.png)", ""]
    return out
