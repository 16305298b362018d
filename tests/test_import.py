"""`uda-sweep data import`: every input kind, labels and class maps, grids, bad input, units, the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from conftest import write_fits_cutouts
from sweeps.cli import main
from uda_core.data.dataset import load_dataset
from uda_core.data.geometry import Grid, conform, overlap_matrix, resample
from uda_core.data.importer import SKIPPED, DomainInput, ImportSpec, import_dataset
from uda_core.data.readers import write_parquet_cutouts
from uda_core.data.store import UNLABELLED, read_manifest, verify
from uda_core.data.surveys import get_survey
from uda_core.errors import ConfigError, DataError

CLASSES = {"E": "elliptical", "S": "spiral", "M": "merger"}
DECALS_SKY = [get_survey("decals").sky_sigma_nmgy(b) for b in range(3)]


def _stamps(n: int, px: int, seed: int, sky=None) -> np.ndarray:
    """Noisy round blobs in nanomaggies: sky noise per band (default DECaLS' depth), a galaxy of about 10 nmgy."""
    sky = DECALS_SKY if sky is None else np.broadcast_to(sky, (3,))
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:px, :px] - (px - 1) / 2
    blob = np.exp(-(x**2 + y**2) / (2 * (px / 10) ** 2))
    flux = (rng.normal(0, 1, (n, 3, px, px)) * np.asarray(sky)[None, :, None, None]
            + 10 * blob / blob.sum() * rng.uniform(0.5, 2, (n, 3, 1, 1)))
    return flux.astype(np.float32)


def _fits(folder: Path, ids, flux, scale=0.262, bands="grz") -> Path:
    return write_fits_cutouts(folder, ids, flux, scale, bands)


def _npy(folder: Path, ids, flux, scale=0.396, bands="grz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for gid, stamp in zip(ids, flux):
        np.save(folder / f"{gid}.npy", stamp)
    (folder / "cutouts.json").write_text(json.dumps({"bands": bands, "pixel_arcsec": scale}))
    return folder


def _hdf5(path: Path, ids, flux, scale=0.262) -> Path:
    with h5py.File(path, "w") as f:
        f["images"] = flux.transpose(0, 2, 3, 1)
        f["id"] = np.array(ids, dtype="S")
        f["pxscale"] = np.full(len(ids), scale)
    return path


def _labels(path: Path, ids, values, id_column="objid", label_column="morph") -> Path:
    table = pd.DataFrame({id_column: ids, label_column: values})
    if path.suffix == ".parquet":
        table.to_parquet(path)
    else:
        table.to_csv(path, index=False)
    return path


@pytest.fixture
def inputs(tmp_path):
    """40 labelled DECaLS-like FITS cutouts (32 px, 0.262"/px) and 30 unlabelled SDSS-like .npy stamps (24 px,
    0.396"/px)."""
    src_ids = [f"src{i:03d}" for i in range(40)]
    values = [list(CLASSES)[i % 3] for i in range(40)]
    tgt_ids = [f"tgt{i:03d}" for i in range(30)]
    return {
        "src": _fits(tmp_path / "decals", src_ids, _stamps(40, 32, 0)),
        "labels": _labels(tmp_path / "labels.csv", src_ids, values),
        "tgt": _npy(tmp_path / "sdss", tgt_ids, _stamps(30, 24, 1, sky=0.05)),
        "values": dict(zip(src_ids, values)),
    }


def _spec(inputs, **kw) -> ImportSpec:
    base = dict(source=DomainInput(str(inputs["src"]), str(inputs["labels"])), target=DomainInput(str(inputs["tgt"])),
                id_column="objid", label_column="morph", class_map="E=elliptical,S=spiral,M=merger",
                unknown_classes=["lens"])
    base.update(kw)
    return ImportSpec(**base)


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_labelled_fits_source_and_unlabelled_npy_target(inputs, tmp_path):
    before = {k: _tree_hash(inputs[k]) for k in ("src", "tgt")}
    result = import_dataset(_spec(inputs), tmp_path / "ds", progress=False)
    m = verify(result.folder)
    assert m["origin"] == "imported" and m["target_labels"] == "none"
    assert m["task"]["class_names"] == ["elliptical", "spiral", "merger", "lens"] and m["task"]["num_known"] == 3
    assert m["task"]["target_only_believed"] == ["lens"]
    assert m["bands"] == ["g", "r", "z"] and m["stamp_px"] == 32 and m["surveys"]["target"]["pixel_arcsec"] == 0.262
    assert sum(m["counts"].values()) == 70 and m["counts"]["target/test"] == 6
    data = load_dataset(result.folder)
    cat = pq.read_table(result.folder / "catalogue.parquet").to_pandas()
    src = cat[cat["domain"] == "source"]
    # labels joined by id through the class map; each class split 70/10/20 (stratified)
    assert all(m["task"]["class_names"][lab] == CLASSES[inputs["values"][i]] for i, lab in zip(src["id"], src["label"]))
    per_class = src.groupby(["class_name", "split"]).size().unstack()
    assert (per_class["val"] >= 1).all() and (per_class["test"] >= 2).all()
    assert (cat[cat["domain"] == "target"]["label"] == UNLABELLED).all()
    assert data["target/train"].x.shape[1:] == (3, 32, 32)
    # the inputs were only read
    assert {k: _tree_hash(inputs[k]) for k in ("src", "tgt")} == before


def test_every_input_kind_gives_the_same_stamps(inputs, tmp_path):
    """FITS folder, .npy folder, Parquet and HDF5 of the same target stamps import to the same pixels."""
    flux = _stamps(30, 24, 1, sky=0.05)
    ids = [f"tgt{i:03d}" for i in range(30)]
    kinds = {
        "npy": inputs["tgt"],
        "fits": _fits(tmp_path / "tfits", ids, flux, scale=0.396),
        "parquet": write_parquet_cutouts(tmp_path / "t.parquet", ids, flux, list("grz"), 0.396),
        "hdf5": _hdf5(tmp_path / "t.h5", ids, flux, scale=0.396),
    }
    got = {}
    for kind, path in kinds.items():
        workers = 2 if kind == "fits" else 1  # in worker processes or not, the same pixels
        folder = import_dataset(_spec(inputs, target=DomainInput(str(path)), workers=workers), tmp_path / f"ds_{kind}",
                                progress=False).folder
        cat = pq.read_table(folder / "catalogue.parquet").to_pandas()
        rows = cat[cat["domain"] == "target"].sort_values("id")
        got[kind] = np.load(folder / "pixels.npy")[rows["row"].to_numpy()]
    for kind in ("fits", "parquet", "hdf5"):
        np.testing.assert_allclose(got[kind], got["npy"], atol=1e-6, err_msg=kind)


def test_resampling_conserves_flux_and_matches_a_naive_area_overlap():
    rng = np.random.default_rng(0)
    img = rng.gamma(1.0, 1.0, (2, 3, 20, 20)).astype(np.float32)
    out = resample(img, 0.396, 40, 0.262)  # 40 * 0.262 = 10.5" covers the 7.9" input: nothing cropped
    np.testing.assert_allclose(out.sum(axis=(-2, -1)), img.sum(axis=(-2, -1)), rtol=1e-5)

    def naive(n_in, s_in, n_out, s_out):  # overlap of every pair of 1-D pixels, by brute force on a fine grid
        fine = np.linspace(-n_out * s_out, n_out * s_out, 200001)
        step = fine[1] - fine[0]
        i_in = np.floor((fine + n_in * s_in / 2) / s_in).astype(int)
        i_out = np.floor((fine + n_out * s_out / 2) / s_out).astype(int)
        m = np.zeros((n_out, n_in))
        ok = (i_in >= 0) & (i_in < n_in) & (i_out >= 0) & (i_out < n_out)
        np.add.at(m, (i_out[ok], i_in[ok]), step / s_in)
        return m

    for args in ((20, 0.396, 30, 0.262), (50, 0.168, 24, 0.262), (10, 0.262, 16, 0.262)):
        np.testing.assert_allclose(overlap_matrix(*args), naive(*args), atol=1e-3)  # the fine grid's step
    # same scale: a pixel-exact centred crop, no interpolation
    grid = Grid(("g", "r", "z"), 16, 0.262)
    np.testing.assert_array_equal(conform(img, list("grz"), 0.262, grid, "x"), img[..., 2:18, 2:18])
    # bands are picked in the grid's order
    np.testing.assert_array_equal(conform(img, list("zrg"), 0.262, grid, "x")[:, 0], img[:, 2, 2:18, 2:18])
    with pytest.raises(DataError, match="missing"):
        conform(img, list("gri"), 0.262, grid, "x")


def test_target_labelled_for_evaluation_only(inputs, tmp_path):
    tgt_ids = [f"tgt{i:03d}" for i in range(30)]
    tl = _labels(tmp_path / "tl.parquet", tgt_ids, ["E", "S", "L"] * 10)
    result = import_dataset(_spec(inputs, class_map="E=elliptical,S=spiral,M=merger,L=lens", unknown_classes=[],
                                  target=DomainInput(str(inputs["tgt"]), str(tl))), tmp_path / "ds", progress=False)
    m = read_manifest(result.folder)
    assert m["target_labels"] == "eval"
    # merger never appears in the target labels: it is source-private; lens is found as a target-only class
    assert m["task"]["class_names"] == ["elliptical", "spiral", "merger", "lens"] and m["task"]["shared"] == [0, 1]
    cat = pq.read_table(result.folder / "catalogue.parquet").to_pandas()
    tgt = cat[cat["domain"] == "target"]
    assert sorted(tgt["label"].unique()) == [0, 1, 3]
    assert (tgt.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 2).all()  # stratified


def test_class_map_can_drop_rows_and_must_cover_every_value(inputs, tmp_path):
    result = import_dataset(_spec(inputs, class_map="E=elliptical,S=spiral,M="), tmp_path / "ds", progress=False)
    m = read_manifest(result.folder)
    assert m["task"]["class_names"][:2] == ["elliptical", "spiral"] and m["task"]["num_known"] == 2
    assert sum(v for k, v in m["counts"].items() if k.startswith("source")) == 27  # 13 M rows dropped
    with pytest.raises(DataError, match=r"label values \['M'\] are not in --class-map"):
        import_dataset(_spec(inputs, class_map="E=elliptical,S=spiral"), tmp_path / "ds2", progress=False)
    numeric = _labels(tmp_path / "galaxy10.csv", list(inputs["values"]), [i % 3 for i in range(40)])
    with pytest.raises(DataError, match=r"label values \['0', '1', '2'\] are not usable class names"):
        import_dataset(_spec(inputs, class_map=None, source=DomainInput(str(inputs["src"]), str(numeric))),
                       tmp_path / "ds3", progress=False)
    assert not (tmp_path / "ds2").exists() and not (tmp_path / "ds3").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_truncated_file_sorted_last_fails_in_the_prescan(inputs, tmp_path, workers):
    last = sorted(inputs["src"].iterdir())[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 2000])
    with pytest.raises(DataError, match=rf"{last.name}: .*truncated.*--skip-bad.*\(pre-scan\)"):
        import_dataset(_spec(inputs, workers=workers), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))  # no pixel was copied
    # --skip-bad imports the rest and says why the file was left out
    result = import_dataset(_spec(inputs, skip_bad=True, workers=workers), tmp_path / "ds", progress=False)
    skipped = pd.read_csv(result.folder / SKIPPED)
    assert result.skipped == 1 and skipped["file"].tolist() == [str(last)] and "truncated" in skipped["reason"][0]
    assert sum(v for k, v in result.counts.items() if k.startswith("source")) == 39
    assert last.read_bytes() == data[: len(data) - 2000]  # the user's file is left as it was


def test_nan_pixels_missing_labels_and_duplicates_are_named(inputs, tmp_path):
    f = sorted(inputs["tgt"].glob("*.npy"))[3]
    stamp = np.load(f)
    stamp[0, 5, 5] = np.nan
    np.save(f, stamp)
    with pytest.raises(DataError, match=rf"{f.name}.*non-finite pixels"):
        import_dataset(_spec(inputs), tmp_path / "ds", progress=False)
    labels = pd.read_csv(inputs["labels"]).iloc[1:]  # the first source galaxy loses its label
    labels.to_csv(inputs["labels"], index=False)
    result = import_dataset(_spec(inputs, skip_bad=True), tmp_path / "ds", progress=False)
    reasons = pd.read_csv(result.folder / SKIPPED)["reason"]
    assert result.skipped == 2 and reasons.str.contains("non-finite").sum() == 1
    assert reasons.str.contains("no row in the source label table").sum() == 1
    pd.concat([labels, labels.iloc[:1]]).to_csv(inputs["labels"], index=False)
    with pytest.raises(DataError, match="duplicate id"):
        import_dataset(_spec(inputs), tmp_path / "ds2", progress=False)


def test_units_check_warns_on_counts_and_display_images(inputs, tmp_path):
    quiet = import_dataset(_spec(inputs, source=DomainInput(str(inputs["src"]), str(inputs["labels"]), "decals")),
                           tmp_path / "ok", progress=False)
    assert not [w for w in quiet.warnings if "sky noise" in w]
    ids = [f"src{i:03d}" for i in range(40)]
    counts = _fits(tmp_path / "counts", ids, _stamps(40, 32, 0) * 400)  # ADU, not nanomaggies
    r = import_dataset(_spec(inputs, source=DomainInput(str(counts), str(inputs["labels"]), "decals")),
                       tmp_path / "c", progress=False)
    assert any("sky noise" in w and "decals" in w and str(counts) in w for w in r.warnings)
    display = _npy(tmp_path / "png_like", [f"tgt{i:03d}" for i in range(30)],
                   np.round(np.clip(_stamps(30, 24, 1) * 50 + 20, 0, 255)))
    r = import_dataset(_spec(inputs, target=DomainInput(str(display))), tmp_path / "d", progress=False)
    assert any("display-stretched" in w for w in r.warnings)


def test_grid_options_and_bad_options(inputs, tmp_path):
    r = import_dataset(_spec(inputs, stamp_px=48, pixel_arcsec=0.2, bands=["r", "g"]), tmp_path / "ds", progress=False)
    m = read_manifest(r.folder)
    assert m["stamp_px"] == 48 and m["bands"] == ["r", "g"] and m["surveys"]["source"]["pixel_arcsec"] == 0.2
    assert any("zero-padded" in w for w in r.warnings)  # 32 px at 0.262" cover less than 48 px at 0.2"
    for kw, match in ((dict(source_split=(0.5, 0.5, 0.5)), "source-split"), (dict(target_test_frac=1.0), "target-test"),
                      (dict(stamp_px=2), "stamp-px"), (dict(bands=["g", "i"]), "missing")):
        with pytest.raises((ConfigError, DataError), match=match):
            import_dataset(_spec(inputs, **kw), tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(DataError, match="already exists"):
        import_dataset(_spec(inputs), r.folder, progress=False)


def test_cli_imports_and_reports_errors_in_one_line(inputs, tmp_path, capsys):
    args = ["data", "import", "--source", str(inputs["src"]), "--source-labels", str(inputs["labels"]),
            "--target", str(inputs["tgt"]), "--id-column", "objid", "--label-column", "morph",
            "--class-map", "E=elliptical,S=spiral,M=merger", "--unknown-classes", "lens,artifact"]
    assert main(args + ["--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "pre-scan: 70 file(s)" in out and "wrote" in out and "target/train 24" in out
    assert main(args[:-4] + ["--class-map", "E=elliptical", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(inputs["labels"]) in err
    assert not (tmp_path / "bad").exists()


def test_a_damaged_import_is_never_advised_deleted(inputs, tmp_path):
    folder = import_dataset(_spec(inputs), tmp_path / "mine", progress=False).folder
    pixels = folder / "pixels.npy"
    data = bytearray(pixels.read_bytes())
    data[-10] ^= 0xFF
    pixels.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        verify(folder)
    assert "re-import" in str(e.value) and str(inputs["src"]) in str(e.value) and "delete" not in str(e.value)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DataError) as e:
        load_dataset(folder)
    assert "delete" not in str(e.value) and "uda-sweep data import" in str(e.value)


@pytest.mark.parametrize("kind", ["fits", "npy", "parquet", "hdf5"])
def test_a_damaged_input_of_each_kind_is_named_before_any_pixel_is_copied(inputs, tmp_path, kind):
    flux, ids = _stamps(4, 24, 2), [f"t{i}" for i in range(4)]
    made = {"fits": lambda: _fits(tmp_path / "t", ids, flux, scale=0.396),
            "npy": lambda: _npy(tmp_path / "t", ids, flux),
            "parquet": lambda: write_parquet_cutouts(tmp_path / "t.parquet", ids, flux, list("grz"), 0.396),
            "hdf5": lambda: _hdf5(tmp_path / "t.h5", ids, flux)}[kind]()
    bad = sorted(made.glob("t3.*"))[0] if made.is_dir() else made  # for folders the last stamp file
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{bad.name}.*(truncated|cannot be read)"):
        import_dataset(_spec(inputs, target=DomainInput(str(made))), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))


def test_rows_left_out_keep_ids_and_pixels_aligned(inputs, tmp_path):
    """After rows are dropped (class map) or skipped (NaN), each catalogue row still points at its own stamp."""
    f = sorted(inputs["src"].glob("*.fits"))[4]
    data = fits.getdata(f)
    data[1, 2, 2] = np.nan
    fits.writeto(f, data, fits.getheader(f), overwrite=True)
    r = import_dataset(_spec(inputs, class_map="E=elliptical,S=spiral,M=", skip_bad=True), tmp_path / "ds",
                       progress=False)
    cat = pq.read_table(r.folder / "catalogue.parquet").to_pandas()
    pixels = np.load(r.folder / "pixels.npy")
    assert len(pixels) == len(cat) == 26 + 30 and r.skipped == 1  # 13 M rows dropped, one NaN row skipped
    for _, row in cat[cat["domain"] == "source"].iterrows():
        np.testing.assert_array_equal(pixels[row["row"]], fits.getdata(inputs["src"] / f"{row['id']}.fits"))
    assert set(cat[cat["domain"] == "source"]["label_value"]) == {"E", "S"}


def test_unknown_or_impossible_pixel_scales_are_refused(inputs, tmp_path):
    (inputs["tgt"] / "cutouts.json").write_text(json.dumps({"bands": "grz"}))
    with pytest.raises(ConfigError, match="do not record their pixel scale; pass --target-pixel-arcsec"):
        import_dataset(_spec(inputs), tmp_path / "ds", progress=False)
    ok = import_dataset(_spec(inputs, target=DomainInput(str(inputs["tgt"]), pixel_arcsec=0.396)), tmp_path / "ds",
                        progress=False)
    assert read_manifest(ok.folder)["counts"]["target/train"] == 24
    with pytest.raises(ConfigError, match="--target-pixel-arcsec 0.0"):
        import_dataset(_spec(inputs, target=DomainInput(str(inputs["tgt"]), pixel_arcsec=0.0)), tmp_path / "x",
                       progress=False)
    (inputs["tgt"] / "cutouts.json").write_text(json.dumps({"bands": "grz", "pixel_arcsec": -0.4}))
    with pytest.raises(DataError, match="cutouts.json.*not a pixel scale"):
        import_dataset(_spec(inputs), tmp_path / "y", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_file_that_fails_only_when_read_costs_only_itself(inputs, tmp_path, monkeypatch):
    """A file whose header passed the pre-scan but whose pixels cannot be read: its shard is retried file by file."""
    from uda_core.data import readers

    victim = str(sorted(inputs["src"].glob("*.fits"))[7])
    original = readers._FitsSource._open

    def damaged(file, with_data, layout=True):
        if with_data and file == victim:
            raise DataError(f"{file}: cannot be read as FITS (damaged data)")
        return original(file, with_data, layout)

    monkeypatch.setattr(readers._FitsSource, "_open", staticmethod(damaged))
    with pytest.raises(DataError, match=r"src007\.fits: cannot be read.*\(reading pixels\)"):
        import_dataset(_spec(inputs), tmp_path / "ds", progress=False)
    r = import_dataset(_spec(inputs, skip_bad=True), tmp_path / "ds", progress=False)
    assert r.skipped == 1 and pd.read_csv(r.folder / SKIPPED)["file"].tolist() == [victim]
    assert sum(v for k, v in r.counts.items() if k.startswith("source")) == 39


def test_npy_bands_given_per_survey_and_show_draws_one_band(inputs, tmp_path):
    from uda_core.data.show import show_dataset

    (inputs["tgt"] / "cutouts.json").unlink()
    with pytest.raises(ConfigError, match="--target-bands"):
        import_dataset(_spec(inputs), tmp_path / "x", progress=False)
    r = import_dataset(_spec(inputs, bands=["r"], target=DomainInput(str(inputs["tgt"]), pixel_arcsec=0.396,
                                                                      bands=["z", "r", "g"])), tmp_path / "ds",
                       progress=False)
    cat = pq.read_table(r.folder / "catalogue.parquet").to_pandas()
    row = cat[cat["domain"] == "target"].iloc[0]
    stamp = np.load(inputs["tgt"] / f"{row['id']}.npy")
    grid = Grid(("r",), 32, 0.262)
    np.testing.assert_allclose(np.load(r.folder / "pixels.npy")[row["row"]], conform(stamp[None], list("zrg"), 0.396,
                                                                                     grid, "x")[0], atol=1e-6)
    assert show_dataset(r.folder, tmp_path / "one_band.png").stat().st_size > 1000


def test_label_table_and_class_mistakes_fail_before_any_pixel(inputs, tmp_path):
    with pytest.raises(ConfigError, match=r"--unknown-classes \['spiral'\]: these are labelled in the source"):
        import_dataset(_spec(inputs, unknown_classes=["spiral"]), tmp_path / "ds", progress=False)
    parquet = _labels(tmp_path / "labels.parquet", list(inputs["values"]), list(inputs["values"].values()))
    for table in (inputs["labels"], parquet):
        with pytest.raises(DataError, match=r"no column\(s\) \['nope'\]; it has \['objid', 'morph'\]"):
            import_dataset(_spec(inputs, label_column="nope", source=DomainInput(str(inputs["src"]), str(table))),
                           tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))
