from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uda_core.config import build_config
from uda_core.data.store import DataSpec, ensure_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_folder(data_root) -> Path:
    """The tiny universal decals -> sdss data set, generated once per test session."""
    return ensure_dataset(DataSpec(size="tiny"), data_root, progress=False)


@pytest.fixture(scope="session")
def tiny_unlabelled_folder(data_root, tiny_folder) -> Path:
    """The tiny data set as a real unlabelled target survey: target rows have label = train_label = -1 and no
    votes, and the manifest says target_labels "none" (files and fingerprint recomputed, so the folder verifies)."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from uda_core.data.store import CATALOGUE, MANIFEST, UNLABELLED, _sha256_files

    folder = data_root / "tiny-unlabelled"
    shutil.copytree(tiny_folder, folder)
    cat = pq.read_table(folder / CATALOGUE).to_pandas()
    target = cat["domain"] == "target"
    cat.loc[target, ["label", "train_label"]] = UNLABELLED
    from uda_core.votes import GZ_DECALS

    cat.loc[target, GZ_DECALS.columns] = 0  # nor any Galaxy Zoo votes
    pq.write_table(pa.Table.from_pandas(cat, preserve_index=False), folder / CATALOGUE)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["target_labels"] = "none"
    manifest["votes"]["domains"] = ["source"]
    manifest["files"] = {name: (folder / name).stat().st_size for name in manifest["files"]}
    manifest["fingerprint"] = _sha256_files(folder, tuple(manifest["files"]))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture
def tiny_config(data_root, tiny_folder):
    """A RunConfig factory for a few fast steps on the tiny data set."""

    def make(method: str = "source_only", **sections):
        raw = {
            "data": {"size": "tiny", "root": str(data_root)},
            "model": {"width": 8, "depth": 2, "feature_dim": 16},
            "method": {"name": method},
            "optim": {"batch_size": 16},
            "train": {"steps": 4, "eval_every": 2, "progress": False, "precision": "fp32"},
            "eval": {"max_source_features": 100},
        }
        for key, value in sections.items():
            raw.setdefault(key, {}).update(value)
        return build_config(raw)

    return make


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for one test module; the sweep test doubles are shipped to workers by value."""
    import ray

    import sweep_helpers

    # "local": a Ray of its own, never a cluster that `ray start` (or RAY_ADDRESS) left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sweep_helpers)
    yield
    ray.shutdown()


# The catalogue's own class names are not the project's: the import maps them.
FOREIGN_NAMES = {"elliptical": "E", "spiral": "S", "barred_spiral": "SB", "edge_on": "EO", "merger": "M", "ring": "R"}


def write_fits_cutouts(folder: Path, ids, flux, pixel_arcsec: float, bands: str = "grz") -> Path:
    """Legacy Survey style FITS cutouts, one (bands, H, W) float32 image per file with BANDS and a TAN WCS."""
    from astropy.io import fits
    from astropy.wcs import WCS

    folder.mkdir(parents=True, exist_ok=True)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cdelt = [-pixel_arcsec / 3600, pixel_arcsec / 3600]
    w.wcs.crval = [150.0, 2.0]
    header = w.to_header()
    header["BANDS"] = bands
    for gid, stamp in zip(ids, flux):
        fits.PrimaryHDU(np.asarray(stamp, np.float32), header=header).writeto(folder / f"{gid}.fits")
    return folder


@pytest.fixture(scope="session")
def imported_folder(tmp_path_factory, tiny_folder) -> Path:
    """A real-format pair through `uda-sweep data import`: the tiny pair's stamps as FITS cutouts, DECaLS at
    0.262"/px with a label table in the catalogue's own class names, SDSS at its native 0.396"/px with no labels."""
    import pandas as pd
    import pyarrow.parquet as pq

    from sweeps.cli import main

    work = tmp_path_factory.mktemp("real")
    cat = pq.read_table(tiny_folder / "catalogue.parquet").to_pandas()
    pixels = np.load(tiny_folder / "pixels.npy", mmap_mode="r")
    src, tgt = cat[cat["domain"] == "source"], cat[cat["domain"] == "target"]
    write_fits_cutouts(work / "decals", src["id"], pixels[src["row"].to_numpy()], 0.262)
    write_fits_cutouts(work / "sdss", tgt["id"], pixels[tgt["row"].to_numpy()], 0.396)
    labels = pd.DataFrame({"objid": src["id"], "morph": src["class_name"].map(FOREIGN_NAMES)})
    labels.to_csv(work / "labels.csv", index=False)
    class_map = ",".join(f"{v}={k}" for k, v in FOREIGN_NAMES.items())
    assert main(["data", "import", "--source", str(work / "decals"), "--source-labels", str(work / "labels.csv"),
                 "--id-column", "objid", "--label-column", "morph", "--class-map", class_map,
                 "--target", str(work / "sdss"), "--unknown-classes", "lens,artifact",
                 "--source-survey", "decals", "--target-survey", "sdss", "--out", str(work / "ds")]) == 0
    return work / "ds"
