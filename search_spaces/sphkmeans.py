"""Ye et al.'s spherical K-means adaptation: clusters per answer (the sweep's cluster count), the confidence
filter, the threshold schedule, the prototype temperature, the adaptation learning rate and re-clustering period.

Ranges bracket the paper's values (confidence 0.1, threshold 0.9 falling 0.005 per epoch, tau 0.05).
"""

from __future__ import annotations

from .base import Categorical, Float, Int, Space
from .common import MODEL, OPTIMISER, UNKNOWN_CLUSTERS

__all__ = ["SPHKMEANS"]

SPHKMEANS = Space(
    "sphkmeans",
    OPTIMISER
    + MODEL
    + (
        Int("method.params.clusters_per_answer", 1, 4),
        Float("method.params.confidence_frac", 0.05, 0.6, log=True),
        Float("method.params.threshold_start", 0.3, 0.95),
        Float("method.params.threshold_decay", 0.0, 0.05),
        Float("method.params.tau", 0.02, 0.2, log=True),
        Float("method.params.adapt_lr_scale", 0.01, 1.0, log=True),
        Categorical("method.params.recluster_every", (25, 50, 100)),
        Float("method.params.warmup_frac", 0.3, 0.7),
        Categorical("method.params.tree_filter", (True, False)),
    )
    + UNKNOWN_CLUSTERS,
)
