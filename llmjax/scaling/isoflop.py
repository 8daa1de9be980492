"""Chinchilla Approach 2: IsoFLOP profiles (Hoffmann et al. 2022, Section 3.2, Figure 3).

For each FLOP budget, fit a parabola of final loss against log N, take its vertex as N_opt(C),
then fit N_opt proportional to C^a across budgets (and D_opt proportional to C^b). D_opt comes
from C = 6 N D as C / (6 N_opt) by default (`d_from="compute"`, as in the paper), or from a second
parabola of loss against log D per budget (`d_from="data"`).

Points are grouped into budgets by C: sorted, a new budget starts where C exceeds the first C of
the current one by more than a factor (1 + budget_rtol); a budget's C is its points' geometric
mean. Units: N parameters, D tokens, C FLOPs, L loss in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmjax.errors import UserError
from llmjax.scaling import _inputs
from llmjax.scaling.allocation import Allocation, AllocationFit


def group_budgets(C: np.ndarray, budget_rtol: float = 0.05) -> np.ndarray:
    """Budget label [n] for each point, 0 for the smallest budget, by the rule in the module doc."""
    return _inputs.cluster_labels(C, budget_rtol)


def _parabola_vertex(log_x: np.ndarray, L: np.ndarray, budget: float, var: str):
    """Vertex (log x*, L*) and whether it lies inside the data of L = c2 u^2 + c1 u + c0."""
    if len(np.unique(log_x)) < 3:
        raise UserError(
            f"budget C={budget:.3g} has {len(np.unique(log_x))} distinct {var} values; "
            "Approach 2 needs at least 3 per budget"
        )
    center = log_x.mean()
    c2, c1, c0 = np.polyfit(log_x - center, L, 2)
    if not c2 > 0:
        raise UserError(
            f"budget C={budget:.3g}: loss against log {var} curves downward (no minimum); "
            "widen the model sizes around the optimum"
        )
    u = -c1 / (2.0 * c2)
    inside = bool(log_x.min() <= u + center <= log_x.max())
    return u + center, c0 - c1 * c1 / (4.0 * c2), inside


@dataclass(frozen=True, eq=False)
class IsoFLOPFit(AllocationFit):
    """Per-budget optima (arrays [K], sorted by budget) and the fitted allocation N_opt ~ C^a."""

    budgets: np.ndarray  # [K] FLOPs
    points_per_budget: np.ndarray  # [K]
    n_opt_per_budget: np.ndarray  # [K] parameters at each parabola's vertex
    d_opt_per_budget: np.ndarray  # [K] tokens
    loss_opt_per_budget: np.ndarray  # [K] nats, the parabola's minimum
    vertex_in_range: np.ndarray  # [K] bool: vertex inside the budget's sampled N (not extrapolated)
    d_from: str

    def to_dict(self) -> dict:
        return {
            **self.allocation_dict(),
            "d_from": self.d_from,
            "budgets": self.budgets.tolist(),
            "points_per_budget": self.points_per_budget.tolist(),
            "n_opt_per_budget": self.n_opt_per_budget.tolist(),
            "d_opt_per_budget": self.d_opt_per_budget.tolist(),
            "loss_opt_per_budget": self.loss_opt_per_budget.tolist(),
            "vertex_in_range": self.vertex_in_range.tolist(),
            "method": "Hoffmann et al. 2022 Approach 2 (IsoFLOP parabolas in log N)",
        }


def fit_isoflop(N, D, L, C, *, budget_rtol: float = 0.05, d_from: str = "compute") -> IsoFLOPFit:
    """Approach 2 from points (N [n] params, D [n] tokens, L [n] loss, C [n] FLOPs).

    Needs at least 3 budgets and at least 3 distinct model sizes per budget; a budget whose
    parabola has no minimum is an error naming the budget. d_from: "compute" (D_opt = C/(6 N_opt))
    or "data" (vertex of loss against log D).
    """
    if d_from not in ("compute", "data"):
        raise UserError(f"d_from must be 'compute' or 'data'; got {d_from!r}")
    if not budget_rtol >= 0:
        raise UserError(f"budget_rtol must be >= 0; got {budget_rtol!r}")
    N, D, L, C = _inputs.columns(
        ("N", "D", "L", "C"), (N, D, L, C), min_points=9, what="fit_isoflop"
    )
    order = _inputs.canonical_order(C, N, D, L)
    N, D, L, C = N[order], D[order], L[order], C[order]
    labels = group_budgets(C, budget_rtol)
    n_budgets = labels.max() + 1
    if n_budgets < 3:
        raise UserError(f"C holds {n_budgets} FLOP budget(s); Approach 2 needs at least 3")
    rows = []
    for k in range(n_budgets):
        m = labels == k
        budget = float(np.exp(np.mean(np.log(C[m]))))
        log_n, loss_opt, inside = _parabola_vertex(np.log(N[m]), L[m], budget, "N")
        n_opt = float(np.exp(log_n))
        if d_from == "compute":
            d_opt = budget / (6.0 * n_opt)
        else:
            d_opt = float(np.exp(_parabola_vertex(np.log(D[m]), L[m], budget, "D")[0]))
        rows.append((budget, int(m.sum()), n_opt, d_opt, loss_opt, inside))
    budgets, counts, n_opts, d_opts, losses, inside = (np.array(c) for c in zip(*rows, strict=True))
    allocation = Allocation.fit(budgets, n_opts, d_opts)
    return IsoFLOPFit(
        budgets=budgets,
        points_per_budget=counts,
        n_opt_per_budget=n_opts,
        d_opt_per_budget=d_opts,
        loss_opt_per_budget=losses,
        vertex_in_range=inside.astype(bool),
        allocation=allocation,
        d_from=d_from,
    )
