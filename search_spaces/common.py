"""Parameters every method shares: optimiser, backbone width, classifier temperature, unknown clustering.

Ranges are anchored to the core's defaults (lr 2e-3 AdamW, width 32, T 0.05) and to DomainBed's
weight-decay range; see ../shared/research/uda.md section 6.
"""

from __future__ import annotations

from .base import Categorical, Float, Int

__all__ = ["OPTIMISER", "MODEL", "UNKNOWN_CLUSTERS"]

OPTIMISER = (
    Categorical("optim.optimizer", ("adamw", "sgd")),
    Float("optim.momentum", 0.5, 0.95, when=("optim.optimizer", "sgd")),  # only SGD has one
    Float("optim.lr", 1e-4, 3e-2, log=True),
    Float("optim.weight_decay", 1e-6, 1e-2, log=True),
    Categorical("optim.batch_size", (32, 64, 128)),
)

MODEL = (
    Categorical("model.width", (16, 32, 64)),
    # Cosine classifier: logits = cos / T. DANCE also uses T inside neighbourhood clustering.
    Float("model.temperature", 0.02, 0.2, log=True),
)

# Clusters for grouping rejected (unknown) target stamps: lenses, artifacts, ... (evaluation only).
UNKNOWN_CLUSTERS = (Int("eval.unknown_clusters", 1, 5),)
