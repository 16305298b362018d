"""AdaBN + survey emulation: how far source stamps are degraded towards the target survey, and how many.

Both ranges span the whole of what the method accepts: strength 0 (or prob 0) is plain AdaBN, so the sweep can
find that emulation does not help; 1 is the target's PSF and sky noise, up to 1.5 overshoots it.
"""

from __future__ import annotations

from .base import Float, Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["EMULATION"]

EMULATION = Space(
    "emulation",
    OPTIMISER
    + MODEL
    + (
        Float("method.params.strength", 0.0, 1.5),
        Float("method.params.prob", 0.0, 1.0),
    )
    + UNKNOWN_CLUSTERS,
)
