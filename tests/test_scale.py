"""Data larger than memory: stamps read from the mapped file, a content check paid once, evaluations with a bound,
and a real sweep over a data set whose in-memory form is larger than what each trial holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from sweep_helpers import write_sweep
from uda_core.config import build_config
from uda_core.data import store
from uda_core.data.dataset import load_dataset, preprocess
from uda_core.data.replicate import replicate_dataset
from uda_core.errors import DataError
from uda_core.train import load_data


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, tiny_folder):
    """The tiny set replicated to 80,000 stamps (470 MB of float16 pixels, 940 MB as float32 tensors: more than
    a trial process holds, about 530 MB with Ray, torch and MLflow imported)."""
    return replicate_dataset(tiny_folder, tmp_path_factory.mktemp("scale") / "r80k", 80_000)


def test_stamps_read_the_asked_rows_in_the_asked_order(tiny_folder):
    data = load_dataset(tiny_folder)
    split = data["target/test"]
    pixels = np.load(tiny_folder / store.PIXELS)
    rows = split.catalogue["row"].to_numpy()
    expected = preprocess(pixels[rows], data.softening)
    index = torch.tensor([7, 2, 2, 150, 0])  # unsorted, repeated
    assert torch.equal(split.x[index], expected[index])
    assert torch.equal(split.x[3:9], expected[3:9])
    assert torch.equal(split.x.subset(np.array([5, 1]))[:], expected[[5, 1]])
    assert split.x[:].shape == (len(split), 3, 32, 32) and len(split.x) == len(split)


def test_replicated_data_set_verifies_and_keeps_labels_with_their_stamps(replicated, tiny_folder):
    small, big = load_dataset(tiny_folder), load_dataset(replicated, columns=("copy_of",))
    assert sum(len(s) for s in big.splits.values()) == pytest.approx(80_000, rel=0.01)
    split = big["source/train"]
    i = len(split) - 1
    original = small["source/train"].catalogue["id"].tolist().index(split.catalogue["copy_of"][i])
    assert torch.equal(split.x[[i]], small["source/train"].x[[original]])
    assert int(split.y[i]) == int(small["source/train"].y[original])


def test_content_check_runs_once_per_version_of_the_files(tmp_path, tiny_folder, monkeypatch):
    folder = replicate_dataset(tiny_folder, tmp_path / "r", 2000)
    load_dataset(folder)  # checks and records
    hashed = []
    real = store._sha256_files
    monkeypatch.setattr(store, "_sha256_files", lambda *a, **k: hashed.append(1) or real(*a, **k))
    load_dataset(folder)
    assert hashed == []  # nothing changed: no second pass over the pixels
    with open(folder / store.PIXELS, "r+b") as f:  # same size, different bytes
        f.seek(-64, 2)
        f.write(b"\x00" * 64)
    with pytest.raises(DataError, match="fingerprint does not match"):
        load_dataset(folder)
    assert hashed == [1]


def test_non_finite_pixels_are_named_by_split_and_id(tmp_path, tiny_folder):
    folder = replicate_dataset(tiny_folder, tmp_path / "r", 1000)
    cat = load_dataset(folder)["target/test"].catalogue
    pixels = np.load(folder / store.PIXELS, mmap_mode="r+")
    pixels[int(cat["row"][4]), 1, 3, 3] = np.nan
    pixels.flush()
    manifest = store.read_manifest(folder)
    manifest["fingerprint"] = store._sha256_files(folder)  # a consistent fingerprint: only the pixels are wrong
    (folder / store.MANIFEST).write_text(__import__("json").dumps(manifest))
    with pytest.raises(DataError, match=rf"non-finite pixels in target/test \(ids \['{cat['id'][4]}'\]"):
        load_dataset(folder)


def test_evaluation_reads_a_fixed_sample_of_large_splits(replicated):
    data = load_dataset(replicated)
    small = data.capped(500)
    assert all(len(s) == min(500, len(data[k])) for k, s in small.splits.items())
    assert small is data.capped(500)  # one sample per cap, whichever trial or step asks
    again = load_dataset(replicated).capped(500)
    for key, s in small.splits.items():
        assert np.array_equal(s.catalogue["row"].to_numpy(), again[key].catalogue["row"].to_numpy())
        assert np.array_equal(s.x.rows, s.catalogue["row"].to_numpy())  # stamps, labels and rows stay together
        assert torch.equal(s.y, torch.tensor(s.catalogue["label"].to_numpy()))
    assert data.capped(10**6) is data


def test_a_process_opens_each_data_set_once(tmp_path, tiny_folder):
    folder = replicate_dataset(tiny_folder, tmp_path / "r", 1000)
    cfg = build_config({"data": {"path": str(folder)}})
    first = load_data(cfg)
    assert load_data(cfg) is first
    assert first["source/train"].votes is None  # no vote head: the counts are not read
    (folder / store.CATALOGUE).touch()  # rewritten in place: opened afresh
    assert load_data(cfg) is not first


@pytest.mark.usefixtures("local_ray")
def test_sweep_over_data_larger_than_each_trial_holds(tmp_path, data_root, replicated):
    from sweeps.run import run_sweep

    in_memory_mb = sum(len(s) for s in load_dataset(replicated).splits.values()) * 3 * 32 * 32 * 4 / 2**20
    path = write_sweep(tmp_path, data_root, "big", baselines=[], run={"data": {"path": str(replicated)},
                       "eval": {"max_source_features": 100, "snd_max_samples": 200, "split_max_samples": 1000}},
                       search={"num_trials": 2, "overrides": {"model.width": 8, "optim.batch_size": 16}},
                       tracking={"embedding": "none", "finalists": 0})
    summary = run_sweep(path, workdir=tmp_path, progress=False)
    assert summary.finished and len(summary.trials) == 2
    client = MlflowClient(summary.tracking_uri)
    held = [client.get_run(r["mlflow_run_id"]).data.metrics["train/private_memory_mb"] for r in summary.trials]
    # Two trials ran at once over 80k stamps; each held less than the data set's float32 form, which is what
    # every trial used to hold on its own.
    assert max(held) < in_memory_mb, (held, in_memory_mb)
