from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from uda_core.evaluation import (
    accuracy_by_bin,
    anomaly_scores,
    auroc_unknown,
    cluster_rejected,
    confusion,
    entropy,
    gmm_threshold,
    h_score,
    knn_distance,
    open_set_metrics,
    plot_accuracy_by_bin,
    plot_confusion,
    plot_embedding,
    softmax,
)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_entropy_matches_naive_loop():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=7)
    expected = [-sum(pc * math.log(pc + 1e-5) for pc in row) for row in p]
    np.testing.assert_allclose(entropy(p), expected, rtol=1e-12)
    np.testing.assert_allclose(entropy(torch.tensor(p)), expected, rtol=1e-12)


def test_softmax_stable_and_normalised():
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-12)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(p[1], e / e.sum())


def test_anomaly_scores_match_naive_loops():
    rng = np.random.default_rng(1)
    n, m, d, k_cls, temp = 9, 13, 4, 3, 0.05
    feats = rng.normal(size=(n, d))
    protos = rng.normal(size=(k_cls, d))
    src = rng.normal(size=(m, d))
    logits = rng.normal(size=(n, k_cls)) * 5
    out = anomaly_scores(logits, feats, protos, src, temperature=temp, k=3)
    assert set(out) == {"entropy", "neg_max_softmax", "energy",
                        "prototype_distance", "knn_distance"}
    for i in range(n):
        e = [math.exp(v) for v in logits[i]]
        p = [v / sum(e) for v in e]
        assert out["entropy"][i] == pytest.approx(-sum(q * math.log(q + 1e-5) for q in p))
        assert out["neg_max_softmax"][i] == pytest.approx(-max(p))
        assert out["energy"][i] == pytest.approx(-temp * math.log(sum(e)))
        assert out["prototype_distance"][i] == pytest.approx(
            1 - max(_cos(feats[i], w) for w in protos))
        dists = sorted(1 - _cos(feats[i], s) for s in src)
        assert out["knn_distance"][i] == pytest.approx(np.mean(dists[:3]))


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_knn_distance_chunked_matches_bruteforce(chunk):
    rng = np.random.default_rng(2)
    feats, src = rng.normal(size=(11, 3)), rng.normal(size=(17, 3))
    brute = [np.mean(sorted(1 - _cos(f, s) for s in src)[:5]) for f in feats]
    np.testing.assert_allclose(knn_distance(feats, src, k=5, chunk=chunk), brute, atol=1e-12)
    # k larger than the source set is clipped to M
    all_mean = [np.mean([1 - _cos(f, s) for s in src]) for f in feats]
    np.testing.assert_allclose(knn_distance(feats, src, k=100, chunk=chunk), all_mean, atol=1e-12)


def test_gmm_threshold_separates_clusters():
    rng = np.random.default_rng(3)
    s = np.concatenate([rng.normal(0.0, 0.3, 400), rng.normal(5.0, 0.3, 100)])
    t = gmm_threshold(s, seed=0)
    assert 1.0 < t < 4.0
    assert np.all(s[:400] < t) and np.all(s[400:] > t)


def test_gmm_threshold_fallbacks():
    assert gmm_threshold(np.full(50, 2.0)) == pytest.approx(2.0)  # mean + 2*0
    few = np.array([1.0, 2.0, 3.0, np.nan, np.inf])
    finite = few[:3]
    assert gmm_threshold(few) == pytest.approx(finite.mean() + 2 * finite.std())
    assert math.isnan(gmm_threshold(np.array([np.nan, np.nan])))


def test_h_score():
    assert h_score(0.0, 0.0) == 0.0
    assert h_score(0.5, 1.0) == pytest.approx(2 / 3)
    assert math.isnan(h_score(0.5, float("nan")))


# K=3 known classes (0,1,2), shared=[0,1]; class 2 is source-private; 3,4 unknown
Y = np.array([0, 0, 0, 1, 1, 3, 3, 4])
P = np.array([0, 0, 1, 1, 0, 2, 0, 1])
R = np.array([0, 1, 0, 0, 0, 1, 0, 1], dtype=bool)


def test_open_set_metrics_hand_example():
    m = open_set_metrics(Y, P, R, K=3, shared=[0, 1])
    assert m["acc_shared"] == pytest.approx(3 / 5)
    assert m["mean_class_acc_shared"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["known_acc"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["unknown_recall"] == pytest.approx(2 / 3)
    assert m["h_score"] == pytest.approx(20 / 39)
    assert m["acc_with_rejection"] == pytest.approx(4 / 8)
    assert m["rejected_frac"] == pytest.approx(3 / 8)
    assert m["n_shared"] == 5 and m["n_unknown"] == 3 and m["n_source_private"] == 0


def test_source_private_sample_does_not_change_shared_metrics():
    base = open_set_metrics(Y, P, R, K=3, shared=[0, 1])
    # a correctly classified, accepted source-private sample and a wrong one
    y2 = np.append(Y, [2, 2])
    p2 = np.append(P, [2, 0])
    r2 = np.append(R, [False, False])
    m = open_set_metrics(torch.tensor(y2), p2, r2, K=3, shared=[0, 1])
    for key in ["acc_shared", "mean_class_acc_shared", "known_acc", "unknown_recall",
                "h_score", "acc_with_rejection"]:
        assert m[key] == pytest.approx(base[key]), key
    assert m["n_source_private"] == 2
    assert m["rejected_frac"] == pytest.approx(3 / 10)  # label-free: counts everything


def test_known_rejected_matches_naive_loop():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 5, 300)  # K=3, shared [0, 1]: 2 is source-private, 3 and 4 unknown
    p, r = rng.integers(0, 3, 300), rng.random(300) < 0.4
    shared_rows = [i for i in range(len(y)) if y[i] in (0, 1)]
    expected = sum(bool(r[i]) for i in shared_rows) / len(shared_rows)
    m = open_set_metrics(y, p, r, K=3, shared=[0, 1])
    assert m["known_rejected"] == pytest.approx(expected)
    assert open_set_metrics(Y, P, R, K=3, shared=[0, 1])["known_rejected"] == pytest.approx(1 / 5)
    assert math.isnan(open_set_metrics([3, 4], [0, 1], [True, False], K=3, shared=[0, 1])["known_rejected"])


def test_open_set_metrics_no_unknowns():
    m = open_set_metrics([0, 1, 1], [0, 1, 0], [False, False, True], K=2, shared=[0, 1])
    assert math.isnan(m["unknown_recall"]) and math.isnan(m["h_score"])
    assert m["known_acc"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["acc_shared"] == pytest.approx(2 / 3)


def test_auroc_unknown():
    y = np.array([0, 1, 2, 3, 3])  # K=3: last two unknown
    assert auroc_unknown(y, [0.1, 0.2, 0.3, 0.8, 0.9], K=3) == pytest.approx(1.0)
    assert auroc_unknown(y, [0.9, 0.8, 0.7, 0.1, 0.2], K=3) == pytest.approx(0.0)
    assert math.isnan(auroc_unknown([0, 1], [0.1, 0.2], K=3))
    assert math.isnan(auroc_unknown(y, [0.1, np.nan, 0.3, 0.8, 0.9], K=3))


def test_confusion_shape_and_sums():
    names = ["a", "b", "c", "u1", "u2"]
    c = confusion(Y, P, R, K=3, class_names=names)
    mat = np.array(c["matrix"])
    assert mat.shape == (5, 4)
    assert c["rows"] == names and c["cols"] == ["a", "b", "c", "unknown"]
    assert mat.sum() == len(Y)
    np.testing.assert_array_equal(mat.sum(axis=1), [3, 2, 0, 2, 1])
    assert mat[:, 3].sum() == R.sum()
    assert mat[0].tolist() == [1, 1, 0, 1] and mat[3].tolist() == [1, 0, 0, 1]
    json.dumps(c)


def test_cluster_rejected_separable_blobs():
    rng = np.random.default_rng(4)
    centres = np.eye(3) * 10
    feats = np.concatenate([c + rng.normal(0, 0.1, (20, 3)) for c in centres])
    y = np.repeat([5, 6, 7], 20)
    rej = np.ones(60, dtype=bool)
    rej[::7] = False
    out = cluster_rejected(feats, y, rej, n_clusters=3)
    assert out["purity"] == pytest.approx(1.0)
    assert out["nmi"] == pytest.approx(1.0)
    assert out["n_rejected"] == rej.sum() and out["n_clusters"] == 3
    one = np.zeros(60, dtype=bool)
    one[0] = True
    small = cluster_rejected(feats, y, one, n_clusters=3)
    assert math.isnan(small["purity"]) and math.isnan(small["nmi"])
    assert small["n_rejected"] == 1


def test_accuracy_by_bin():
    vals = np.array([14.0, 15.0, 15.5, 16.0, 17.0, np.nan, 30.0])
    corr = np.array([1, 0, 1, 1, 0, 1, 1], dtype=bool)
    bins = accuracy_by_bin(vals, corr, [14, 15, 16, 17, 18, 19])
    assert [b["n"] for b in bins] == [1, 2, 1, 1, 0]  # nan and 30 are dropped
    assert [b["acc"] for b in bins[:4]] == [1.0, 0.5, 1.0, 0.0]
    assert math.isnan(bins[4]["acc"])
    assert (bins[1]["lo"], bins[1]["hi"]) == (15.0, 16.0)
    # last bin is closed on the right
    assert accuracy_by_bin([18.0], [True], [14, 18])[0]["n"] == 1


def _assert_png(path):
    data = path.read_bytes()
    assert path.exists() and len(data) > 1024
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_valid_pngs(tmp_path):
    names = ["elliptical", "spiral", "barred_spiral", "edge_on", "merger", "ring",
             "lens", "artifact"]
    rng = np.random.default_rng(5)
    y = rng.integers(0, 8, 200)
    pred = rng.integers(0, 6, 200)
    rej = rng.random(200) < 0.3
    conf = confusion(y, pred, rej, K=6, class_names=names)
    p1 = plot_confusion(conf, tmp_path / "conf.png", "universal")
    src, tgt = rng.normal(size=(80, 16)), rng.normal(size=(60, 16))
    unk = rng.random(60) < 0.3
    p2 = plot_embedding(src, tgt, unk, tmp_path / "emb.png", method="pca", max_points=50)
    p3 = plot_embedding(src, tgt, unk, tmp_path / "tsne.png", method="tsne", max_points=30)
    bins = accuracy_by_bin(rng.uniform(14, 18, 100), rng.random(100) < 0.7, [14, 15, 16, 17, 18])
    p4 = plot_accuracy_by_bin(bins, tmp_path / "acc.png", "r magnitude")
    for p in (p1, p2, p3, p4):
        _assert_png(p)


def test_plot_confusion_leaves_out_empty_rows(tmp_path):
    import copy

    import matplotlib.pyplot as plt

    from uda_core.evaluation.plots import _confusion_figure

    names = ["elliptical", "spiral", "merger", "ring", "lens"]
    # target split of a universal task: no sample of the source-private "merger", none of "ring" either
    conf = confusion([0, 0, 1, 4, 4], [0, 2, 1, 0, 2], [False, False, False, True, False], K=4, class_names=names)
    before = copy.deepcopy(conf)
    fig = _confusion_figure(conf, "target_test")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["elliptical (n=2)", "spiral (n=1)", "lens (n=2)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["elliptical", "spiral", "merger", "ring", "unknown"]
    assert any("no samples" in t.get_text() and "merger, ring" in t.get_text() for t in ax.texts)
    plt.close(fig)
    assert conf == before  # the logged JSON is not touched
    empty = confusion(np.zeros(0), np.zeros(0), np.zeros(0), K=4, class_names=names)
    fig = _confusion_figure(empty, "nothing")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == []
    plt.close(fig)
    _assert_png(plot_confusion(empty, tmp_path / "empty.png"))
