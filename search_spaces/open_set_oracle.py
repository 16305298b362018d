"""The open-set oracle (trained on the target's labels, unknown classes included) has no loss weights: only the
optimiser and the model are searched, as for the target oracle. A ceiling for benchmarks, never a sweep's pick."""

from __future__ import annotations

from .base import Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["OPEN_SET_ORACLE"]

OPEN_SET_ORACLE = Space("open_set_oracle", OPTIMISER + MODEL + UNKNOWN_CLUSTERS)
