"""Label-free model-selection scores on unlabelled target predictions.

Each validator maps target probabilities (N, C) to one float. Whether higher
or lower is better is given in ``HIGHER_IS_BETTER`` and in each docstring.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .metrics import entropy, to_numpy

__all__ = [
    "snd",
    "mean_entropy",
    "information_maximization",
    "VALIDATORS",
    "HIGHER_IS_BETTER",
    "label_free_scores",
]

_EPS = 1e-5  # same eps convention as metrics.entropy


def snd(
    probs: Any,
    tau: float = 0.05,
    max_samples: int = 2000,
    seed: int = 0,
    chunk: int = 1024,
) -> float:
    """Soft neighbourhood density (Saito et al., 2021). Higher is better.

    ``u_i = p_i / ||p_i||``; ``M_ij = u_i . u_j / tau`` with ``M_ii = -1 / tau``;
    ``q_i = softmax_j(M_i)``; ``SND = mean_i -sum_j q_ij log(q_ij + 1e-5)``.

    probs: (N, C). When N > ``max_samples`` a seeded random subset of
    ``max_samples`` rows is used; rows of M are built ``chunk`` at a time, so
    peak memory is O(chunk * n) with n = min(N, max_samples). nan if n < 2.

    Caveats: SND is bounded by log(n - 1), so only compare values computed with
    the same n (same ``max_samples``); it is maximal for fully collapsed
    predictions (all rows identical, e.g. uniform), so pair it with another score.
    """
    p = to_numpy(probs, np.float64)
    n_all = p.shape[0]
    if n_all > max_samples:
        idx = np.random.default_rng(seed).choice(n_all, size=int(max_samples), replace=False)
        p = p[idx]
    n = p.shape[0]
    if n < 2:
        return float("nan")
    u = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    step = max(1, int(chunk))
    total = 0.0
    for start in range(0, n, step):
        stop = min(start + step, n)
        m = u[start:stop] @ u.T / tau  # (chunk, n)
        rows = np.arange(stop - start)
        m[rows, start + rows] = -1.0 / tau  # self-similarity must not dominate
        m -= m.max(axis=1, keepdims=True)
        q = np.exp(m)
        q /= q.sum(axis=1, keepdims=True)
        total += float(entropy(q, eps=_EPS).sum())
    return total / n


def mean_entropy(probs: Any) -> float:
    """Mean prediction entropy ``mean_i H(p_i)`` (nats, DANCE eps). Lower is better."""
    return float(np.mean(entropy(probs, eps=_EPS)))


def information_maximization(probs: Any) -> float:
    """Information maximisation ``H(mean_i p_i) - mean_i H(p_i)``. Higher is better.

    Rewards predictions that are individually confident yet diverse over classes.
    """
    p = to_numpy(probs, np.float64)
    marginal = p.mean(axis=0, keepdims=True)
    return float(entropy(marginal, eps=_EPS)[0] - np.mean(entropy(p, eps=_EPS)))


VALIDATORS: dict[str, Callable[[Any], float]] = {
    "snd": snd,
    "entropy": mean_entropy,
    "im": information_maximization,
}

HIGHER_IS_BETTER: dict[str, bool] = {"snd": True, "entropy": False, "im": True}


def label_free_scores(target_probs: Any, snd_max_samples: int = 2000) -> dict[str, float]:
    """All registered validators on target probabilities (N, C): {"snd", "entropy", "im"}.

    Values are reported raw; use ``HIGHER_IS_BETTER`` to orient them. `snd_max_samples` caps SND's N x N work.
    """
    p = to_numpy(target_probs, np.float64)
    kwargs = {"snd": {"max_samples": snd_max_samples}}
    return {name: float(fn(p, **kwargs.get(name, {}))) for name, fn in VALIDATORS.items()}
