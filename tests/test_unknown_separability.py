"""bench/unknown_separability.py: its radial profiles and its two scores on data whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "unknown_separability", Path(__file__).resolve().parents[1] / "bench" / "unknown_separability.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_profile_is_the_ring_average_and_its_shape_sums_to_one():
    h = 16
    yy, xx = np.mgrid[:h, :h]
    ring = np.hypot(yy - (h - 1) / 2, xx - (h - 1) / 2).astype(int)
    flux = np.stack([np.exp(-ring / 3.0), 2 * np.exp(-ring / 3.0)])[None]  # (1, 2 bands, H, W)
    feats = bench.profile_features(flux)
    n_rings = h // 2
    assert feats.shape == (1, 2 * 2 * n_rings)
    profile = np.exp(-np.arange(n_rings) / 3.0)
    np.testing.assert_allclose(feats[0, :n_rings], np.arcsinh(10 * profile))
    np.testing.assert_allclose(feats[0, n_rings : 2 * n_rings], np.arcsinh(20 * profile))
    shapes = feats[0, 2 * n_rings :].reshape(2, n_rings)
    np.testing.assert_allclose(shapes.sum(1), 1.0)
    np.testing.assert_allclose(shapes[0], shapes[1])  # the same shape at twice the flux


def test_both_scores_find_a_class_that_differs_and_not_one_that_does_not():
    rng = np.random.default_rng(0)
    known = rng.normal(size=(600, 4))
    y = np.r_[np.zeros(300, int), np.ones(300, int), np.full(100, 2), np.full(100, 3)]
    x = np.r_[rng.normal(size=(600, 4)), rng.normal(size=(100, 4)) + 3, rng.normal(size=(100, 4))]
    names = ["a", "b", "far", "alike"]
    lf = bench.aurocs(y, bench.label_free_score(known, x), 2, names)
    sup = bench.supervised_aurocs(x, y, 2, names)
    for scores in (lf, sup):
        assert scores["far"] > 0.95
        assert scores["alike"] == pytest.approx(0.5, abs=0.1)
        assert 0.6 < scores["all"] < 0.9  # half the unknowns are found
