"""DANCE: the two loss weights, the entropy-separation threshold and margin, the memory bank's momentum.

Loss weights are log-uniform over two decades around the reference 0.05; c_rho and c_m parametrise
rho = c_rho ln K and m = c_m min(rho, ln K - rho), so every point of the space has a working ES gradient.
"""

from __future__ import annotations

from .base import Categorical, Float, Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["DANCE"]

DANCE = Space(
    "dance",
    OPTIMISER
    + MODEL
    + (
        Float("method.params.eta_nc", 0.005, 0.5, log=True),
        Float("method.params.eta_es", 0.005, 0.5, log=True),
        Float("method.params.c_rho", 0.2, 0.8),
        Float("method.params.c_m", 0.05, 0.9),
        Categorical("method.params.memory_momentum", (0.0, 0.5, 0.9)),
    )
    + UNKNOWN_CLUSTERS,
)
