"""The vote tree, the Dirichlet-multinomial loss and Ye et al.'s spherical K-means pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import dirichlet_multinomial

from uda_core.methods.sphkmeans import pseudo_labels, spherical_kmeans
from uda_core.votes import (GZ_DECALS, Question, VoteTree, class_tree, dirichlet_entropy, dirichlet_multinomial_nll,
                            expected_fractions, tree_from_dict)


def _tree_counts(rng: np.random.Generator, n: int, tree: VoteTree = GZ_DECALS) -> np.ndarray:
    """Vote counts that follow the tree: a question's voters are those who gave its parent answer."""
    counts = np.zeros((n, tree.num_answers), dtype=np.int64)
    for q, (s, parent) in enumerate(zip(tree.slices, tree.parent_answer)):
        voters = rng.integers(5, 40, n) if parent is None else counts[:, parent]
        counts[:, s] = rng.multinomial(voters, rng.dirichlet(np.ones(s.stop - s.start), n))
    return counts


def test_gz_decals_tree_is_the_published_one():
    assert len(GZ_DECALS.questions) == 10 and GZ_DECALS.num_answers == 34
    assert GZ_DECALS.columns[:3] == ["smooth-or-featured_smooth", "smooth-or-featured_featured-or-disk",
                                     "smooth-or-featured_artifact"]
    parents = dict(zip((q.name for q in GZ_DECALS.questions), GZ_DECALS.parent_answer))
    assert parents["merging"] is None and parents["smooth-or-featured"] is None
    assert GZ_DECALS.columns[parents["how-rounded"]] == "smooth-or-featured_smooth"
    assert GZ_DECALS.columns[parents["spiral-arm-count"]] == "has-spiral-arms_yes"
    assert tree_from_dict(GZ_DECALS.to_dict()) == GZ_DECALS
    with pytest.raises(ValueError, match="not an earlier question"):
        VoteTree("bad", (Question("b", ("x",), ("a", "y")), Question("a", ("y", "z"))))


def test_loss_matches_scipy_dirichlet_multinomial():
    rng = np.random.default_rng(0)
    counts = _tree_counts(rng, 64)
    alpha = rng.uniform(1.0, 30.0, counts.shape)
    ours = dirichlet_multinomial_nll(torch.tensor(alpha), torch.tensor(counts), GZ_DECALS).double().numpy()
    ref = np.zeros(len(counts))
    for s in GZ_DECALS.slices:
        for i in range(len(counts)):
            n = counts[i, s].sum()
            if n > 0:  # an unasked question contributes nothing
                ref[i] -= dirichlet_multinomial.logpmf(counts[i, s], alpha[i, s], n)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-4)


def test_an_unasked_question_adds_exactly_zero_and_no_gradient():
    rng = np.random.default_rng(1)
    counts = torch.tensor(_tree_counts(rng, 8), dtype=torch.float32)
    spiral = GZ_DECALS.slices[[q.name for q in GZ_DECALS.questions].index("spiral-winding")]
    counts[:, spiral] = 0
    alpha = torch.tensor(rng.uniform(1.0, 50.0, counts.shape), dtype=torch.float32, requires_grad=True)
    loss = dirichlet_multinomial_nll(alpha, counts, GZ_DECALS)
    loss.sum().backward()
    assert torch.all(alpha.grad[:, spiral] == 0)
    alpha2 = alpha.detach().clone()
    alpha2[:, spiral] = 99.0  # whatever the head says about an unasked question, the loss is the same
    assert torch.equal(dirichlet_multinomial_nll(alpha2, counts, GZ_DECALS), loss.detach())
    one_q = VoteTree("one", (Question("q", ("a", "b")),))
    zero = dirichlet_multinomial_nll(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2), one_q)
    assert zero.item() == 0.0


def test_fractions_and_entropy():
    tree = class_tree(["a", "b", "c"])
    alpha = np.array([[2.0, 1.0, 1.0], [50.0, 50.0, 50.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(expected_fractions(alpha, tree)[0], [0.5, 0.25, 0.25])
    h = dirichlet_entropy(alpha, tree)[:, 0]
    # The flat Dirichlet on the 2-simplex has entropy -ln 2 (density 2); a concentrated one is lower.
    assert h[2] == pytest.approx(-np.log(2.0)) and h[1] < h[0] < h[2]


def test_spherical_kmeans_assigns_per_question_and_finds_the_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    truth = torch.randint(0, 4, (400,), generator=g)
    x = F.normalize(centres[truth] + 0.05 * torch.randn(400, 8, generator=g), dim=1)
    tree = VoteTree("two", (Question("q1", ("a", "b")), Question("q2", ("c", "d"))))
    owner = torch.arange(4)
    init = F.normalize(centres + 0.3 * torch.randn(4, 8, generator=g), dim=1)
    c, assign = spherical_kmeans(x, init, owner, tree)
    assert assign.shape == (400, 2)
    assert torch.all(assign[:, 0] < 2) and torch.all(assign[:, 1] >= 2)  # one cluster per question
    on_q1 = truth < 2  # galaxies near a q1 centroid join it in q1
    assert torch.equal(assign[on_q1, 0], truth[on_q1])
    # Each centroid is the normalised mean of its members (every galaxy is a member once per question).
    for k in range(4):
        members = x[(assign == k).any(1)]
        assert torch.allclose(c[k], F.normalize(members.mean(0), dim=0), atol=1e-5)


def test_pseudo_labels_keep_the_confident_and_follow_the_tree():
    tree = VoteTree("t", (Question("q1", ("a", "b")), Question("q2", ("c", "d"), ("q1", "b"))))
    centroids = torch.eye(4)
    owner = torch.arange(4)
    # Ten galaxies near answer a (decreasing similarity), ten near b; all near c in q2.
    sims = torch.linspace(0.99, 0.75, 10)
    x_a = F.normalize(torch.stack([sims, (1 - sims**2).sqrt(), torch.zeros(10), torch.zeros(10)], 1), dim=1)
    x_b = x_a[:, [1, 0, 2, 3]]
    x = F.normalize(torch.cat([x_a, x_b]) + torch.tensor([0, 0, 0.3, 0.0]), dim=1)
    assign = torch.stack([(x[:, :2]).argmax(1), 2 + (x[:, 2:]).argmax(1)], 1)
    labels = pseudo_labels(x, centroids, assign, owner, tree, confidence_frac=0.3, threshold=-1.0, tree_filter=False)
    kept_a = torch.nonzero(labels[:10, 0] == 0).flatten()
    assert kept_a.tolist() == [0, 1, 2]  # the 30% most similar members of cluster a
    assert (labels[:, 0] >= 0).sum() == 6
    strict = pseudo_labels(x, centroids, assign, owner, tree, confidence_frac=1.0, threshold=0.9, tree_filter=False)
    assert 0 < (strict[:, 0] >= 0).sum() < 20  # the threshold drops the less similar
    tree_kept = pseudo_labels(x, centroids, assign, owner, tree, confidence_frac=1.0, threshold=-1.0, tree_filter=True)
    # q2 is asked after q1 = b: galaxies labelled a in q1 lose their q2 label.
    assert torch.all(tree_kept[:10, 1] == -1) and torch.all(tree_kept[10:, 1] >= 0)


def test_a_vote_head_needs_source_votes(tiny_config):
    from uda_core.errors import ConfigError
    from uda_core.train import check_target_label_use

    cfg = tiny_config(model={"vote_head": True})
    with pytest.raises(ConfigError, match="model.vote_head: data/x has no source vote counts"):
        check_target_label_use(cfg, {"target_labels": "simulated"}, "data/x")
    check_target_label_use(cfg, {"votes": {"domains": ["source"]}}, "data/x")


def test_sphkmeans_adapts_with_the_classifier_frozen(tiny_config, tiny_folder, tmp_path):
    """Source phase, then adaptation: the class and answer prototypes stop moving, the features do not, and
    pseudo-labels exist for some target galaxies in every re-clustering."""
    from uda_core.train import CHECKPOINT_FILE, train

    from uda_core.config import build_config

    raw = tiny_config("sphkmeans", model={"vote_head": True, "domain_bn": True},
                      train={"steps": 6, "eval_every": 3, "keep_checkpoints": 5}).model_dump()
    raw["method"]["params"] = {"warmup_frac": 0.5, "recluster_every": 1, "threshold_start": 0.0, "confidence_frac": 0.5}
    cfg = build_config(raw)
    last = train(cfg, lambda *a: None, tmp_path)
    assert last.metrics["train/proto_ce"] > 0 and "train/votes" in last.metrics
    states = [torch.load(tmp_path / "checkpoints" / f"step_{s:07d}" / CHECKPOINT_FILE,
                         weights_only=True) for s in (3, 6)]
    for key in ("prototypes", "answer_prototypes"):
        assert torch.equal(states[0]["model"][key], states[1]["model"][key]), key
    assert not torch.equal(states[0]["model"]["embed.weight"], states[1]["model"]["embed.weight"])
    method = states[1]["method"]
    assert int(method["rounds"]) == 3  # steps 3, 4 and 5 re-clustered
    assert method["labels"].shape[1] == 10 and (method["labels"] >= 0).any()


@pytest.mark.parametrize("votes, message", [
    ({"tree": {"name": "x"}, "domains": ["source"]}, "manifest.json: votes: vote tree: cannot read"),
    ({"tree": GZ_DECALS.to_dict(), "domains": "source"}, "manifest.json: votes: domains must be a list"),
    ({"tree": GZ_DECALS.to_dict(), "domains": ["source"]}, "vote counts must be numbers"),
])
def test_a_bad_vote_manifest_or_column_is_one_clear_error(votes, message, tmp_path):
    import pandas as pd

    from uda_core.data.dataset import vote_setup
    from uda_core.errors import DataError

    cat = pd.DataFrame({"domain": ["source"], **{c: ["many"] for c in GZ_DECALS.columns}})
    with pytest.raises(DataError, match=message):
        vote_setup({"votes": votes}, cat, tmp_path)
