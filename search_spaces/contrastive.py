"""Contrastive (NT-Xent on both surveys' stamps, on AdaBN + survey emulation): the loss weight, its temperature,
the views' jitter and the emulation's strength.

The weight is log-uniform over two decades around the default 0.5; the temperature spans SimCLR's 0.1-0.5 and
below; sky noise and shift run from none to a few times the defaults (0.05 stretched units, 2 px).
"""

from __future__ import annotations

from .base import Float, Int, Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["CONTRASTIVE"]

CONTRASTIVE = Space(
    "contrastive",
    OPTIMISER
    + MODEL
    + (
        Float("method.params.weight", 0.05, 5.0, log=True),
        Float("method.params.tau", 0.05, 0.5, log=True),
        Float("method.params.noise", 0.0, 0.2),
        Int("method.params.max_shift", 0, 4),
        Float("method.params.emulation_strength", 0.0, 1.5),
        Float("method.params.emulation_prob", 0.0, 1.0),
    )
    + UNKNOWN_CLUSTERS,
)
