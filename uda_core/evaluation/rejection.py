"""Label-free thresholds for the unknown-class rule: how many target galaxies to call unknown, without labels.

A two-component mixture fitted to the target's scores splits them in two whether or not there are two groups: on a
unimodal score it rejected 72% of a target holding 15% unknowns. `mpe_threshold` instead estimates the unknown
fraction by mixture-proportion estimation against scores of galaxies known to be of the known classes (held-out
source stamps, emulated as the target survey by the caller: uda_core.evaluate.known_reference), and rejects that
share of the target: a target that scores like the known galaxies gets a fraction near 0, whatever the shape of
its scores.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unknown_fraction", "mpe_threshold", "QUANTILES"]

# Where the bound is read: the known scores' quantiles 0.5-0.95. Below, few unknowns but a noisy ratio; above 0.95,
# the known tail itself is noise. Fixed here, before any measurement on target labels.
QUANTILES = np.linspace(0.5, 0.95, 10)


def unknown_fraction(target: np.ndarray, known: np.ndarray, quantiles: np.ndarray = QUANTILES) -> float:
    """The share pi of `target` scores that are not drawn like `known` ones (higher score = more anomalous).

    Unknowns only add mass at high scores, so for every threshold t: P_target(s <= t) >= (1 - pi) P_known(s <= t),
    i.e. 1 - pi <= P_target(s <= t) / P_known(s <= t). The estimate is the tightest of these bounds over t at the
    known scores' `quantiles` (where P_known(s <= t) is the quantile itself), clipped to [0, 1].
    """
    target = np.asarray(target, np.float64)
    target = target[np.isfinite(target)]
    known = np.asarray(known, np.float64)
    known = known[np.isfinite(known)]
    if not len(target) or not len(known):
        return float("nan")
    t = np.quantile(known, quantiles)
    # P_known(s <= t) as counted, not the nominal quantile: tied scores (a saturated softmax) put more mass at t.
    below_known = np.searchsorted(np.sort(known), t, side="right") / len(known)
    ratio = np.searchsorted(np.sort(target), t, side="right") / len(target) / below_known
    return float(np.clip(1 - ratio.min(), 0.0, 1.0))


def mpe_threshold(target: np.ndarray, known: np.ndarray) -> float:
    """Reject `target` scores above this: the top `unknown_fraction` of them (the highest score, i.e. none, when the
    fraction is 0; nan without finite scores)."""
    pi = unknown_fraction(target, known)
    if not np.isfinite(pi):
        return float("nan")
    return float(np.quantile(np.asarray(target, np.float64)[np.isfinite(target)], 1 - pi))
