"""Evaluation metrics for universal domain adaptation (open-set / universal).

Conventions (fixed by the project):

* ``class_names`` lists all classes; the ``K`` known (source) classes come first,
  so a global label ``y < K`` is known and ``y >= K`` is unknown (target-private).
* The model outputs ``K`` logits; ``pred = argmax(logits)`` lies in ``[0, K)``.
* A boolean ``rejected`` mask turns a prediction into "unknown", which is
  column ``K`` of the confusion matrices.
* ``shared`` are the known class ids that also occur in the target domain.
  Known but non-shared (source-private) labels are ignored by the shared metrics.
* Anomaly scores: higher means more anomalous.

Inputs are numpy arrays (torch tensors are converted); outputs are floats,
numpy arrays, dicts or lists of dicts. Undefined quantities are ``nan``.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from scipy.special import logsumexp
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score
from sklearn.mixture import GaussianMixture

__all__ = [
    "to_numpy",
    "entropy",
    "softmax",
    "l2_normalize",
    "anomaly_scores",
    "knn_distance",
    "gmm_threshold",
    "h_score",
    "open_set_metrics",
    "auroc_unknown",
    "confusion",
    "cluster_rejected",
    "accuracy_by_bin",
]

NAN = float("nan")


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """Convert a numpy array, list or torch tensor (any device, with grad) to numpy."""
    if hasattr(x, "detach"):  # torch tensor: drop grad and move to host first
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def entropy(probs: Any, eps: float = 1e-5) -> np.ndarray:
    """Row-wise entropy ``H_i = -sum_c p_ic log(p_ic + eps)`` (DANCE convention).

    probs: (N, C) probabilities -> (N,) entropies in nats.
    """
    p = to_numpy(probs, np.float64)
    return -np.sum(p * np.log(p + eps), axis=-1)


def softmax(logits: Any) -> np.ndarray:
    """Numerically stable softmax over the last axis: (N, C) -> (N, C)."""
    z = to_numpy(logits, np.float64)
    z = z - np.max(z, axis=-1, keepdims=True)  # shift so exp never overflows
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def l2_normalize(x: Any, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation ``x_i / max(||x_i||, eps)``: (N, D) -> (N, D)."""
    a = to_numpy(x, np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), eps)


def knn_distance(
    features: Any, source_features: Any, k: int = 5, chunk: int = 512
) -> np.ndarray:
    """Mean cosine distance of each feature to its ``k`` nearest source features.

    ``d_i = mean_{j in kNN(i)} (1 - cos(f_i, s_j))``; features (N, D), source (M, D)
    -> (N,). Rows are processed ``chunk`` at a time so memory is O(chunk * M),
    not O(N * M). ``k`` is clipped to ``M``.
    """
    f = l2_normalize(features)
    s = l2_normalize(source_features)
    n, m = f.shape[0], s.shape[0]
    if m == 0:
        return np.full(n, NAN)
    k = int(max(1, min(k, m)))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, max(1, int(chunk))):
        dist = 1.0 - f[start:start + chunk] @ s.T  # (chunk, M) cosine distances
        # partition is O(M) per row; only the k smallest are needed, not their order
        nearest = np.partition(dist, k - 1, axis=1)[:, :k]
        out[start:start + chunk] = nearest.mean(axis=1)
    return out


def anomaly_scores(
    logits: Any,
    features: Any,
    prototypes: Any,
    source_features: Any,
    temperature: float,
    k: int = 5,
) -> dict[str, np.ndarray]:
    """Per-sample anomaly scores (higher = more anomalous), each of shape (N,).

    logits: (N, K), already divided by the temperature (``logits = cos / T``);
    features: (N, D); prototypes: (K, D) classifier weights; source_features: (M, D).

    * ``entropy``: ``H(softmax(logits))`` with the DANCE eps.
    * ``neg_max_softmax``: ``-max_c softmax(logits)_c``.
    * ``energy``: ``-T * logsumexp(logits)``; multiplying by T puts it in cosine units.
    * ``prototype_distance``: ``1 - max_k cos(f, w_k)`` (both L2-normalised here).
    * ``knn_distance``: mean cosine distance to the ``k`` nearest source features.
    """
    z = to_numpy(logits, np.float64)
    p = softmax(z)
    f = l2_normalize(features)
    w = l2_normalize(prototypes)
    return {
        "entropy": entropy(p),
        "neg_max_softmax": -p.max(axis=1),
        "energy": -float(temperature) * logsumexp(z, axis=1),
        "prototype_distance": 1.0 - (f @ w.T).max(axis=1),
        "knn_distance": knn_distance(f, source_features, k=k),
    }


def _threshold_fallback(s: np.ndarray) -> float:
    """Fallback threshold ``mean + 2 std`` of the finite scores (nan if none)."""
    if s.size == 0:
        return NAN
    return float(np.mean(s) + 2.0 * np.std(s))


def gmm_threshold(scores: Any, seed: int = 0, grid_size: int = 2001) -> float:
    """Label-free rejection threshold from a 2-component 1-D Gaussian mixture.

    Fits a GMM to the finite scores and returns the score ``t`` between the two
    component means where the posterior of the higher-mean ("anomalous")
    component first reaches 0.5 (grid of ``grid_size`` points, linearly
    interpolated between the bracketing points). Reject when ``score > t``.

    Fallback ``mean + 2 * std`` of the finite scores when the fit is degenerate:
    fewer than 10 finite scores, fewer than 2 distinct values, means closer than
    1e-6 * (score range), a component weight < 0.02, or no 0.5 crossing between
    the means. Returns nan only when there is no finite score at all.
    """
    s = to_numpy(scores, np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size < 10 or np.ptp(s) <= 0:
        return _threshold_fallback(s)
    gmm = GaussianMixture(n_components=2, random_state=seed, n_init=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. convergence warnings on tiny clusters
        gmm.fit(s[:, None])
    means = gmm.means_.ravel()
    lo_idx, hi_idx = int(np.argmin(means)), int(np.argmax(means))
    lo, hi = float(means[lo_idx]), float(means[hi_idx])
    if hi - lo <= 1e-6 * np.ptp(s) or gmm.weights_.min() < 0.02:
        return _threshold_fallback(s)
    grid = np.linspace(lo, hi, int(grid_size))
    post = gmm.predict_proba(grid[:, None])[:, hi_idx]
    above = np.flatnonzero(post >= 0.5)
    if above.size == 0:
        return _threshold_fallback(s)
    j = int(above[0])
    if j == 0:
        return float(grid[0])
    # linear interpolation between the last point below 0.5 and the first above
    x0, x1, p0, p1 = grid[j - 1], grid[j], post[j - 1], post[j]
    return float(x0 + (0.5 - p0) * (x1 - x0) / (p1 - p0)) if p1 > p0 else float(x1)


def h_score(known_acc: float, unknown_acc: float) -> float:
    """Harmonic mean ``2 a b / (a + b)``; 0 when both are 0, nan if either is nan."""
    a, b = float(known_acc), float(unknown_acc)
    if np.isnan(a) or np.isnan(b):
        return NAN
    if a + b == 0:
        return 0.0
    return 2.0 * a * b / (a + b)


def _mean_or_nan(x: np.ndarray) -> float:
    """Mean of a 1-D array, nan when empty (avoids numpy's empty-slice warning)."""
    return float(np.mean(x)) if x.size else NAN


def open_set_metrics(
    y_true: Any, pred: Any, rejected: Any, K: int, shared: Sequence[int]
) -> dict[str, float]:
    """Closed-set, open-set and universal metrics; all inputs have shape (N,).

    Let S = samples with label in ``shared``, U = samples with label >= K.
    Source-private samples (label < K, not in ``shared``) are counted in none
    of the label-based metrics (they would otherwise bias known accuracy, which
    is the OVANet bug); only ``rejected_frac`` sees them, being label-free.

    * ``acc_shared``: mean over S of ``pred == y`` (argmax only, no rejection).
    * ``mean_class_acc_shared``: mean over shared classes present of that accuracy.
    * ``acc_with_rejection``: over S u U, correct iff
      (y < K and pred == y and not rejected) or (y >= K and rejected).
    * ``known_acc``: mean over shared classes present of the per-class rate of
      ``pred == y and not rejected``.
    * ``unknown_recall``: fraction of U rejected (nan if U is empty).
    * ``known_rejected``: fraction of S rejected (nan if S is empty): the rule's
      false-rejection rate on known galaxies, whatever their argmax.
    * ``h_score``: harmonic mean of known_acc and unknown_recall (nan if U empty).
    * ``rejected_frac``: fraction of all N samples rejected.
    * ``n_shared``, ``n_unknown``, ``n_source_private``: counts (as floats).

    Metrics over an empty set are nan.
    """
    y = to_numpy(y_true).astype(np.int64).ravel()
    p = to_numpy(pred).astype(np.int64).ravel()
    r = to_numpy(rejected).astype(bool).ravel()
    if not (y.shape == p.shape == r.shape):
        raise ValueError(f"shape mismatch: y {y.shape}, pred {p.shape}, rejected {r.shape}")
    shared_ids = np.asarray(sorted({int(c) for c in shared}), dtype=np.int64)
    if np.any(shared_ids >= K) or np.any(shared_ids < 0):
        raise ValueError(f"shared ids must lie in [0, K={K}): {shared_ids.tolist()}")

    in_shared = np.isin(y, shared_ids)
    is_unknown = y >= K
    source_private = (y < K) & ~in_shared

    closed_ok = p == y
    open_ok = closed_ok & ~r  # a known sample counts only if also accepted

    present = [c for c in shared_ids if np.any(y == c)]
    closed_per_class = np.array([closed_ok[y == c].mean() for c in present])
    open_per_class = np.array([open_ok[y == c].mean() for c in present])

    evaluated = in_shared | is_unknown  # source-private samples excluded
    correct_wr = np.where(is_unknown, r, open_ok)

    known_acc = _mean_or_nan(open_per_class)
    unknown_recall = _mean_or_nan(r[is_unknown].astype(np.float64))
    return {
        "acc_shared": _mean_or_nan(closed_ok[in_shared].astype(np.float64)),
        "mean_class_acc_shared": _mean_or_nan(closed_per_class),
        "acc_with_rejection": _mean_or_nan(correct_wr[evaluated].astype(np.float64)),
        "known_acc": known_acc,
        "unknown_recall": unknown_recall,
        "known_rejected": _mean_or_nan(r[in_shared].astype(np.float64)),
        "h_score": h_score(known_acc, unknown_recall),
        "rejected_frac": _mean_or_nan(r.astype(np.float64)),
        "n_shared": float(in_shared.sum()),
        "n_unknown": float(is_unknown.sum()),
        "n_source_private": float(source_private.sum()),
    }


def auroc_unknown(y_true: Any, scores: Any, K: int) -> float:
    """AUROC of the anomaly score for unknown (y >= K, positive) vs known (y < K).

    y_true, scores: (N,). nan if only one group is present or any score is not finite.
    """
    y = to_numpy(y_true).astype(np.int64).ravel()
    s = to_numpy(scores, np.float64).ravel()
    positive = y >= K
    if s.size == 0 or not np.all(np.isfinite(s)) or positive.all() or not positive.any():
        return NAN
    return float(roc_auc_score(positive.astype(int), s))


def confusion(
    y_true: Any, pred: Any, rejected: Any, K: int, class_names: Sequence[str]
) -> dict[str, Any]:
    """JSON-serialisable confusion matrix with an "unknown" column.

    Rows: all ``class_names`` in order (C rows, including classes with no sample).
    Columns: the K known class names followed by "unknown" (K + 1 columns);
    a rejected sample goes to column K whatever its argmax.
    Returns ``{"matrix": list[list[int]] (C, K+1), "rows": [...], "cols": [...]}``.
    """
    y = to_numpy(y_true).astype(np.int64).ravel()
    p = to_numpy(pred).astype(np.int64).ravel()
    r = to_numpy(rejected).astype(bool).ravel()
    n_rows = len(class_names)
    if np.any((y < 0) | (y >= n_rows)):
        raise ValueError("labels must index class_names")
    if np.any((p < 0) | (p >= K)):
        raise ValueError(f"predictions must lie in [0, K={K})")
    col = np.where(r, K, p)
    mat = np.zeros((n_rows, K + 1), dtype=np.int64)
    np.add.at(mat, (y, col), 1)
    return {
        "matrix": mat.tolist(),
        "rows": [str(c) for c in class_names],
        "cols": [str(c) for c in class_names[:K]] + ["unknown"],
    }


def cluster_rejected(
    features: Any, y_true: Any, rejected: Any, n_clusters: int, seed: int = 0
) -> dict[str, float]:
    """Cluster the rejected samples and measure how well clusters match true classes.

    KMeans (k = min(n_clusters, n_rejected)) on L2-normalised features (N, D) of
    the rejected samples. ``purity = sum_clusters max_class count / n_rejected``;
    ``nmi`` = normalized mutual information with the true labels.
    Returns purity, nmi, n_rejected, n_clusters (floats); purity and nmi are nan
    with fewer than 2 rejected samples.
    """
    f = l2_normalize(features)
    y = to_numpy(y_true).astype(np.int64).ravel()
    r = to_numpy(rejected).astype(bool).ravel()
    fr, yr = f[r], y[r]
    n = int(r.sum())
    k = int(min(max(int(n_clusters), 1), n))
    if n < 2:
        return {"purity": NAN, "nmi": NAN, "n_rejected": float(n), "n_clusters": float(k)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points -> fewer distinct clusters
        assign = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(fr)
    majority = sum(np.bincount(yr[assign == c]).max() for c in np.unique(assign))
    return {
        "purity": float(majority / n),
        "nmi": float(normalized_mutual_info_score(yr, assign)),
        "n_rejected": float(n),
        "n_clusters": float(k),
    }


def accuracy_by_bin(values: Any, correct: Any, edges: Any) -> list[dict[str, float]]:
    """Accuracy within bins of a scalar (e.g. r magnitude).

    Bins are ``[edges[i], edges[i+1])``, the last one closed on the right;
    non-finite values and values outside the edges are ignored.
    Returns one dict per bin: lo, hi, n, acc (nan when n = 0).
    """
    v = to_numpy(values, np.float64).ravel()
    c = to_numpy(correct).astype(bool).ravel()
    e = to_numpy(edges, np.float64).ravel()
    out: list[dict[str, float]] = []
    for i in range(len(e) - 1):
        lo, hi = float(e[i]), float(e[i + 1])
        last = i == len(e) - 2
        m = (v >= lo) & ((v <= hi) if last else (v < hi))
        n = int(m.sum())
        out.append({"lo": lo, "hi": hi, "n": n, "acc": float(c[m].mean()) if n else NAN})
    return out
