"""Evaluation: open-set/universal metrics, anomaly scores, label-free validators, plots.

Importing the package is light: `names` (metric names and directions) needs no numpy, scikit-learn or matplotlib,
so a config is validated without them. The functions below load their module on first use.
"""
from __future__ import annotations

from ..lazy import lazy_members

# Public name -> the submodule that defines it.
_HOME = {
    **dict.fromkeys(("accuracy_by_bin", "anomaly_scores", "auroc_unknown", "cluster_rejected", "confusion", "entropy",
                     "gmm_threshold", "h_score", "knn_distance", "l2_normalize", "open_set_metrics", "softmax",
                     "to_numpy"), "metrics"),
    **dict.fromkeys(("plot_accuracy_by_bin", "plot_confusion", "plot_embedding"), "plots"),
    **dict.fromkeys(("HIGHER_IS_BETTER", "LABEL_FREE_CRITERIA", "VALIDATORS", "information_maximization",
                     "label_free_scores", "mean_entropy", "snd"), "validators"),
}

__all__ = sorted(_HOME)


__getattr__ = lazy_members(__name__, _HOME)
