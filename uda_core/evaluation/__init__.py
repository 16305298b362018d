"""Evaluation: open-set/universal metrics, anomaly scores, label-free validators, plots."""
from __future__ import annotations

from .metrics import (
    accuracy_by_bin,
    anomaly_scores,
    auroc_unknown,
    cluster_rejected,
    confusion,
    entropy,
    gmm_threshold,
    h_score,
    knn_distance,
    l2_normalize,
    open_set_metrics,
    softmax,
    to_numpy,
)
from .plots import plot_accuracy_by_bin, plot_confusion, plot_embedding
from .validators import (
    HIGHER_IS_BETTER,
    LABEL_FREE_CRITERIA,
    VALIDATORS,
    information_maximization,
    label_free_scores,
    mean_entropy,
    snd,
)

__all__ = [
    "accuracy_by_bin",
    "anomaly_scores",
    "auroc_unknown",
    "cluster_rejected",
    "confusion",
    "entropy",
    "gmm_threshold",
    "h_score",
    "knn_distance",
    "l2_normalize",
    "open_set_metrics",
    "softmax",
    "to_numpy",
    "plot_accuracy_by_bin",
    "plot_confusion",
    "plot_embedding",
    "HIGHER_IS_BETTER",
    "LABEL_FREE_CRITERIA",
    "VALIDATORS",
    "information_maximization",
    "label_free_scores",
    "mean_entropy",
    "snd",
]
