"""Losses against short naive references, and the entropy-separation gradient guarantee."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from uda_core.losses import entropy, entropy_separation, es_threshold_and_margin, neighbourhood_clustering


def _naive_entropy(row):
    p = torch.softmax(row.double(), 0)
    return -sum(pk * math.log(pk + 1e-5) for pk in p.tolist())


def test_entropy_matches_naive():
    x = torch.randn(5, 7)
    ref = torch.tensor([_naive_entropy(r) for r in x], dtype=torch.float64)
    torch.testing.assert_close(entropy(x).double(), ref, rtol=1e-5, atol=1e-6)


def test_neighbourhood_clustering_matches_naive_loop():
    torch.manual_seed(0)
    T, B, N, K, D = 0.05, 4, 10, 3, 6
    feats = torch.nn.functional.normalize(torch.randn(B, D), dim=1)
    memory = torch.nn.functional.normalize(torch.randn(N, D), dim=1)
    logits = torch.randn(B, K) * 5
    index = torch.tensor([2, 5, 7, 9])
    total = 0.0
    for i in range(B):
        row = list(logits[i].tolist())
        for j in range(N):
            row.append(-1 / T if j in index.tolist() else float(feats[i] @ memory[j]) / T)
        for k in range(B):
            row.append(-1 / T if k == i else float(feats[i] @ feats[k]) / T)
        total += _naive_entropy(torch.tensor(row))
    got = neighbourhood_clustering(logits, feats, memory, index, T)
    assert got.item() == pytest.approx(total / B, rel=1e-4)


def test_entropy_separation_gradient_only_outside_the_band():
    rho, m = 0.5, 0.3
    near = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)  # H = 0.97, |H - rho| = 0.47 > m: gradient
    entropy_separation(near, rho, m).backward()
    assert near.grad.abs().sum() > 0
    inside = torch.tensor([[1.8, 0.0, 0.0]], requires_grad=True)
    h = entropy(inside).item()
    assert abs(h - 0.55) < 0.3  # |H - rho| < m: constant loss
    entropy_separation(inside, 0.55, 0.3).backward()
    assert inside.grad.abs().sum() == 0


def test_reference_defaults_give_es_no_gradient_for_k2_but_parametrisation_does():
    # DeepAstroUDA ships rho = 0.263, m = 0.5 for K = 2: max |H - rho| = 0.43 < 0.5, so ES has no gradient at all.
    for logits in ([[4.0, -4.0]], [[0.1, 0.0]], [[1.0, 0.0]]):
        x = torch.tensor(logits, requires_grad=True)
        entropy_separation(x, 0.263, 0.5).backward()
        assert x.grad.abs().sum() == 0
    for K, c_rho, c_m in itertools.product([2, 3, 6, 9], [0.2, 0.38, 0.5, 0.8], [0.05, 0.5, 0.9]):
        rho, m = es_threshold_and_margin(K, c_rho, c_m)
        assert max(rho, math.log(K) - rho) > m
    # A confident (H ~ 0) sample for K = 2 with the default parametrisation gets a gradient.
    rho, m = es_threshold_and_margin(2, 0.5, 0.5)
    x = torch.tensor([[4.0, -4.0]], requires_grad=True)
    entropy_separation(x, rho, m).backward()
    assert x.grad.abs().sum() > 0
