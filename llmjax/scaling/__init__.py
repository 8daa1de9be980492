"""Scaling-law fits: pure math on tables of (N, D, C, L), and the analysis of a sweep built on them.

The fit modules import no other llmjax module but errors. `analysis` (a sweep's rows in, every fit,
point selection, identification check and extrapolation out, as data) and `emergence` (the probe
records across scale and through training, with their transition tests) are imported on use, and
`llmjax.report` only renders what they return.

- `fit_power_law`: L(x) = E + (x_c/x)^alpha, with or without E (Kaplan et al. 2020).
- `fit_chinchilla`: Approach 3, L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, as
  replicated by Besiroglu et al. 2024).
- `fit_isoflop`: Approach 2, parabolas in log N per FLOP budget.
- `fit_envelope`: Approach 1, lower envelope of training curves.
- `bootstrap_*`: percentile intervals by resampling points; `extrapolation_check`: hold out the
  largest models and predict them.

Units throughout: N parameters, D tokens, C training FLOPs (C = 6 N D), L loss in nats per token.
"""

from llmjax.scaling._inputs import cluster_labels
from llmjax.scaling.allocation import Allocation
from llmjax.scaling.bootstrap import (
    BootstrapResult,
    bootstrap_chinchilla,
    bootstrap_envelope,
    bootstrap_fit,
    bootstrap_isoflop,
    bootstrap_power_law,
)
from llmjax.scaling.chinchilla import PAPER_GRID, ChinchillaFit, fit_chinchilla
from llmjax.scaling.envelope import EnvelopeFit, fit_envelope
from llmjax.scaling.extrapolation import ExtrapolationResult, extrapolation_check
from llmjax.scaling.isoflop import IsoFLOPFit, fit_isoflop
from llmjax.scaling.powerlaw import PowerLawFit, fit_power_law
from llmjax.scaling.sigmoid import SigmoidFit, TransitionResult, detect_transition, fit_sigmoid

__all__ = [
    "PAPER_GRID",
    "Allocation",
    "BootstrapResult",
    "ChinchillaFit",
    "EnvelopeFit",
    "ExtrapolationResult",
    "IsoFLOPFit",
    "PowerLawFit",
    "SigmoidFit",
    "TransitionResult",
    "bootstrap_chinchilla",
    "bootstrap_envelope",
    "bootstrap_fit",
    "bootstrap_isoflop",
    "bootstrap_power_law",
    "cluster_labels",
    "detect_transition",
    "extrapolation_check",
    "fit_chinchilla",
    "fit_envelope",
    "fit_isoflop",
    "fit_power_law",
    "fit_sigmoid",
]
