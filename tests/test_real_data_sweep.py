"""Real-format data end to end: FITS cutouts of a labelled source and an unlabelled target, written by the test,
imported with `uda-sweep data import`, swept (real Ray, Optuna, MLflow), promoted and used to predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from sweep_helpers import write_sweep
from sweeps.cli import main
from sweeps.registry import promote
from sweeps.run import run_sweep
from uda_core.data.store import read_manifest

pytestmark = pytest.mark.usefixtures("local_ray")

# The catalogue's own names are not the project's: the import maps them.
FOREIGN = {"elliptical": "E", "spiral": "S", "barred_spiral": "SB", "edge_on": "EO", "merger": "M", "ring": "R"}


def _write_fits(folder, ids, flux, scale):
    folder.mkdir(parents=True)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    w.wcs.crval = [150.0, 2.0]
    header = w.to_header()
    header["BANDS"] = "grz"
    for gid, stamp in zip(ids, flux):
        fits.PrimaryHDU(np.asarray(stamp, np.float32), header=header).writeto(folder / f"{gid}.fits")
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tiny_folder):
    """The tiny simulated pair's stamps written as FITS cutouts (DECaLS at 0.262"/px with a label table in the
    catalogue's own names; SDSS at its native 0.396"/px, no labels) and imported."""
    work = tmp_path_factory.mktemp("real")
    cat = pq.read_table(tiny_folder / "catalogue.parquet").to_pandas()
    pixels = np.load(tiny_folder / "pixels.npy", mmap_mode="r")
    src, tgt = cat[cat["domain"] == "source"], cat[cat["domain"] == "target"]
    _write_fits(work / "decals", src["id"], pixels[src["row"].to_numpy()], 0.262)
    _write_fits(work / "sdss", tgt["id"], pixels[tgt["row"].to_numpy()], 0.396)
    pd.DataFrame({"objid": src["id"], "morph": src["class_name"].map(FOREIGN)}).to_csv(work / "labels.csv", index=False)
    class_map = ",".join(f"{v}={k}" for k, v in FOREIGN.items())
    assert main(["data", "import", "--source", str(work / "decals"), "--source-labels", str(work / "labels.csv"),
                 "--id-column", "objid", "--label-column", "morph", "--class-map", class_map,
                 "--target", str(work / "sdss"), "--unknown-classes", "lens,artifact",
                 "--source-survey", "decals", "--target-survey", "sdss", "--out", str(work / "ds")]) == 0
    return work


def test_sweep_promote_predict_on_imported_unlabelled_target(imported, monkeypatch, capsys, caplog):
    work = imported
    manifest = read_manifest(work / "ds")
    assert manifest["target_labels"] == "none" and manifest["task"]["num_known"] == 6
    monkeypatch.chdir(work)
    path = write_sweep(work, work / "unused", "real", run={"data": {"path": str(work / "ds")}},
                       search={"num_trials": 2}, baselines=[], tracking={"embedding": "pca", "finalists": 0})
    summary = run_sweep(path, workdir=work, progress=False)
    assert summary.finished and summary.best is not None
    assert not [k for r in summary.trials for k, v in r.items() if "oracle" in k and v is not None]
    assert main(["status", "real"]) == 0
    assert "oracle" not in capsys.readouterr().out.lower()

    result = promote("real")
    assert result.became_champion

    # New SDSS cutouts the model never saw, bigger (40 px) than it was trained on: resampled and cropped onto its grid.
    rng = np.random.default_rng(5)
    fresh = _write_fits(work / "fresh", [f"new{i}" for i in range(6)], rng.normal(0, 0.03, (6, 3, 40, 40)), 0.396)
    out = work / "catalogue.parquet"
    assert main(["predict", "models:/real@champion", str(fresh), "--out", str(out),
                 "--tracking-uri", summary.tracking_uri, "--top-n", "0"]) == 0
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"galaxy_uda_sweeps"])
    assert table.num_rows == 6 and meta["classes"] == manifest["task"]["class_names"][:6]
    assert any("put on the model's grid" in r.getMessage() for r in caplog.records)


def test_oracle_objective_on_the_imported_target_is_refused_before_launch(imported, monkeypatch, capsys):
    monkeypatch.chdir(imported)
    path = write_sweep(imported, imported / "unused", "real_oracle", run={"data": {"path": str(imported / "ds")}},
                       objective={"metric": "oracle/target_test/h_score"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "objective.metric" in err and "label" in err and "Traceback" not in err
    assert not (imported / "runs" / "sweeps" / "real_oracle").exists()
