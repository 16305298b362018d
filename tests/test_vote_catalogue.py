"""Galaxy Zoo vote outputs end to end: a tiny vote-head model trained on a voted copy of the tiny data set,
exported, served as an MLflow pyfunc model and turned into a `uda-sweep predict` catalogue (the local path), with
Dirichlet concentrations, expected fractions and per-question uncertainties; a model without a vote head writes
the catalogue it always did."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from uda_core.votes import (
    ALPHA_MIN,
    ALPHA_RANGE,
    GZ_DECALS,
    alpha_from_cosine,
    dirichlet_entropy,
    expected_fractions,
    tree_from_dict,
)

CLASS_COLUMNS = ["predicted_class", "unknown", "anomaly_score", "entropy", "uncertainty", "predicted_prob_std"]


def _simulated_votes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Counts consistent with the tree: 20 volunteers answer the first question, each later question gets the
    votes of the answer that leads to it, split by a random Dirichlet."""
    tree = GZ_DECALS
    counts = np.zeros((n, tree.num_answers), np.int64)
    parents = tree.parent_answer
    for q, s in enumerate(tree.slices):
        asked = np.full(n, 20) if parents[q] is None else counts[:, parents[q]]
        p = rng.dirichlet(np.ones(s.stop - s.start), size=n)
        counts[:, s] = [rng.multinomial(k, pi) for k, pi in zip(asked, p)]
    return counts


@pytest.fixture(scope="module")
def voted_folder(tmp_path_factory, tiny_folder) -> Path:
    """The tiny data set with 34 GZ DECaLS vote-count columns in both domains (files and fingerprint recomputed)."""
    from uda_core.data.store import CATALOGUE, MANIFEST, _sha256_files

    folder = tmp_path_factory.mktemp("votes") / "tiny-voted"
    shutil.copytree(tiny_folder, folder)
    cat = pq.read_table(folder / CATALOGUE).to_pandas()
    counts = _simulated_votes(len(cat), np.random.default_rng(0))
    for i, c in enumerate(GZ_DECALS.columns):
        cat[c] = counts[:, i]
    pq.write_table(pa.Table.from_pandas(cat, preserve_index=False), folder / CATALOGUE)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["votes"] = {"tree": GZ_DECALS.to_dict(), "domains": ["source", "target"]}
    manifest["files"] = {name: (folder / name).stat().st_size for name in manifest["files"]}
    manifest["fingerprint"] = _sha256_files(folder, tuple(manifest["files"]))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


def _train_export_save(cfg, work: Path) -> tuple[Path, Path, Path]:
    """(last checkpoint, exported classifier folder, MLflow model folder) of a 4-step run."""
    from sweeps.finalists import PYFUNC_CODE, REQUIREMENTS, model_signature
    from uda_core.inference import export_classifier
    from uda_core.train import load_data, train

    data = load_data(cfg, progress=False)
    ckpts = []
    train(cfg, lambda ev, ck: ckpts.append(ck), work / "run", data=data)
    export_classifier(ckpts[-1], work / "classifier", data)
    signature, example = model_signature(work / "classifier")
    mlflow.pyfunc.save_model(str(work / "model"), python_model=str(PYFUNC_CODE),
                             artifacts={"classifier": str(work / "classifier")}, signature=signature,
                             input_example=example, pip_requirements=REQUIREMENTS)
    return ckpts[-1], work / "classifier", work / "model"


def _vote_names(tree) -> list[str]:
    return ([f"{c}_alpha" for c in tree.columns] + [f"{c}_fraction" for c in tree.columns]
            + [f"{q.name}_entropy" for q in tree.questions] + [f"{q.name}_fraction_std" for q in tree.questions])


def test_vote_head_is_exported_and_its_catalogue_has_vote_columns_and_the_tree(tiny_config, voted_folder, tmp_path):
    from sweeps.catalogue import predict_catalogue
    from uda_core.data.dataset import preprocess
    from uda_core.evaluate import predict
    from uda_core.inference import Classifier
    from uda_core.models import TARGET
    from uda_core.train import CHECKPOINT_FILE

    cfg = tiny_config(model={"vote_head": True}, data={"path": str(voted_folder)})
    ckpt, classifier_dir, model_dir = _train_export_save(cfg, tmp_path)
    tree = GZ_DECALS

    # The export records the tree and carries the trained vote head, not a fresh one.
    meta = json.loads((classifier_dir / "config.json").read_text())
    assert tree_from_dict(meta["vote_tree"]) == tree and meta["format"]["version"] == 2
    clf = Classifier.load(classifier_dir, device="cpu")
    assert clf.vote_tree == tree
    trained = torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)["model"]["answer_prototypes"]
    torch.testing.assert_close(clf.model.answer_prototypes.detach(), trained)

    # predict: alpha of the plain view is the head's own output; one view has no spread.
    pixels = np.load(voted_folder / "pixels.npy", mmap_mode="r")
    flux = pixels[:12].astype(np.float32)
    one = clf.predict(flux, views=1)
    _, f = predict(clf.model, preprocess(flux, meta["softening"]), TARGET)
    np.testing.assert_allclose(one["vote_alpha"],
                               alpha_from_cosine(clf.model.answer_logits(torch.from_numpy(f))).detach().numpy(),
                               rtol=1e-5)
    assert one["vote_fraction_std"].shape == (12, len(tree.questions)) and (one["vote_fraction_std"] == 0).all()
    eight = clf.predict(flux, views=8)
    assert (eight["vote_fraction_std"] > 0).any()

    # The pyfunc model's frame has the same vote columns as the catalogue, after the class columns.
    with warnings.catch_warnings(record=True) as caught:  # loading and predicting are quiet (issue 16: noise)
        warnings.simplefilter("always")
        frame = mlflow.pyfunc.load_model(str(model_dir)).predict(flux)
    assert not [w for w in caught if "type hint" in str(w.message)], [str(w.message) for w in caught]
    names = _vote_names(tree)
    assert (list(frame.columns[-len(names):]) == names
            and list(frame.columns[-len(names) - 6: -len(names)]) == CLASS_COLUMNS)

    # The catalogue (local path) from the data set folder's target rows.
    out = tmp_path / "votes.parquet"
    summary = predict_catalogue(str(model_dir), voted_folder, out, views=4, rows_per_shard=64, progress=False, top_n=0)
    table = pq.read_table(out)
    assert summary.rows == table.num_rows > 64  # more than one shard, so every shard carries the vote columns
    cat = table.to_pandas()
    assert [c for c in cat.columns if c in names] == names
    alpha = cat[[f"{c}_alpha" for c in tree.columns]].to_numpy()
    assert (alpha > ALPHA_MIN).all() and (alpha <= ALPHA_MIN + ALPHA_RANGE).all()
    frac = cat[[f"{c}_fraction" for c in tree.columns]].to_numpy()
    assert (frac > 0).all() and (frac < 1).all()
    for s in tree.slices:
        np.testing.assert_allclose(frac[:, s].sum(1), 1, atol=1e-5)
    for q in tree.questions:
        for kind in ("entropy", "fraction_std"):
            assert np.isfinite(cat[f"{q.name}_{kind}"].to_numpy()).all()
        assert (cat[f"{q.name}_fraction_std"] >= 0).all()
    assert cat[[f"{q.name}_fraction_std" for q in tree.questions]].to_numpy().max() > 0  # over 4 views
    # The fractions follow from the alphas written beside them; the entropy from the same alphas.
    np.testing.assert_allclose(frac, expected_fractions(alpha, tree), atol=1e-5)
    np.testing.assert_allclose(cat[[f"{q.name}_entropy" for q in tree.questions]].to_numpy(),
                               dirichlet_entropy(alpha, tree), rtol=1e-3, atol=1e-3)

    # The schema metadata records the decision tree, and it reads back as the same tree.
    md = table.schema.metadata
    assert tree_from_dict(json.loads(md[b"vote_tree"])) == tree
    assert json.loads(md[b"galaxy_uda_sweeps"])["views"] == 4


def test_a_model_without_a_vote_head_writes_the_catalogue_it_always_did(tiny_config, voted_folder, tmp_path):
    from sweeps.catalogue import predict_catalogue
    from uda_core.inference import Classifier

    # Trained on the same voted data: votes in a data set do not make a vote head, model.vote_head does.
    cfg = tiny_config(data={"path": str(voted_folder)})
    _, classifier_dir, model_dir = _train_export_save(cfg, tmp_path)
    meta = json.loads((classifier_dir / "config.json").read_text())
    assert meta["vote_tree"] is None and meta["format"]["version"] == 1
    clf = Classifier.load(classifier_dir, device="cpu")
    assert clf.vote_tree is None and clf.model.answer_prototypes is None
    assert not [k for k in clf.predict(np.load(voted_folder / "pixels.npy")[:4], views=2) if k.startswith("vote_")]

    out = tmp_path / "plain.parquet"
    predict_catalogue(str(model_dir), voted_folder, out, views=2, progress=False, top_n=0)
    table = pq.read_table(out)
    names = [f"prob_{n}" for n in clf.class_names]
    assert table.column_names == ["id", *names, *CLASS_COLUMNS, "source_file", "source_index"]
    assert set(table.schema.metadata) == {b"galaxy_uda_sweeps"}

    # An export written before the vote head (no "vote_tree" key) still loads, without one.
    del meta["vote_tree"]
    (classifier_dir / "config.json").write_text(json.dumps(meta))
    assert Classifier.load(classifier_dir, device="cpu").vote_tree is None
