"""OVANet (Saito and Saenko 2021): the one-vs-all loss weight, the open-set entropy weight and survey emulation.

Loss weights are log-uniform over two decades around the reference values (OVA loss 1, entropy 0.1, `--multi`);
emulation spans what the method accepts, 0 (off) included.
"""

from __future__ import annotations

from .base import Float, Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["OVANET"]

OVANET = Space(
    "ovanet",
    OPTIMISER
    + MODEL
    + (
        Float("method.params.ova_weight", 0.1, 10.0, log=True),
        Float("method.params.ent_weight", 0.01, 1.0, log=True),
        Float("method.params.emulation_strength", 0.0, 1.5),
        Float("method.params.emulation_prob", 0.0, 1.0),
    )
    + UNKNOWN_CLUSTERS,
)
