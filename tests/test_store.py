"""Data sets on disk: layout, caching by fingerprint, and clear errors for bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from uda_core.data import store
from uda_core.data.dataset import load_dataset
from uda_core.data.store import DataSpec, ensure_dataset, generate, mend_advice, read_manifest
from uda_core.errors import DataError


def test_layout_and_manifest(tiny_folder):
    manifest = json.loads((tiny_folder / "manifest.json").read_text())
    assert manifest["generator_version"] == store.GENERATOR_VERSION
    assert manifest["config"]["task"] == "universal"
    cat = pq.read_table(tiny_folder / "catalogue.parquet").to_pandas()
    pixels = np.load(tiny_folder / "pixels.npy", mmap_mode="r")
    assert pixels.shape == (len(cat), 3, 32, 32)
    for col in ("id", "label", "domain", "split", "mag_g", "mag_r", "mag_z", "hlr_arcsec", "sersic_n", "axis_ratio",
                "pa_deg", "redshift", "seed"):
        assert col in cat
    assert cat["id"].is_unique
    # Source has the source-private ring and no unknowns; the target has lens and artifact but no ring.
    src = set(cat[cat.domain == "source"].class_name)
    tgt = set(cat[cat.domain == "target"].class_name)
    assert "ring" in src and "ring" not in tgt
    assert {"lens", "artifact"} <= tgt and not ({"lens", "artifact"} & src)


def test_cached_dataset_is_reused_not_regenerated(tiny_folder, data_root, monkeypatch):
    mtime = os.stat(tiny_folder / "pixels.npy").st_mtime_ns
    monkeypatch.setattr(store, "generate", lambda *a, **k: pytest.fail("regenerated a cached data set"))
    assert ensure_dataset(DataSpec(size="tiny"), data_root, progress=False) == tiny_folder
    assert os.stat(tiny_folder / "pixels.npy").st_mtime_ns == mtime


def test_class_priors_differ_between_domains(tiny_folder):
    d = load_dataset(tiny_folder)
    src = np.bincount(d["source/train"].y.numpy(), minlength=8) / len(d["source/train"])
    tgt = np.bincount(d["target/train"].y.numpy(), minlength=8) / len(d["target/train"])
    assert np.abs(src[:5] - tgt[:5]).max() > 0.04


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_pixels_are_detected_and_left_in_place(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "copy")
    with open(folder / "pixels.npy", "r+b") as f:
        f.seek(5000)
        f.write(b"\x13\x37")
    with pytest.raises(DataError, match="fingerprint.*simulate it again.*data generate") as e:
        load_dataset(folder)
    assert "delete" not in str(e.value)  # a copy named by the user is theirs, not the cache
    assert (folder / "pixels.npy").exists()  # nothing stored is removed
    # only the cache folder under data.root, which the next run makes again, may be deleted
    assert "delete" in mend_advice(tiny_folder, read_manifest(tiny_folder)) and "cache" in mend_advice(tiny_folder)


def test_truncated_file_names_the_file(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "copy")
    with open(folder / "catalogue.parquet", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match="catalogue.parquet.*truncated"):
        load_dataset(folder)


def test_nan_pixels_are_rejected_with_ids(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "copy")
    pix = np.load(folder / "pixels.npy", mmap_mode="r+")
    pix[3, 0, 5, 5] = np.nan
    pix.flush()
    del pix
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["fingerprint"] = store._sha256_files(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="non-finite pixels"):
        load_dataset(folder)


def test_missing_manifest_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_dataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset(tmp_path)


def test_foreign_generator_version_is_refused(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path / "copy")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["generator_version"] = "0.3"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="generator 0.3.*data generate"):
        load_dataset(folder)


def test_mismatched_bands_rejected_before_rendering():
    with pytest.raises(DataError, match="bands"):
        DataSpec(source="decals", target="lsst_y1").check()


def test_generate_never_overwrites(tiny_folder):
    before = (tiny_folder / "manifest.json").read_text()
    with pytest.raises(DataError, match="already exists"):
        generate(DataSpec(size="tiny"), tiny_folder)
    assert (tiny_folder / "manifest.json").read_text() == before


def test_label_noise_flips_only_source_train_labels(tmp_path):
    folder = generate(DataSpec(size="tiny", label_noise=0.3, seed=3), tmp_path / "noisy", progress=False)
    d = load_dataset(folder)
    flipped = (d["source/train"].train_y != d["source/train"].y).float().mean().item()
    assert 0.15 < flipped < 0.45
    for key in ("source/val", "source/test", "target/train", "target/test"):
        assert (d[key].train_y == d[key].y).all()
