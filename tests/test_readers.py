from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from uda_core.data.readers import CutoutSource, DataError, open_cutouts, write_parquet_cutouts
from uda_core.data.store import CATALOGUE, PIXELS, read_manifest

N, C, H = 6, 3, 16


@pytest.fixture
def stamps() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    flux = rng.uniform(0.01, 5.0, size=(N, C, H, H)).astype(np.float32)
    return [f"gal{i}" for i in range(N)], flux


def write_fits(path: Path, flux: np.ndarray, bands: str = "grz", nan: bool = False) -> Path:
    """A Legacy Survey style cutout: (C, H, W) float32 primary HDU, BANDS header and a TAN WCS at 0.262"/px."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cdelt = [-0.262 / 3600, 0.262 / 3600]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [H / 2, H / 2]
    data = flux.copy()
    if nan:
        data[1, 3, 4] = np.nan
    hdu = fits.PrimaryHDU(data, header=wcs.to_header())
    hdu.header["BANDS"] = bands
    hdu.writeto(path)
    return path


def write_fits_folder(folder: Path, ids, flux) -> Path:
    folder.mkdir()
    for i, f in zip(ids, flux):
        write_fits(folder / f"{i}.fits", f)
    return folder


def concat(source: CutoutSource, rows_per_shard: int):
    batches = list(source.batches(rows_per_shard))
    assert len(batches) > 1  # the test must cross shard boundaries
    return (np.concatenate([b.ids for b in batches]), np.concatenate([b.flux for b in batches]),
            np.concatenate([b.source_file for b in batches]), np.concatenate([b.source_index for b in batches]))


def test_dataset_domains_and_round_trip(tiny_folder):
    manifest = read_manifest(tiny_folder)
    counts = {d: sum(n for k, n in manifest["counts"].items() if k.startswith(d + "/")) for d in ("source", "target")}
    src, tgt, both = (open_cutouts(tiny_folder, d) for d in ("source", "target", "all"))
    assert (src.kind, src.num_rows, tgt.num_rows, both.num_rows) == ("dataset", counts["source"], counts["target"],
                                                                      counts["source"] + counts["target"])
    assert tgt.bands == manifest["bands"] and tgt.stamp_shape == (len(manifest["bands"]), 32, 32)
    assert src.pixel_arcsec == manifest["surveys"]["source"]["pixel_arcsec"]
    assert tgt.pixel_arcsec == manifest["surveys"]["target"]["pixel_arcsec"] != src.pixel_arcsec
    assert both.pixel_arcsec is None  # decals and sdss pixels differ

    cat = pq.read_table(tiny_folder / CATALOGUE).to_pandas()
    cat = cat[cat["domain"] == "target"]
    pixels = np.load(tiny_folder / PIXELS)
    ids, flux, files, index = concat(tgt, 150)
    assert ids.tolist() == cat["id"].tolist()
    assert flux.dtype == np.float32 and np.array_equal(flux, pixels[cat["row"].to_numpy()].astype(np.float32))
    assert set(files) == {str((tiny_folder / PIXELS).resolve())}
    assert np.array_equal(index, cat["row"].to_numpy())
    assert np.array_equal(tgt.read_at(files[0], [int(index[7]), int(index[2])]), flux[[7, 2]])
    with pytest.raises(DataError, match="domain"):
        open_cutouts(tiny_folder, "test")


def test_fits_round_trip(tmp_path, stamps):
    ids, flux = stamps
    folder = write_fits_folder(tmp_path / "cutouts", ids, flux)
    src = open_cutouts(folder)
    assert (src.kind, src.bands, src.stamp_shape, src.num_rows) == ("fits", ["g", "r", "z"], (C, H, H), N)
    assert src.pixel_arcsec == pytest.approx(0.262, rel=1e-6)
    got_ids, got, files, index = concat(src, 4)
    assert got_ids.tolist() == ids and np.array_equal(got, flux)
    assert files.tolist() == [str(folder.resolve() / f"{i}.fits") for i in ids] and not index.any()
    shard = src.shards(4)[1]
    assert len(shard.files) == 2 and (shard.start, shard.stop) == (4, 6)
    assert np.array_equal(pickle.loads(pickle.dumps(src)).read(shard).flux, flux[4:])  # ships to other processes
    assert np.array_equal(src.read_at(files[3], [0]), flux[3:4])


def test_fits_band_keywords_pixscale_and_gzip(tmp_path, stamps):
    _, flux = stamps
    folder = tmp_path / "gz"
    folder.mkdir()
    for i in range(2):
        hdu = fits.PrimaryHDU(flux[i, 0])  # a 2-D image is one band
        hdu.header["BAND0"], hdu.header["PIXSCALE"] = "r", 0.396
        hdu.writeto(folder / f"s{i}.fits.gz")
    src = open_cutouts(folder)
    assert (src.bands, src.stamp_shape, src.pixel_arcsec) == (["r"], (1, H, H), 0.396)
    batch = src.read(src.shards()[0])
    assert batch.ids.tolist() == ["s0", "s1"] and np.array_equal(batch.flux[:, 0], flux[:2, 0])


def test_parquet_round_trip(tmp_path, stamps):
    _, flux = stamps
    path = write_parquet_cutouts(tmp_path / "cut.parquet", list(range(100, 106)), flux, ["g", "r", "z"], 0.262,
                                 rows_per_group=2)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    src = open_cutouts(path)
    assert (src.kind, src.bands, src.pixel_arcsec, src.stamp_shape, src.num_rows) == \
        ("parquet", ["g", "r", "z"], 0.262, (C, H, H), N)
    ids, got, files, index = concat(src, 3)  # row groups [0, 2) and [2, 3)
    assert ids.tolist() == [str(i) for i in range(100, 106)] and np.array_equal(got, flux)
    assert np.array_equal(index, np.arange(N)) and set(files) == {str(path.resolve())}
    assert np.array_equal(src.read_at(files[0], [5, 0, 3]), flux[[5, 0, 3]])


def test_parquet_folder_of_shards(tmp_path, stamps):
    ids, flux = stamps
    write_parquet_cutouts(tmp_path / "p" / "a.parquet", ids[:4], flux[:4], ["g", "r", "z"], None)
    write_parquet_cutouts(tmp_path / "p" / "b.parquet", ids[4:], flux[4:], ["g", "r", "z"], None)
    src = open_cutouts(tmp_path / "p")
    assert src.num_rows == N and src.pixel_arcsec is None
    got_ids, got, files, index = concat(src, 1024)
    assert got_ids.tolist() == ids and np.array_equal(got, flux) and index.tolist() == [0, 1, 2, 3, 0, 1]
    assert np.array_equal(src.read_at(files[5], [1]), flux[5:6])


def write_h5(path: Path, images: np.ndarray, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), compression="gzip")
        for key, value in datasets.items():
            f[key] = value
    return path


def test_hdf5_round_trip(tmp_path, stamps):
    ids, flux = stamps
    path = write_h5(tmp_path / "g10.h5", flux.transpose(0, 2, 3, 1), pxscale=np.full(N, 0.262))
    src = open_cutouts(path)
    assert (src.kind, src.bands, src.pixel_arcsec, src.stamp_shape, src.num_rows) == \
        ("hdf5", ["g", "r", "z"], 0.262, (C, H, H), N)
    got_ids, got, files, index = concat(src, 4)
    assert got_ids.tolist() == [str(i) for i in range(N)] and np.array_equal(got, flux)
    assert np.array_equal(index, np.arange(N)) and np.array_equal(src.read_at(files[0], [4, 1]), flux[[4, 1]])

    named = write_h5(tmp_path / "named.hdf5", flux.transpose(0, 2, 3, 1), id=np.array(ids, dtype=h5py.string_dtype()))
    with h5py.File(named, "a") as f:
        f.attrs["bands"] = "g,r,i"
    src = open_cutouts(named)
    assert src.bands == ["g", "r", "i"] and src.pixel_arcsec is None
    assert src.read(src.shards(4)[1]).ids.tolist() == ids[4:]


def test_hdf5_uint8_and_varying_pxscale_are_refused(tmp_path, stamps):
    _, flux = stamps
    path = write_h5(tmp_path / "Galaxy10_DECals.h5", np.zeros((N, H, H, C), dtype=np.uint8))
    with pytest.raises(DataError, match=r"Galaxy10_DECals\.h5.*uint8.*float32 nanomaggies"):
        open_cutouts(path)
    scales = np.full(N, 0.262)
    scales[4] = 0.396
    path = write_h5(tmp_path / "mixed.h5", flux.transpose(0, 2, 3, 1), pxscale=scales)
    with pytest.raises(DataError, match=r"mixed\.h5.*row 4"):
        open_cutouts(path)


def test_fits_nan_pixel_names_file_and_row(tmp_path, stamps):
    ids, flux = stamps
    folder = write_fits_folder(tmp_path / "c", ids[:3], flux[:3])
    write_fits(folder / "gal9.fits", flux[3], nan=True)
    src = open_cutouts(folder)
    with pytest.raises(DataError, match=r"gal9\.fits: row 0 \(id 'gal9'\).*mask or drop it"):
        list(src.batches(2))


def test_fits_other_bands_than_first(tmp_path, stamps):
    ids, flux = stamps
    folder = write_fits_folder(tmp_path / "c", ids[:2], flux[:2])
    write_fits(folder / "odd.fits", flux[2], bands="g,r,i")
    with pytest.raises(DataError, match=r"odd\.fits: bands \['g', 'r', 'i'\]"):
        list(open_cutouts(folder).batches())


def test_truncated_fits(tmp_path, stamps):
    ids, flux = stamps
    folder = write_fits_folder(tmp_path / "c", ids[:2], flux[:2])
    whole = write_fits(tmp_path / "whole.fits", flux[2]).read_bytes()
    (folder / "zcut.fits").write_bytes(whole[: len(whole) // 2])  # sorted last: open reads only the first header
    src = open_cutouts(folder)
    with pytest.raises(DataError, match=r"zcut\.fits: cannot be read.*re-download or re-write it.*--skip-bad"):
        list(src.batches())
    with pytest.raises(DataError, match=r"zcut\.fits: cannot be read"):
        open_cutouts(folder / "zcut.fits")  # one file given directly: its header check fails at once


def test_parquet_without_flux(tmp_path):
    path = tmp_path / "nof.parquet"
    pq.write_table(pa.table({"id": ["a"], "image": [1.0]}).replace_schema_metadata({b"bands": b"g,r,z"}), path)
    with pytest.raises(DataError, match=r"nof\.parquet: missing column\(s\) \['flux'\].*fixed_shape_tensor"):
        open_cutouts(path)


def test_unsupported_and_missing_paths(tmp_path):
    txt = tmp_path / "list.txt"
    txt.write_text("nothing")
    with pytest.raises(DataError, match=r"list\.txt: not a supported") as e:
        open_cutouts(txt)
    for kind in ("manifest.json", "FITS", ".parquet", ".h5"):
        assert kind in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        open_cutouts(tmp_path / "nowhere")
