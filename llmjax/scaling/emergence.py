"""Emergence analysis of a sweep's probes: rows of probes.csv in, `EmergenceAnalysis` out.

`analyze_emergence(rows)` is pure. Each row is one probe record of one run at one step with the
run's size and compute at that step (`llmjax results` writes them: probes.csv, PROBE_COLUMNS).
It gathers, for every task and k, the value at each run's last probed step against non-embedding
N and training compute, with an all-or-nothing metric (exact match, multiple-choice accuracy)
beside continuous ones (token edit distance or chrF, and the target's cross-entropy): with
per-token probability rising smoothly, exact match on a multi-token answer still rises sharply,
so a jump seen only in exact match is the metric's (Schaeffer et al. 2023).

Transitions: `llmjax.scaling.sigmoid.detect_transition` fits a sigmoid in log10 compute to each
(task, k, metric) series across the sweep, and reports the midpoint (the threshold) with its
bootstrap interval, or the reason it reports none. The in-context-learning score (late minus early
token loss; negative = context is used) and the best head's prefix-matching score (Olsson et al.
2022) get the same treatment, and are followed through training (every probed checkpoint of each
run: a phase change shows as a step within one run). Nothing here raises on thin data: missing
pieces become sentences in `findings` / `absent`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from llmjax.rundir import Status
from llmjax.scaling.analysis import to_float


class MetricInfo(NamedTuple):
    """How a probe metric is shown and tested."""

    label: str
    bounds: tuple[float, float] | None  # range of its values, None = unbounded
    binomial: bool  # a mean of 0/1 scores over n documents (binomial noise)
    min_jump: float | None  # smallest change called a transition; None = the noise decides


# 5 points of accuracy, 5 chrF points, 0.05 of edit distance per target token.
METRICS: dict[str, MetricInfo] = {
    "exact_match": MetricInfo("exact match", (0.0, 1.0), True, 0.05),
    "exact_match_hard": MetricInfo("exact match, hard subset", (0.0, 1.0), True, 0.05),
    "acc": MetricInfo("multiple-choice accuracy", (0.0, 1.0), True, 0.05),
    "normalized_token_edit_distance": MetricInfo("token edit distance / target length", None,
                                                 False, 0.05),
    "chrf": MetricInfo("chrF", (0.0, 100.0), False, 5.0),
    "target_cross_entropy": MetricInfo("target cross-entropy (nats/token)", None, False, None),
    "icl_score": MetricInfo("ICL score (nats; < 0 = uses context)", None, False, None),
    "prefix_matching_max": MetricInfo("best prefix-matching score", (0.0, 1.0), False, 0.05),
}
# Panels of a task's figure, in order: one all-or-nothing metric, then continuous ones.
DISCRETE = ("exact_match", "acc")
CONTINUOUS = ("chrf", "normalized_token_edit_distance", "target_cross_entropy")
# Series tested for a transition across the sweep, per (task, k).
TESTED = ("exact_match", "exact_match_hard", "acc", "chrf", "normalized_token_edit_distance",
          "target_cross_entropy")
# A head whose prefix-matching score reaches this is called an induction head in the findings
# (a uniform-attention head scores ~1/position; the induction config here reaches 0.78).
INDUCTION_HEAD = 0.3
# Probed checkpoints a run needs before its training trajectory is tested for a phase change.
MIN_STEPS_FOR_PHASE = 5
# Standard errors by which a model's exact match must beat chance (hard subset) and the in-context
# frequency baseline (all queries) for an ability to count as present in that model.
ABILITY_SE = 3.0
# Metrics followed through training within each run (phase changes): the ICL and induction
# scores, and every few-shot task's exact match.
PHASE_METRICS = ("icl_score", "prefix_matching_max", "exact_match")


@dataclass(frozen=True)
class RunProbes:
    """One run's probes: its size, and metric values per probed step."""

    name: str
    n_non_embedding: float
    # step -> (tokens, compute at that step, {(task, k, metric): (value, n)})
    steps: dict[int, tuple[float, float, dict[tuple[str, int, str], tuple[float, float | None]]]]
    n_layers: int | None = None  # the run's depth (probes.csv n_layers), None when not recorded
    study: str = ""  # the sweep's study it belongs to (probes.csv study)

    @property
    def final_step(self) -> int:
        return max(self.steps)

    @property
    def compute(self) -> float:
        """Training compute at the last probed step."""
        return self.steps[self.final_step][1]

    def value(self, task: str, k: int, metric: str, step: int | None = None) -> float | None:
        got = self.steps[self.final_step if step is None else step][2].get((task, k, metric))
        return None if got is None else got[0]

    def count(self, task: str, k: int, metric: str) -> float | None:
        got = self.steps[self.final_step][2].get((task, k, metric))
        return None if got is None else got[1]


@dataclass(frozen=True)
class Transition:
    """The sigmoid test of one (task, k, metric) series across the sweep (x = log10 compute)."""

    task: str
    k: int
    metric: str
    result: Any  # llmjax.scaling.sigmoid.TransitionResult
    runs: tuple[str, ...]
    x: tuple[float, ...]
    y: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "k": self.k, "metric": self.metric, "runs": list(self.runs),
                "log10_compute": list(self.x), "values": list(self.y),
                **self.result.to_dict()}


@dataclass(frozen=True)
class TaskSummary:
    """A probe task: its ks and the metrics shown side by side (all-or-nothing first)."""

    ks: tuple[int, ...]
    panels: tuple[str, ...]
    few_shot: bool

    @property
    def zero_shot_metric(self) -> str:
        """The metric a zero-shot task (facts) is followed by: accuracy when it has one."""
        return "acc" if "acc" in self.panels else self.panels[0]


@dataclass
class EmergenceAnalysis:
    """Everything the report's emergence section shows."""

    compute: str  # 'flops_6nd' or 'flops'
    runs: list[RunProbes]  # complete runs with probes of the shape family, by size
    skipped: list[str]  # runs with probes left out (not complete), as 'name (status)'
    tasks: dict[str, TaskSummary]
    transitions: list[Transition]  # across the sweep (the shape family)
    phase_changes: list[Transition]  # within a run, over training (x = log10 tokens)
    findings: list[str]
    absent: dict[str, str] = field(default_factory=dict)
    # Probed runs of another depth than the family's (e.g. a 1-layer control): not in the series
    # across scale, but tested over training and in `abilities` beside the family.
    controls: list[RunProbes] = field(default_factory=list)
    abilities: list[dict[str, Any]] = field(default_factory=list)  # per few-shot (task, k)
    others: list[RunProbes] = field(default_factory=list)  # probed runs of other studies

    def transition(self, task: str, k: int, metric: str) -> Transition | None:
        return next((t for t in self.transitions
                     if (t.task, t.k, t.metric) == (task, k, metric)), None)

    def detected(self) -> list[Transition]:
        return [t for t in self.transitions if t.result.detected]

    def headline(self) -> dict[str, Any]:
        """JSON-able summary: runs probed, series tested and detected, ICL and induction ranges."""
        out: dict[str, Any] = {"n_runs_probed": len(self.runs),
                               "n_series": len(self.transitions),
                               "n_transitions": len(self.detected()),
                               "transitions": [f"{t.task} k={t.k} {t.metric}"
                                               for t in self.detected()],
                               "abilities": [self._ability_summary(a) for a in self.abilities],
                               "phase_changes": [{"run": t.runs[0], "task": t.task.split(":")[1],
                                                  "k": t.k, "metric": t.metric,
                                                  "tokens": 10 ** t.result.threshold}
                                                 for t in self.phase_changes
                                                 if t.result.detected],
                               # Runs followed through training with no phase change at all.
                               "phase_absent": sorted(
                                   {t.runs[0] for t in self.phase_changes}
                                   - {t.runs[0] for t in self.phase_changes
                                      if t.result.detected})}
        for metric in ("icl_score", "prefix_matching_max"):
            values = [(r.value(task, 0, metric), r.name) for r in self.runs
                      for task in self._tasks_with(metric)]
            values = [(v, n) for v, n in values if v is not None]
            if values:
                out[metric] = {"min": min(values)[0], "max": max(values)[0],
                               "argmin": min(values)[1], "argmax": max(values)[1]}
        return out

    def _ability_summary(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """One few-shot (task, k) for the headline: the largest and smallest model's hard-subset
        exact match against its baselines, the controls, and the transition tests of exact match
        (hard subset) and of the continuous target cross-entropy beside it."""
        def run(x: Mapping[str, Any]) -> dict[str, Any]:
            return {key: x[key] for key in ("run", "n_non_embedding", "n_layers",
                                            "exact_match_hard", "se_hard", "chance_hard",
                                            "baseline_freq", "n_hard", "present")}

        def test(metric: str) -> dict[str, Any] | None:
            t = self.transition(a["task"], a["k"], metric)
            if t is None:
                return None
            r = t.result
            return {"metric": metric, "detected": bool(r.detected),
                    "log10_compute": r.threshold, "ci": r.threshold_ci,
                    "reason": "" if r.detected else r.reason}

        return {"task": a["task"], "k": a["k"], "emerged": a["emerged"],
                "present_in": a["present_in"], "smallest_with": a["smallest_with"],
                "absent_above": a["absent_above"],
                "largest": run(a["runs"][-1]), "smallest": run(a["runs"][0]),
                "controls": [run(c) for c in a["controls"]],
                "transition": test("exact_match_hard"),
                "continuous": test("target_cross_entropy")}

    def _tasks_with(self, metric: str) -> list[str]:
        return sorted({t for r in self.runs for s in r.steps.values() for (t, _, m) in s[2]
                       if m == metric})

    def to_dict(self) -> dict[str, Any]:
        return {"compute": self.compute, "headline": self.headline(),
                "runs": [{"name": r.name, "n_non_embedding": r.n_non_embedding,
                          "n_layers": r.n_layers, "compute": r.compute, "steps": sorted(r.steps),
                          "control": r in self.controls}
                         for r in self.runs + self.controls],
                "abilities": self.abilities,
                "skipped": self.skipped, "findings": self.findings, "absent": self.absent,
                "transitions": [{**t.to_dict(), "detected": bool(t.result.detected)}
                                for t in self.transitions],
                "phase_changes": [{**t.to_dict(), "run": t.runs[0], "task": t.task.split(":")[1],
                                   "detected": bool(t.result.detected)}
                                  for t in self.phase_changes]}


# ----------------------------------------------------------------------------- parsing


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1")


def parse_runs(rows: Iterable[Mapping[str, Any]], compute: str = "flops_6nd"
               ) -> tuple[list[RunProbes], list[str]]:
    """(complete runs with probes sorted by N, other probed runs as 'name (status)')."""
    by_run: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = str(row["name"])
        value = to_float(row.get("value"))
        step = to_float(row.get("step"))
        if value is None or step is None or not math.isfinite(value):
            continue
        layers = to_float(row.get("n_layers"))
        run = by_run.setdefault(name, {"n": to_float(row.get("n_non_embedding")),
                                       "status": str(row.get("status") or ""), "steps": {},
                                       "layers": None if layers is None else int(layers),
                                       "study": str(row.get("study") or "")})
        tokens = to_float(row.get("tokens")) or 0.0
        c = to_float(row.get(compute)) or 0.0
        entry = run["steps"].setdefault(int(step), (tokens, c, {}))
        entry[2][(str(row["task"]), int(to_float(row.get("k")) or 0), str(row["metric"]))] = (
            value, to_float(row.get("n")))
    runs, skipped = [], []
    for name, run in by_run.items():
        if run["status"].strip() != Status.COMPLETE or not run["n"]:
            skipped.append(f"{name} ({run['status'] or 'unknown'})")
            continue
        runs.append(RunProbes(name, run["n"], run["steps"], run["layers"], run["study"]))
    runs.sort(key=lambda r: (r.n_non_embedding, r.compute, r.name))
    return runs, sorted(skipped)


def _tasks(runs: Sequence[RunProbes]) -> dict[str, TaskSummary]:
    """Tasks with a discrete or continuous metric (few-shot tasks and facts), by name."""
    metrics: dict[str, set[str]] = {}
    ks: dict[str, set[int]] = {}
    for r in runs:
        for task, k, metric in r.steps[r.final_step][2]:
            metrics.setdefault(task, set()).add(metric)
            ks.setdefault(task, set()).add(k)
    out = {}
    for task in sorted(metrics):
        have = metrics[task]
        discrete = next((m for m in DISCRETE if m in have), None)
        if discrete is None:
            continue  # icl, induction, perplexity: their own sections
        few_shot = max(ks[task]) > 0
        panels = [discrete]
        if not few_shot and "acc" in have and discrete != "acc":
            panels.append("acc")  # facts: generation and multiple choice
        if "bleu" in have:  # a sentence-length answer: chrF's partial credit is the natural one
            panels.append("chrf")
        panels += [m for m in ("normalized_token_edit_distance", "target_cross_entropy")
                   if m in have]
        out[task] = TaskSummary(tuple(sorted(ks[task])), tuple(panels), few_shot)
    return out


# ----------------------------------------------------------------------------- analysis


def _series(runs: Sequence[RunProbes], task: str, k: int, metric: str):
    """(runs, log10 compute, values, counts) of the runs that have this (task, k, metric)."""
    names, x, y, n = [], [], [], []
    for r in runs:
        v = r.value(task, k, metric)
        if v is None or r.compute <= 0:
            continue
        names.append(r.name)
        x.append(math.log10(r.compute))
        y.append(v)
        n.append(r.count(task, k, metric))
    return names, x, y, n


def _test(task: str, k: int, metric: str, names, x, y, n, *, n_boot: int, seed: int
          ) -> Transition:
    from llmjax.scaling.sigmoid import detect_transition

    _, bounds, binomial, min_jump = METRICS.get(metric, MetricInfo(metric, None, False, None))
    counts = None
    if binomial and all(c is not None and c > 0 for c in n):
        counts = np.asarray(n, dtype=float)
    values = np.asarray(y, dtype=float)
    if bounds is not None:  # float noise at a bound (e.g. 1.0000001) is not a bad input
        values = np.clip(values, *bounds)
    result = detect_transition(np.asarray(x), values, n=counts, bounds=bounds, n_boot=n_boot,
                               seed=seed, min_jump=min_jump)
    return Transition(task, k, metric, result, tuple(names), tuple(x), tuple(y))


def _phase_changes(runs: Sequence[RunProbes], *, n_boot: int, seed: int) -> list[Transition]:
    """Sigmoid in log10 tokens over each run's probed steps, for PHASE_METRICS."""
    out = []
    for r in runs:
        steps = sorted(s for s in r.steps if r.steps[s][0] > 0)
        for (task, k, metric) in sorted({key for s in steps for key in r.steps[s][2]
                                         if key[2] in PHASE_METRICS}):
            got = [(s, r.steps[s][2].get((task, k, metric))) for s in steps]
            pts = [(math.log10(r.steps[s][0]), v[0], v[1]) for s, v in got if v is not None]
            if len(pts) < MIN_STEPS_FOR_PHASE:
                continue
            x, y, n = zip(*pts, strict=True)
            t = _test(task, k, metric, [r.name] * len(x), x, y, n, n_boot=n_boot, seed=seed)
            out.append(Transition(f"{r.name}:{task}", k, metric, t.result, t.runs, x, y))
    return out


def split_family(runs: Sequence[RunProbes]) -> tuple[list[RunProbes], list[RunProbes]]:
    """(the shape family compared across scale, its controls). The family is the most common
    (study, depth) among the runs, ties to the deeper; its controls are the runs of the same study
    at another depth (a 1-layer control). Runs of other studies are in neither (they are still
    followed through training). Runs without a recorded depth and study are one family."""
    keys = [(r.study, r.n_layers) for r in runs]
    if len(set(keys)) <= 1 or any(d is None for _, d in keys):
        return list(runs), []
    counts = {k: keys.count(k) for k in set(keys)}
    study, depth = max(counts, key=lambda k: (counts[k], k[1], k[0]))
    return ([r for r in runs if (r.study, r.n_layers) == (study, depth)],
            [r for r in runs if r.study == study and r.n_layers != depth])


def _ability(r: RunProbes, task: str, k: int) -> dict[str, Any] | None:
    """Whether run r has the in-context ability of (task, k): its hard-subset exact match beats
    chance and its exact match beats the in-context frequency baseline, each by ABILITY_SE
    standard errors (binomial, under the baseline's rate)."""
    em, hard = r.value(task, k, "exact_match"), r.value(task, k, "exact_match_hard")
    chance = r.value(task, k, "baseline_chance_hard")
    if chance is None:
        chance = r.value(task, k, "baseline_chance")
    freq = r.value(task, k, "baseline_freq") or 0.0
    n, n_hard = r.count(task, k, "exact_match"), r.count(task, k, "exact_match_hard")
    if None in (em, hard, chance) or not n or not n_hard:
        return None
    z_chance = (hard - chance) / _binomial_se(chance, n_hard)
    z_freq = (em - freq) / _binomial_se(max(freq, chance), n)
    return {"run": r.name, "n_non_embedding": r.n_non_embedding, "n_layers": r.n_layers,
            "exact_match": em, "exact_match_hard": hard, "se_hard": _binomial_se(hard, n_hard),
            "chance_hard": chance, "baseline_freq": freq, "n": n, "n_hard": n_hard,
            "z_chance": z_chance, "z_freq": z_freq,
            "present": bool(z_chance >= ABILITY_SE and z_freq >= ABILITY_SE)}


def abilities(family: Sequence[RunProbes], controls: Sequence[RunProbes],
              tasks: Mapping[str, TaskSummary]) -> list[dict[str, Any]]:
    """Per few-shot (task, k): which runs have the ability (`_ability`), and whether it emerged
    with scale: present in the largest model of the family and absent in the smallest."""
    out = []
    for task, info in tasks.items():
        if not info.few_shot:
            continue
        for k in info.ks:
            per_run = [a for a in (_ability(r, task, k) for r in family) if a is not None]
            ctrl = [a for a in (_ability(r, task, k) for r in controls) if a is not None]
            if not per_run:
                continue
            present = [a["run"] for a in per_run if a["present"]]
            first = next((a for a in per_run if a["present"]), None)
            # Models larger than the smallest with the ability that lack it: not monotone in N.
            gaps = [] if first is None else [a["run"] for a in per_run[per_run.index(first):]
                                             if not a["present"]]
            out.append({
                "absent_above": gaps,
                "task": task, "k": k, "runs": per_run, "controls": ctrl,
                "present_in": present,
                "emerged": bool(per_run[-1]["present"] and not per_run[0]["present"]),
                "smallest_with": None if first is None else first["run"],
                "smallest_n_with": None if first is None else first["n_non_embedding"],
            })
    return out


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.3f}"


def _binomial_se(p: float, n: float | None) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n) if n else 0.0


def _findings(runs: Sequence[RunProbes], tasks: Mapping[str, TaskSummary],
              transitions: Sequence[Transition], phases: Sequence[Transition],
              found: Sequence[Mapping[str, Any]] = (), controls: Sequence[RunProbes] = ()
              ) -> list[str]:
    """Plain sentences of what the probes show across the sweep (whatever they show)."""
    out: list[str] = []
    largest = runs[-1]
    for a in found:
        rows = "; ".join(f"{x['run']} {_fmt(x['exact_match_hard'])} ± {_fmt(x['se_hard'])}"
                         for x in a["runs"])
        base = a["runs"][-1]
        head = (f"{a['task']} k={a['k']}: hard-subset exact match {rows} (chance "
                f"{_fmt(base['chance_hard'])}, frequency baseline {_fmt(base['baseline_freq'])})")
        if a["emerged"]:
            text = (f"{head}: emerged with scale: beats both baselines by >= {ABILITY_SE:g} SE in "
                    f"the largest model and not the smallest; first in {a['smallest_with']} "
                    f"(N = {_fmt(a['smallest_n_with'])})")
            if a["absent_above"]:
                text += (f", but not monotone in N: absent in {', '.join(a['absent_above'])}, "
                         "a larger model")
        elif a["present_in"]:
            text = f"{head}: present in {', '.join(a['present_in'])} but not emerging with scale"
        else:
            text = f"{head}: not detected in any model (>= {ABILITY_SE:g} SE over both baselines)"
        for c in a["controls"]:
            text += (f"; control {c['run']} ({c['n_layers']} layer(s)) "
                     f"{_fmt(c['exact_match_hard'])}: {'present' if c['present'] else 'absent'}")
        out.append(text + ".")
    # In-context learning on the hard subset (where the frequency baseline is wrong).
    above, at_chance = [], []
    for task, info in tasks.items():
        if not info.few_shot:
            continue
        k = max(info.ks)
        hard = largest.value(task, k, "exact_match_hard")
        chance = largest.value(task, k, "baseline_chance_hard")
        if chance is None:
            chance = largest.value(task, k, "baseline_chance")
        if hard is None or chance is None:
            continue
        se = _binomial_se(max(chance, 1e-3), largest.count(task, k, "exact_match_hard"))
        text = f"{task} {_fmt(hard)} (chance {_fmt(chance)})"
        (above if hard > chance + 2 * se else at_chance).append(text)
    if above or at_chance:
        head = (f"Few-shot, hard subset (queries where the most frequent answer in the context is "
                f"wrong), largest model {largest.name} at the largest k: ")
        if above:
            out.append(head + "above chance by more than 2 standard errors on "
                       + "; ".join(above) + (f"; at chance on {'; '.join(at_chance)}."
                                             if at_chance else "."))
        else:
            out.append(head + "no task is above chance by more than 2 standard errors ("
                       + "; ".join(at_chance) + "): no in-context learning that beats the "
                       "in-context frequency baseline.")
    # Transitions across the sweep, and the metric-artefact check.
    found = [t for t in transitions if t.result.detected]
    if not transitions:
        pass
    elif not found:
        out.append(f"No transition detected in any of the {len(transitions)} (task, k, metric) "
                   f"series across {len(runs)} model sizes (sigmoid in log-compute; reasons per "
                   "series in report.json).")
    else:
        for t in found:
            r = t.result
            lo, hi = r.threshold_ci if r.threshold_ci else (None, None)
            text = (f"Transition in {t.task} k={t.k} {t.metric}: jump {r.jump:+.3f} at "
                    f"C = 10^{r.threshold:.2f} FLOPs"
                    + (f" [10^{lo:.2f}, 10^{hi:.2f}]" if lo is not None else ""))
            if t.metric in DISCRETE + ("exact_match_hard",):
                partners = [s for s in transitions if (s.task, s.k) == (t.task, t.k)
                            and s.metric in CONTINUOUS]
                smooth = [s.metric for s in partners if not s.result.detected]
                if partners and len(smooth) == len(partners):
                    text += (f"; the continuous metrics ({', '.join(smooth)}) show no transition,"
                             " so the jump may be the metric's (Schaeffer et al. 2023)")
                elif partners:
                    text += "; a continuous metric jumps too"
            elif t.metric in CONTINUOUS:
                whole = [s for s in transitions if (s.task, s.k) == (t.task, t.k)
                         and s.metric in DISCRETE and not s.result.detected]
                if whole:
                    text += (f"; {whole[0].metric} shows none (partial credit grows, whole "
                             "answers do not)")
            out.append(text + ".")
    # ICL score and induction heads.
    icl = [(r.value("icl", 0, "icl_score"), r.name) for r in runs]
    icl = [(v, n) for v, n in icl if v is not None]
    if icl:
        out.append(f"ICL score (late minus early token loss) ranges {_fmt(min(icl)[0])} "
                   f"({min(icl)[1]}) to {_fmt(max(icl)[0])} ({max(icl)[1]}) nats; negative means "
                   "later tokens are predicted better from context.")
    pm = [(r.value("induction", 0, "prefix_matching_max"), r.name) for r in runs]
    pm = [(v, n) for v, n in pm if v is not None]
    if pm:
        best, who = max(pm)
        if best >= INDUCTION_HEAD:
            out.append(f"Induction heads: the best head's prefix-matching score reaches "
                       f"{_fmt(best)} in {who} (threshold {INDUCTION_HEAD}).")
        else:
            out.append(f"No induction head: the best prefix-matching score of any run is "
                       f"{_fmt(best)} ({who}), below {INDUCTION_HEAD}.")
    for p in phases:
        if p.result.detected:
            out.append(f"Phase change over training in {p.task} {p.metric}: jump "
                       f"{p.result.jump:+.3f} near {10 ** p.result.threshold:.3g} tokens.")
    if phases and not any(p.result.detected for p in phases):
        out.append(f"No phase change over training in any of the {len(phases)} run "
                   "trajectories of the ICL and prefix-matching scores (sigmoid in log-tokens).")
    # Knowledge held in weights (facts): zero-shot, no in-context help.
    for task, info in tasks.items():
        if info.few_shot:
            continue
        metric = info.zero_shot_metric
        first, last = runs[0].value(task, 0, metric), largest.value(task, 0, metric)
        chance = largest.value(task, 0, "baseline_chance")
        if first is None or last is None:
            continue
        t = next((s for s in transitions if (s.task, s.k, s.metric) == (task, 0, metric)), None)
        verdict = ("" if t is None else
                   " (a transition: see the table)" if t.result.detected else
                   " (no transition detected)")
        out.append(f"{task} ({metric}, zero-shot, knowledge in the weights): {_fmt(first)} at "
                   f"{runs[0].name} to {_fmt(last)} at {largest.name}"
                   + (f", chance {_fmt(chance)}" if chance is not None else "") + verdict + ".")
    return out


def analyze_emergence(rows: Iterable[Mapping[str, Any]], *, compute: str = "flops_6nd",
                      n_boot: int = 200, seed: int = 0) -> EmergenceAnalysis:
    """The emergence analysis of probes.csv rows (see the module docstring)."""
    runs, skipped = parse_runs(rows, compute)
    probed = runs
    runs, controls = split_family(runs)
    if not runs:
        why = ("no complete run has probes: run `llmjax probe --workdir=RUN` on the sweep's runs,"
               " then `llmjax results`")
        return EmergenceAnalysis(compute, [], skipped, {}, [], [], [], {"all": why})
    tasks = _tasks(runs)
    transitions = []
    for task, info in tasks.items():
        for k in info.ks:
            for metric in TESTED:
                names, x, y, n = _series(runs, task, k, metric)
                if len(set(x)) >= 2:
                    transitions.append(_test(task, k, metric, names, x, y, n,
                                             n_boot=n_boot, seed=seed))
    for task, metric in (("icl", "icl_score"), ("induction", "prefix_matching_max")):
        names, x, y, n = _series(runs, task, 0, metric)
        if len(set(x)) >= 2:
            transitions.append(_test(task, 0, metric, names, x, y, n, n_boot=n_boot, seed=seed))
    phases = _phase_changes(probed, n_boot=n_boot, seed=seed)
    absent = {}
    if len(runs) < 2:
        absent["scale"] = "one probed run: nothing to compare across scale"
    if not any(len(r.steps) > 1 for r in runs):
        absent["training"] = ("each run was probed at one checkpoint only: keep several "
                              "(keep_every) and run `llmjax probe --all_steps` to follow training")
    elif not phases:
        absent["phase"] = (f"phase changes within a run are tested with at least "
                           f"{MIN_STEPS_FOR_PHASE} probed checkpoints; the runs have "
                           f"{max(len(r.steps) for r in runs)} at most")
    found = abilities(runs, controls, tasks)
    others = [r for r in probed if r not in runs and r not in controls]
    return EmergenceAnalysis(compute, runs, skipped, tasks, transitions, phases,
                             _findings(runs, tasks, transitions, phases, found, controls), absent,
                             controls, found, others)


def load_probe_rows(workdir: str) -> list[dict[str, Any]]:
    """probes.csv of a sweep directory (checked: a garbled file is a UserError naming it), or
    (without it) the probes collected from its runs/ (`llmjax.report.tables.load_probe_rows`)."""
    from llmjax.report.tables import load_probe_rows as load

    return load(workdir)


__all__ = ["EmergenceAnalysis", "RunProbes", "TaskSummary", "Transition", "analyze_emergence",
           "load_probe_rows", "parse_runs"]
