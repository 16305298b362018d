from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uda_core.evaluation import (
    HIGHER_IS_BETTER,
    VALIDATORS,
    information_maximization,
    label_free_scores,
    mean_entropy,
    snd,
)


def _H(p):
    return -sum(q * math.log(q + 1e-5) for q in p)


def _snd_naive(p, tau):
    n = len(p)
    u = [row / math.sqrt(sum(v * v for v in row)) for row in p]
    total = 0.0
    for i in range(n):
        m = [(-1.0 / tau) if i == j else float(np.dot(u[i], u[j])) / tau for j in range(n)]
        e = [math.exp(v - max(m)) for v in m]
        total += _H([v / sum(e) for v in e])
    return total / n


def test_snd_matches_naive_double_loop():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4) * 0.5, size=25)
    assert snd(p, tau=0.05) == pytest.approx(_snd_naive(p, 0.05), rel=1e-10)
    assert snd(p, tau=0.5) == pytest.approx(_snd_naive(p, 0.5), rel=1e-10)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_snd_chunked_equals_unchunked(chunk):
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=50)
    assert snd(p, chunk=chunk) == pytest.approx(snd(p, chunk=10_000), rel=1e-12)


def test_snd_subsampling_caps_work_and_is_close():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(6), size=5000)  # homogeneous input
    sub = snd(p, max_samples=500, seed=0)
    assert math.isfinite(sub)
    # exactly max_samples rows drawn by the seeded RNG are used
    idx = np.random.default_rng(0).choice(5000, size=500, replace=False)
    assert sub == pytest.approx(snd(p[idx], max_samples=500), rel=1e-12)
    assert snd(p, max_samples=500, seed=0) == sub
    # SND depends on n (its maximum is log(n - 1)), so "full value" is the SND of an
    # independent, unsubsampled 500-row draw from the same distribution
    full = snd(rng.dirichlet(np.ones(6), size=500), max_samples=500)
    assert sub == pytest.approx(full, rel=0.02)
    assert snd(p, max_samples=500, seed=1) == pytest.approx(sub, rel=0.02)
    assert math.isnan(snd(p[:1]))


def test_entropy_and_im_match_naive():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), size=30)
    ents = [_H(row) for row in p]
    assert mean_entropy(p) == pytest.approx(np.mean(ents), rel=1e-12)
    marg = [sum(row[c] for row in p) / len(p) for c in range(4)]
    assert information_maximization(p) == pytest.approx(_H(marg) - np.mean(ents), rel=1e-12)
    assert mean_entropy(torch.tensor(p)) == pytest.approx(np.mean(ents), rel=1e-12)


def test_confident_vs_uniform_order():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 200)
    confident = np.full((200, 4), 0.01)
    confident[np.arange(200), labels] = 0.97
    uniform = np.full((200, 4), 0.25)
    sc, su = label_free_scores(confident), label_free_scores(uniform)
    assert set(sc) == {"snd", "entropy", "im"} == set(VALIDATORS) == set(HIGHER_IS_BETTER)
    assert sc["entropy"] < su["entropy"]
    assert sc["im"] > su["im"]
    assert su["im"] == pytest.approx(0.0, abs=1e-9)
    # collapsed (identical) predictions saturate SND at its maximum log(n - 1)
    assert su["snd"] == pytest.approx(math.log(199), rel=1e-3)
    assert sc["snd"] < su["snd"]
    for name in ("entropy", "im"):
        assert (sc[name] > su[name]) == HIGHER_IS_BETTER[name]
