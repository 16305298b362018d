"""Simulated Galaxy Zoo DECaLS votes (uda_core.data.vote_sim) in generated data sets: the counts follow the
decision tree, load as Split.votes, leave the pixels alone, and depend on how well the survey shows a feature."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from uda_core.data import store, vote_sim
from uda_core.data.dataset import SPLITS, load_dataset
from uda_core.data.population import draw_population
from uda_core.data.store import DataSpec, SizePreset, generate
from uda_core.data.surveys import get_survey
from uda_core.votes import GZ_DECALS, vote_fractions

TREE = GZ_DECALS
COLS = TREE.columns


def _totals(counts: np.ndarray) -> np.ndarray:
    return np.stack([counts[:, s].sum(1) for s in TREE.slices], 1)


def test_simulated_counts_follow_the_tree(tiny_folder):
    cat = pq.read_table(tiny_folder / "catalogue.parquet").to_pandas()
    counts = cat[COLS].to_numpy()
    assert counts.dtype.kind == "i" and (counts >= 0).all()
    totals = _totals(counts)
    volunteers = totals[:, 0]
    # every volunteer answers the first question and `merging`; each later question exactly its parent answer's
    for q, parent in enumerate(TREE.parent_answer):
        expected = volunteers if parent is None else counts[:, parent]
        np.testing.assert_array_equal(totals[:, q], expected, err_msg=TREE.questions[q].name)
    assert 5 <= volunteers.min() and volunteers.max() <= 55 and 35 <= np.median(volunteers) <= 45
    assert (volunteers < 30).mean() > 0.05  # some galaxies retired early
    for domain in ("source", "target"):
        assert (volunteers[(cat["domain"] == domain).to_numpy()] > 0).all()
    # volunteers disagree: most first-question fractions are neither 0 nor 1
    frac, _ = vote_fractions(counts, TREE)
    assert (frac[:, TREE.slices[0]].max(1) < 1).mean() > 0.5
    # and agree with the truth where it is plain: ellipticals smooth, artifacts artifact, mergers merging
    by = lambda c, q, a: frac[(cat["class_name"] == c).to_numpy(), TREE.answer_index(q, a)].mean()  # noqa: E731
    assert by("elliptical", "smooth-or-featured", "smooth") > 0.8
    assert by("spiral", "smooth-or-featured", "featured-or-disk") > by("elliptical", "smooth-or-featured",
                                                                       "featured-or-disk") + 0.3
    assert by("artifact", "smooth-or-featured", "artifact") > 0.6
    assert by("merger", "merging", "merger") > 3 * by("elliptical", "merging", "merger")


def test_votes_load_as_split_votes(tiny_folder):
    data = load_dataset(tiny_folder)
    assert data.vote_tree == TREE
    assert data.manifest["votes"]["domains"] == ["source", "target"]
    for key in SPLITS:
        split = data[key]
        assert split.votes is not None and split.votes.shape == (len(split), TREE.num_answers)
        np.testing.assert_array_equal(split.votes.numpy(), split.catalogue[COLS].to_numpy(np.float32))


@pytest.fixture
def mini(monkeypatch):
    """A data set size of a few stamps per split, so a test can generate several."""
    monkeypatch.setitem(store.SIZES, "mini", SizePreset(16, 8, 4, 4, 8, 6))
    return DataSpec(size="mini", seed=3)


def test_the_vote_draw_leaves_pixels_and_every_other_column_alone(mini, tmp_path, monkeypatch):
    a = generate(mini, tmp_path / "a", progress=False)
    again = generate(mini, tmp_path / "again", progress=False)
    # votes drawn from a stream of their own: without drawing them at all, everything else is the same
    monkeypatch.setattr(vote_sim, "simulate_votes",
                        lambda params, survey, rng: np.zeros((len(params["r_mag"]), len(COLS)), np.int64))
    b = generate(mini, tmp_path / "b", progress=False)
    np.testing.assert_array_equal(np.load(a / "pixels.npy"), np.load(b / "pixels.npy"))
    cat_a, cat_b = (pq.read_table(f / "catalogue.parquet").to_pandas() for f in (a, b))
    others = [c for c in cat_a.columns if c not in COLS]
    assert len(others) > 10
    assert cat_a[others].equals(cat_b[others])
    assert (cat_b[COLS].to_numpy() == 0).all() and cat_a[COLS].to_numpy().sum() > 0  # the patch took effect
    # and the votes themselves are reproducible
    assert cat_a.equals(pq.read_table(again / "catalogue.parquet").to_pandas())


def _population(cls: str, n: int = 3000, seed: int = 0) -> dict:
    decals = get_survey("decals")
    return draw_population(np.random.default_rng(seed), [cls] * n, decals, 64 * decals.pixel_arcsec)


def _mean_fraction(params, survey, question, answer, seed=1) -> float:
    counts = vote_sim.simulate_votes(params, get_survey(survey), np.random.default_rng(seed))
    frac, totals = vote_fractions(counts, TREE)
    asked = totals[:, [q.name for q in TREE.questions].index(question)] > 0
    return float(frac[asked, TREE.answer_index(question, answer)].mean())


def test_a_shallower_worse_seeing_survey_sees_fewer_features():
    spirals = _population("spiral")
    decals = _mean_fraction(spirals, "decals", "smooth-or-featured", "featured-or-disk")
    sdss = _mean_fraction(spirals, "sdss", "smooth-or-featured", "featured-or-disk")
    assert decals > sdss + 0.1, (decals, sdss)
    assert _mean_fraction(spirals, "decals", "has-spiral-arms", "yes") > \
        _mean_fraction(spirals, "sdss", "has-spiral-arms", "yes") + 0.1
    assert _mean_fraction(spirals, "decals", "spiral-arm-count", "cant-tell") < \
        _mean_fraction(spirals, "sdss", "spiral-arm-count", "cant-tell")
    barred = _population("barred_spiral")
    assert _mean_fraction(barred, "decals", "bar", "no") < _mean_fraction(barred, "sdss", "bar", "no") - 0.05
    # a smooth galaxy has nothing to lose: its votes hardly depend on the survey
    ellipticals = _population("elliptical")
    assert abs(_mean_fraction(ellipticals, "decals", "smooth-or-featured", "smooth")
               - _mean_fraction(ellipticals, "sdss", "smooth-or-featured", "smooth")) < 0.03


def test_an_edge_on_disk_is_called_edge_on_only_when_resolved():
    disks = _population("edge_on")
    small = {**disks, "hlr_arcsec": np.full(len(disks["hlr_arcsec"]), 0.4)}
    large = {**disks, "hlr_arcsec": np.full(len(disks["hlr_arcsec"]), 4.0)}
    resolved = _mean_fraction(large, "decals", "disk-edge-on", "yes")
    assert resolved > 0.6 and resolved > _mean_fraction(small, "decals", "disk-edge-on", "yes") + 0.3
    assert _mean_fraction(large, "decals", "smooth-or-featured", "featured-or-disk") > \
        _mean_fraction(small, "decals", "smooth-or-featured", "featured-or-disk") + 0.2
    # what volunteers answer follows the galaxy's shape and structure: round ellipticals "round", bulges by bulge_frac
    ell = _population("elliptical")
    rounded = vote_sim.vote_probabilities(ell, get_survey("decals"))["how-rounded"]
    q = ell["axis_ratio"]
    assert rounded[q > 0.85, 0].mean() > 0.6 and rounded[q < 0.4, 2].mean() > 0.5
