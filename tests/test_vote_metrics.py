"""Per-question Galaxy Zoo vote scores (uda_core.evaluation.vote_metrics) and their part of `evaluate()`."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from uda_core.evaluation import names as N
from uda_core.evaluation.vote_metrics import vote_report
from uda_core.votes import GZ_DECALS, Question, VoteTree

# shape (round, disk) for everyone; arms (yes, no) after shape/disk; count (one, two) after arms/yes;
# merging (none, minor, major) for everyone.
TREE = VoteTree("toy", (
    Question("shape", ("round", "disk")),
    Question("arms", ("yes", "no"), ("shape", "disk")),
    Question("count", ("one", "two"), ("arms", "yes")),
    Question("merging", ("none", "minor", "major")),
))


def _counts(*rows):
    return np.array(rows, dtype=np.float64)


# Columns: round disk | yes no | one two | none minor major
G_ROUND = (18, 2, 0, 0, 0, 0, 20, 0, 0)  # shape round at 0.9; nothing below
G_DISK07 = (6, 14, 12, 2, 10, 2, 20, 0, 0)  # disk at 0.7: passes the 0.5 cut, not 0.8; arms yes 0.857, count one 0.833
G_BADPARENT = (11, 9, 9, 0, 0, 0, 20, 0, 0)  # top answer round (0.55), yet arms yes at 1.0 from the 9 disk voters


def test_parent_answer_condition_excludes_a_galaxy():
    counts = _counts(G_DISK07, G_BADPARENT)
    rep = vote_report(counts, TREE, fractions=_observed(counts), min_votes=5)
    q = {r["question"]: r for r in rep.questions}
    # G_BADPARENT has 9 arms votes (>= 5) and a top arms fraction of 1.0, but its shape's top answer is round.
    assert q["arms"]["n50"] == 1
    assert q["shape"]["n50"] == 2
    assert q["count"]["n50"] == 1  # G_DISK07: shape disk 0.7 and arms yes 0.857 both lead to count
    # The same galaxy with disk on top would count: the exclusion is the parent's doing.
    flipped = _counts(G_DISK07, (9, 11, 9, 0, 0, 0, 20, 0, 0))
    assert vote_report(flipped, TREE, fractions=_observed(flipped), min_votes=5).questions[1]["n50"] == 2


def test_cut_08_excludes_a_07_galaxy_and_its_descendants():
    counts = _counts(G_ROUND, G_DISK07)
    q = {r["question"]: r for r in vote_report(counts, TREE, fractions=_observed(counts), min_votes=10).questions}
    assert (q["shape"]["n50"], q["shape"]["n80"]) == (2, 1)  # G_DISK07's 0.7 only passes 0.5
    # arms (0.857 > 0.8 itself) and count (0.833) fail at 0.8 through their ancestor shape/disk at 0.7.
    assert (q["arms"]["n50"], q["arms"]["n80"]) == (1, 0)
    assert (q["count"]["n50"], q["count"]["n80"]) == (1, 0)
    assert q["arms"]["acc80"] is None


def test_min_votes_is_on_the_question_total():
    counts = _counts(G_DISK07)  # 20 votes on shape, 14 on arms, 12 on count
    q = {r["question"]: r for r in vote_report(counts, TREE, fractions=_observed(counts), min_votes=13).questions}
    assert (q["shape"]["n50"], q["arms"]["n50"], q["count"]["n50"]) == (1, 1, 0)


def _observed(counts):
    from uda_core.votes import vote_fractions

    return vote_fractions(counts, TREE)[0]


def _simulate(rng, n, tree=GZ_DECALS, volunteers=(30, 51)):
    """Vote counts down the tree: everyone answers a root question, a child's voters are its parent answer's."""
    counts = np.zeros((n, tree.num_answers))
    for i in range(n):
        for q, s in enumerate(tree.slices):
            parent = tree.parent_answer[q]
            voters = rng.integers(*volunteers) if parent is None else int(counts[i, parent])
            if voters:
                p = rng.dirichlet(np.full(s.stop - s.start, 0.3))
                counts[i, s] = rng.multinomial(voters, p)
    return counts


def test_perfect_predictions_score_one():
    rng = np.random.default_rng(0)
    counts = _simulate(rng, 300)
    from uda_core.votes import vote_fractions

    rep = vote_report(counts, GZ_DECALS, fractions=vote_fractions(counts, GZ_DECALS)[0])
    scored = [r for r in rep.questions if r["n50"] > 0]
    assert len(scored) >= 8  # the simulation reaches most of the tree
    for r in scored:
        assert r["acc50"] == 1.0 and r["tpr_t20"] == 1.0 and r["tpr_t50"] == 1.0 and r["precision_t50"] == 1.0
    assert rep.mean == {"mean_acc50": 1.0, "mean_acc80": 1.0}
    # Predictions that are wrong everywhere (each question's answers in reverse) are scored below 1.
    wrong = vote_fractions(counts, GZ_DECALS)[0].copy()
    for s in GZ_DECALS.slices:
        wrong[:, s] = wrong[:, s][:, ::-1]
    assert vote_report(counts, GZ_DECALS, fractions=wrong).mean["mean_acc50"] < 0.5


def test_question_without_qualifying_galaxy_has_no_nan():
    counts = _counts(G_ROUND, G_DISK07)
    counts[:, 6:] = 0  # nobody answered merging
    rep = vote_report(counts, TREE, alpha=np.ones_like(counts) + np.arange(counts.shape[1]))
    m = rep.metrics("g")
    assert all(math.isfinite(v) for v in m.values())
    assert m["g/merging/n50"] == 0 and "g/merging/acc50" not in m
    assert "g/arms/acc80" not in m and m["g/arms/n80"] == 0
    # alpha grows with the answer index, so the last answer is predicted everywhere: shape 1 of 2 right at 0.5
    # (G_DISK07), arms and count wrong, merging unscored; at 0.8 only shape (G_ROUND, wrong). The means skip
    # the questions without a qualifying galaxy.
    assert m["g/shape/acc50"] == 0.5 and m["g/arms/acc50"] == 0.0 and m["g/count/acc50"] == 0.0
    assert m["g/mean_acc50"] == pytest.approx(1 / 6) and m["g/mean_acc80"] == 0.0
    json.dumps(rep.to_json(), allow_nan=False)  # tables carry None, never NaN
    empty = vote_report(np.zeros((3, TREE.num_answers)), TREE, fractions=np.full((3, TREE.num_answers), 0.5))
    assert not empty.mean and all(k.endswith(("n50", "n80")) for k in empty.metrics("g"))


def test_detection_table_by_hand():
    # shape only (20 votes each): observed round 0.9, 0.6, 0.3, 0.1; predicted round 0.7, 0.4, 0.6, 0.1.
    # A fifth galaxy, a positive with 5 votes, is below min_votes and not asked.
    obs_round = [0.9, 0.6, 0.3, 0.1]
    counts = np.zeros((5, TREE.num_answers))
    counts[:4, 0] = np.array(obs_round) * 20
    counts[:4, 1] = 20 - counts[:4, 0]
    counts[4, :2] = (5, 0)
    pred = np.full((5, TREE.num_answers), 0.5)
    pred[:4, 0] = [0.7, 0.4, 0.6, 0.1]
    pred[:4, 1] = 1 - pred[:4, 0]
    pred[4, :2] = (0.0, 1.0)
    rep = vote_report(counts, TREE, fractions=pred, min_votes=10)
    rows = {(r["answer"], r["threshold"]): r for r in rep.answers if r["question"] == "shape"}
    # round: positives G0, G1. t=0.2 calls G0 G1 G2; t=0.5 calls G0 G2; t=0.8 calls none.
    assert rows["round", 0.2]["n_asked"] == 4 and rows["round", 0.2]["positives"] == 2
    assert (rows["round", 0.2]["tpr"], rows["round", 0.2]["precision"]) == (1.0, pytest.approx(2 / 3))
    assert (rows["round", 0.5]["tpr"], rows["round", 0.5]["precision"]) == (0.5, 0.5)
    assert (rows["round", 0.8]["tpr"], rows["round", 0.8]["precision"]) == (0.0, None)
    # disk (observed 0.1 0.4 0.7 0.9; predicted 0.3 0.6 0.4 0.9): positives G2, G3.
    assert (rows["disk", 0.2]["tpr"], rows["disk", 0.2]["precision"]) == (1.0, 0.5)
    assert (rows["disk", 0.5]["tpr"], rows["disk", 0.5]["precision"]) == (0.5, 0.5)
    assert (rows["disk", 0.8]["tpr"], rows["disk", 0.8]["precision"]) == (0.5, 1.0)
    shape = rep.questions[0]
    assert shape["tpr_t20"] == 1.0 and shape["precision_t20"] == pytest.approx(7 / 12)
    assert shape["tpr_t80"] == 0.25 and shape["precision_t80"] == 1.0  # precision: the answers that call any
    assert shape["answers_with_positives"] == 2
    # Accuracy and confusion on the same four (0.6 and 0.7 pass the 0.5 cut; top answers R R D D vs R D R D).
    assert (shape["n50"], shape["acc50"]) == (4, 0.5)
    assert rep.confusion["shape"] == {"matrix": [[1, 1], [1, 1]], "rows": ["round", "disk"], "cols": ["round", "disk"]}
    assert rep.frame("answers").shape[0] == len(rep.answers)


def test_file_reporter_writes_vote_tables_and_pictures(tmp_path):
    from uda_core.evaluate import Evaluation
    from uda_core.reporting import FileReporter

    counts = _counts(G_ROUND, G_DISK07)
    votes = vote_report(counts, TREE, fractions=_observed(counts)).to_json()
    ev = Evaluation(3, {"source_val/acc": 0.5}, votes={N.VOTES_SOURCE: votes})
    FileReporter(tmp_path, "source_val/acc")(ev, tmp_path)
    d = tmp_path / "evals" / "step_0000003"
    assert json.loads((d / "votes_source_test.json").read_text()) == votes
    for name in ("votes_confusion_source_test.png", "votes_table_source_test.png"):
        assert (d / name).read_bytes()[:4] == b"\x89PNG"


# --- evaluate() on the tiny data set with a vote-head model ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    from uda_core.data.dataset import load_dataset

    return load_dataset(tiny_folder)


def _with_votes(data, splits, seed=0, labels=True):
    """The tiny data with our own synthetic votes on `splits` and none elsewhere (whatever the generator gives)."""
    rng = np.random.default_rng(seed)
    out = copy.copy(data)
    out.splits = dict(data.splits)
    out.vote_tree = GZ_DECALS
    if not labels:
        out.manifest = {**data.manifest, "target_labels": "none"}
    for key in data.splits:
        s = copy.copy(data[key])
        s.votes = torch.tensor(_simulate(rng, len(s)), dtype=torch.float32) if key in splits else None
        out.splits[key] = s
    return out


def _evaluate(cfg, data):
    from uda_core.evaluate import evaluate
    from uda_core.methods import get_method
    from uda_core.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_channels, data.num_known, GZ_DECALS)
    method = get_method("source_only")(cfg.method.parsed(), model, data.num_known, len(data["target/train"]))
    return evaluate(model, method, data, cfg, 0)


SOURCE = ("source/train", "source/val", "source/test")
FAST_EVAL = {"agreement_max_samples": 10, "snd_max_samples": 50, "dev_max_samples": 50, "max_source_features": 50}


def test_evaluate_scores_votes(tiny_config, tiny):
    cfg = tiny_config(model={"vote_head": True}, eval=FAST_EVAL)
    ev = _evaluate(cfg, _with_votes(tiny, SOURCE + ("target/test",)))
    m = ev.metrics
    assert math.isfinite(m[N.SOURCE_VAL_VOTE_NLL]) and m[N.SOURCE_VAL_VOTE_NLL] > 0
    for group in (N.SOURCE_TEST_VOTES, N.ORACLE_TARGET_TEST_VOTES):
        assert 0.0 <= m[f"{group}/mean_acc50"] <= 1.0
        assert m[f"{group}/smooth-or-featured/n50"] > 0 and f"{group}/smooth-or-featured/acc50" in m
        for q in GZ_DECALS.questions:
            assert f"{group}/{q.name}/n50" in m and f"{group}/{q.name}/n80" in m
    assert all(math.isfinite(v) for k, v in m.items() if "/votes/" in k)
    assert set(ev.votes) == {N.VOTES_SOURCE, N.VOTES_ORACLE}
    assert ev.votes[N.VOTES_SOURCE]["confusion"]["bar"]["rows"] == ["strong", "weak", "no"]
    js = json.loads(json.dumps(ev.to_json(), allow_nan=False))
    assert js["votes"][N.VOTES_SOURCE]["questions"][0]["question"] == "smooth-or-featured"


def test_evaluate_without_target_votes_has_no_oracle_votes(tiny_config, tiny):
    cfg = tiny_config(model={"vote_head": True}, eval=FAST_EVAL)
    ev = _evaluate(cfg, _with_votes(tiny, SOURCE))
    assert f"{N.SOURCE_TEST_VOTES}/mean_acc50" in ev.metrics
    assert not [k for k in ev.metrics if k.startswith(N.ORACLE_PREFIX) and "votes" in k]
    assert set(ev.votes) == {N.VOTES_SOURCE} and N.VOTES_ORACLE not in ev.to_json()["votes"]


def test_target_votes_without_class_labels_are_scored_as_oracle(tiny_config, tiny):
    """`data import --target-votes` without --target-labels: the votes are evaluation labels of their own."""
    cfg = tiny_config(model={"vote_head": True}, eval=FAST_EVAL)
    ev = _evaluate(cfg, _with_votes(tiny, SOURCE + ("target/test",), labels=False))
    assert f"{N.ORACLE_TARGET_TEST_VOTES}/mean_acc50" in ev.metrics
    assert "oracle/target_test/acc_shared" not in ev.metrics  # no class labels: no class oracle


def test_no_vote_head_no_vote_keys(tiny_config, tiny):
    from uda_core.evaluate import Evaluation, _vote_metrics
    from uda_core.models import build_model

    cfg = tiny_config()
    model = build_model(cfg.model, tiny.in_channels, tiny.num_known)
    assert _vote_metrics(model, None, _with_votes(tiny, SOURCE)) == ({}, {})  # returns before reading any output
    assert "votes" not in Evaluation(0, {}).to_json()
