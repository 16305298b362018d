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
from uda_core.evaluation.validators import augmentation_agreement, combined_score, dev_risk, domain_weights


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
    assert set(sc) == {"snd", "entropy", "im", "bnm"} == set(VALIDATORS)
    assert set(HIGHER_IS_BETTER) == set(VALIDATORS) | {"dev", "devn", "class_ami", "emulated_acc", "estimated_h",
                                                       "estimated_h_floored", "agreement", "combined",
                                                       "combined_unknown"}
    assert sc["entropy"] < su["entropy"]
    assert sc["im"] > su["im"]
    assert su["im"] == pytest.approx(0.0, abs=1e-9)
    # collapsed (identical) predictions saturate SND at its maximum log(n - 1)
    assert su["snd"] == pytest.approx(math.log(199), rel=1e-3)
    assert sc["snd"] < su["snd"]
    for name in ("entropy", "im"):
        assert (sc[name] > su[name]) == HIGHER_IS_BETTER[name]


def _dev_naive(w, loss):
    n = len(w)
    wl = [a * b for a, b in zip(w, loss)]
    mw, mwl = sum(w) / n, sum(wl) / n
    cov = sum((a - mwl) * (b - mw) for a, b in zip(wl, w)) / (n - 1)
    var = sum((b - mw) ** 2 for b in w) / (n - 1)
    eta = -cov / var
    return mwl + eta * mw - eta


def test_dev_matches_naive_formula_and_its_guards():
    rng = np.random.default_rng(5)
    w = rng.lognormal(0.0, 0.7, 200)
    loss = (rng.random(200) < 0.3).astype(float)
    assert dev_risk(w, loss) == pytest.approx(_dev_naive(w, loss), rel=1e-10)
    # the control variate removes the error of mean(w) around 1: scaling all weights does not change the estimate
    # as much as the plain weighted mean (which scales with them)
    assert abs(dev_risk(2 * w, loss) - dev_risk(w, loss)) < abs(np.mean(2 * w * loss) - np.mean(w * loss))
    assert dev_risk(np.ones(50), loss[:50]) == pytest.approx(loss[:50].mean())  # Var(w) = 0: plain mean, not nan
    assert math.isnan(dev_risk([1.0], [0.0]))
    assert math.isnan(dev_risk([1.0, np.inf], [0.0, 1.0]))


def test_domain_weights_find_the_target_like_points_and_stay_bounded():
    rng = np.random.default_rng(6)
    src = rng.normal(0.0, 1.0, (400, 4))
    tgt = rng.normal(0.0, 1.0, (400, 4))
    tgt[:, 0] += 1.5  # the target is shifted along the first feature
    query = np.zeros((3, 4))
    query[:, 0] = [-2.0, 0.75, 3.0]
    w = domain_weights(src, tgt, query, max_weight=50.0)
    assert w[0] < 1.0 < w[2] and w[0] < w[1] < w[2]
    # the logistic density ratio of two unit Gaussians 1.5 apart is exp(1.5 x - 1.125): check it roughly
    assert w[1] == pytest.approx(1.0, abs=0.35)
    # separable domains: weights are clipped, never infinite
    far = domain_weights(src, tgt + 100.0, np.full((2, 4), 100.0), max_weight=10.0)
    assert np.all(np.isfinite(far)) and far.max() <= 10.0 + 1e-9
    with pytest.raises(ValueError, match="at least 10"):
        domain_weights(src[:5], tgt, query)


def test_augmentation_agreement_matches_naive_loop():
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(3), size=40)
    views = rng.dirichlet(np.ones(3), size=(5, 40))
    naive = sum(int(np.argmax(views[v, i]) == np.argmax(p[i])) for v in range(5) for i in range(40)) / 200
    assert augmentation_agreement(p, views) == pytest.approx(naive)
    assert augmentation_agreement(p, np.stack([p] * 3)) == 1.0


def test_combined_is_the_mean_of_three_unit_scores():
    assert combined_score(0.9, 0.5 * math.log(6), 0.6, 6) == pytest.approx((0.9 + 0.5 + 0.6) / 3)
    assert combined_score(1.0, math.log(4), 1.0, 4) == pytest.approx(1.0)
    assert HIGHER_IS_BETTER["combined"] and HIGHER_IS_BETTER["agreement"] and not HIGHER_IS_BETTER["dev"]


def test_combined_unknown_adds_the_floored_h_estimate_as_a_fourth_part():
    from uda_core.evaluation.validators import combined_unknown_score
    assert combined_unknown_score(0.9, 0.5 * math.log(6), 0.6, 0.2, 6) == pytest.approx((0.9 + 0.5 + 0.6 + 0.2) / 4)
    assert math.isnan(combined_unknown_score(0.9, 0.5, 0.6, math.nan, 6))
    assert HIGHER_IS_BETTER["combined_unknown"]


def test_bnm_is_the_normalised_sum_of_singular_values():
    from uda_core.evaluation.validators import batch_nuclear_norm

    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(4), size=40)
    eigen = np.linalg.eigvalsh(p.T @ p)  # singular values of P: square roots of the eigenvalues of P^T P
    assert batch_nuclear_norm(p) == pytest.approx(np.sqrt(np.clip(eigen, 0, None)).sum() / math.sqrt(40 * 4))
    balanced = np.eye(4)[np.arange(40) % 4]  # confident and spread evenly: the maximum, 1
    collapsed = np.eye(4)[np.zeros(40, int)]  # confident, one class: 1 / sqrt(4)
    assert batch_nuclear_norm(balanced) == pytest.approx(1.0)
    assert batch_nuclear_norm(collapsed) == pytest.approx(0.5)
    assert batch_nuclear_norm(np.full((40, 4), 0.25)) == pytest.approx(0.25)  # unsure rows: lower still
    assert VALIDATORS["bnm"] is batch_nuclear_norm and HIGHER_IS_BETTER["bnm"]


def test_class_ami_is_high_when_predictions_follow_the_feature_clusters():
    from sklearn.metrics import adjusted_mutual_info_score

    from uda_core.evaluation.validators import class_ami

    rng = np.random.default_rng(6)
    centres = rng.normal(size=(3, 8)) * 10
    truth = np.repeat(np.arange(3), 50)
    feats = centres[truth] + rng.normal(size=(150, 8))
    assert class_ami(feats, truth, 3) == pytest.approx(1.0)  # three clear clusters, predicted exactly
    shuffled = rng.permutation(truth)
    assert class_ami(feats, shuffled, 3) == pytest.approx(adjusted_mutual_info_score(shuffled, truth), abs=1e-9)
    assert abs(class_ami(feats, shuffled, 3)) < 0.1
    assert math.isnan(class_ami(feats[:2], truth[:2], 3))
    assert HIGHER_IS_BETTER["class_ami"]


def test_devn_is_the_self_normalised_weighted_risk():
    from uda_core.evaluation.validators import dev_normalised_risk

    rng = np.random.default_rng(7)
    w, loss = rng.gamma(2.0, 1.5, 60), rng.random(60)  # weights averaging about 3: a miscalibrated classifier
    assert dev_normalised_risk(w, loss) == pytest.approx(sum(a * b for a, b in zip(w, loss)) / sum(w))
    assert dev_normalised_risk(3 * w, loss) == pytest.approx(dev_normalised_risk(w, loss))  # scale-free
    assert dev_risk(3 * w, loss) != pytest.approx(dev_risk(w, loss))  # unlike DEV
    assert not HIGHER_IS_BETTER["devn"]


def test_estimated_h_score_against_a_hand_count():
    from uda_core.evaluation.validators import estimated_h_score

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    correct = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 0], bool)
    rejected = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 1], bool)  # false rejections on the known reference: 2 of 10
    # known accuracy: class 0: correct and accepted 2/4; class 1: 4/6; mean 7/12
    # recall: target rejects 40%, pi 0.3: (0.40 - 0.7 * 0.2) / 0.3 = 0.8667
    known, recall = (2 / 4 + 4 / 6) / 2, (0.40 - 0.7 * 0.2) / 0.3
    assert estimated_h_score(correct, y, rejected, 0.40, 0.3) == pytest.approx(2 * known * recall / (known + recall))
    assert estimated_h_score(correct, y, rejected, 0.95, 0.3) == pytest.approx(2 * known / (known + 1))  # clipped at 1
    assert estimated_h_score(correct, y, rejected, 0.40, 0.0) == 0.0  # no unknowns found: nothing shows recall
    assert math.isnan(estimated_h_score(correct, y, rejected, 0.40, float("nan")))
    assert HIGHER_IS_BETTER["estimated_h"]
    # floored: a rule rejecting 0.5% of a target whose unknown share is estimated at 0.5%, with no false rejection
    # on the reference, reads full recall; with pi floored at 5%, recall 0.005 / 0.05 = 0.1
    none_rejected = np.zeros(10, bool)
    full = (3 / 4 + 4 / 6) / 2  # nothing rejected: the plain per-class accuracy
    assert estimated_h_score(correct, y, none_rejected, 0.005, 0.005) == pytest.approx(2 * full / (full + 1))
    assert estimated_h_score(correct, y, none_rejected, 0.005, 0.005, min_unknown_frac=0.05) == pytest.approx(
        2 * full * 0.1 / (full + 0.1))
    assert estimated_h_score(correct, y, rejected, 0.40, 0.3, min_unknown_frac=0.05) == pytest.approx(
        2 * known * recall / (known + recall))  # above the floor: unchanged
    # no unknowns found: unfloored that reads recall 0; floored, (0.40 - 0.95 * 0.2) / 0.05 clips to 1
    assert estimated_h_score(correct, y, rejected, 0.40, 0.0, min_unknown_frac=0.05) == pytest.approx(
        2 * known / (known + 1))
    assert HIGHER_IS_BETTER["estimated_h_floored"]
