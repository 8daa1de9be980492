"""Compute-optimal allocations N_opt = k_N C^a, D_opt = k_D C^b, fitted as lines in log-log space.

Used by Chinchilla Approaches 1 and 2 (Hoffmann et al. 2022, Sections 3.1-3.2): after finding the
optimal model size and token count at several FLOP budgets, fit log N_opt = a log C + log k_N and
log D_opt = b log C + log k_D by least squares. Units: C FLOPs, N parameters, D tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fit_loglog_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares exponent and log coefficient of y = exp(c) x^s: returns (s, c)."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


@dataclass(frozen=True)
class Allocation:
    """N_opt(C) = exp(log_k_n) C^a and D_opt(C) = exp(log_k_d) C^b."""

    a: float
    b: float
    log_k_n: float
    log_k_d: float

    @classmethod
    def fit(cls, C: np.ndarray, n_opt: np.ndarray, d_opt: np.ndarray) -> Allocation:
        a, log_k_n = fit_loglog_line(C, n_opt)
        b, log_k_d = fit_loglog_line(C, d_opt)
        return cls(a=a, b=b, log_k_n=log_k_n, log_k_d=log_k_d)

    def n_opt(self, C) -> np.ndarray:
        """Compute-optimal parameters at C FLOPs."""
        return np.exp(self.log_k_n + self.a * np.log(np.asarray(C, np.float64)))

    def d_opt(self, C) -> np.ndarray:
        """Compute-optimal training tokens at C FLOPs."""
        return np.exp(self.log_k_d + self.b * np.log(np.asarray(C, np.float64)))


@dataclass(frozen=True, eq=False)
class AllocationFit:
    """Base of a fit whose result is an `Allocation` (Approaches 1 and 2): its exponents, the
    optima it predicts, and the allocation's entries of `to_dict`."""

    allocation: Allocation

    @property
    def a(self) -> float:
        return self.allocation.a

    @property
    def b(self) -> float:
        return self.allocation.b

    def n_opt(self, C) -> np.ndarray:
        return self.allocation.n_opt(C)

    def d_opt(self, C) -> np.ndarray:
        return self.allocation.d_opt(C)

    def allocation_dict(self) -> dict:
        return {"a": float(self.a), "b": float(self.b), "log_k_n": self.allocation.log_k_n,
                "log_k_d": self.allocation.log_k_d}
