"""Source-only and AdaBN have no loss weights: only the optimiser and the model are searched."""

from __future__ import annotations

from .base import Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["SOURCE_ONLY", "ADABN", "TARGET_ORACLE"]

SOURCE_ONLY = Space("source_only", OPTIMISER + MODEL + UNKNOWN_CLUSTERS)
ADABN = Space("adabn", OPTIMISER + MODEL + UNKNOWN_CLUSTERS)
TARGET_ORACLE = Space("target_oracle", OPTIMISER + MODEL + UNKNOWN_CLUSTERS)
