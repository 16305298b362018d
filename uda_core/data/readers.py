"""Streaming readers of galaxy cutouts, for predicting a catalogue with a trained model.

Four inputs are understood, all delivering float32 fluxes in nanomaggies shaped (n, bands, H, W):
  dataset  a folder with manifest.json made by this project (store.py); the rows of one domain, in catalogue order
  fits     a folder of Legacy Survey style FITS cutouts (*.fits, *.fits.gz, *.fits.fz), one stamp per file,
           bands from the header (BANDS or BAND0, BAND1, ...), pixel scale from the WCS or PIXSCALE
  parquet  a .parquet file or a folder of them: column `id` and column `flux` of pyarrow's fixed_shape_tensor
           type, schema metadata `bands` (comma-separated) and optionally `pixel_arcsec`
  hdf5     a .h5/.hdf5 file in the Galaxy10 DECaLS layout: `images` (N, H, W, C) (or channel-first (N, C, H, W)
           when only that reading gives square stamps of the bands' planes), optional `pxscale` and `id`
  npy      a folder of .npy stamps, one (bands, H, W) or (H, W) float array per file, the file name is the id; bands
           and pixel scale from a `cutouts.json` beside them ({"bands": "grz", "pixel_arcsec": 0.262}) or the caller

`ConformedSource` wraps any of them to deliver stamps on a model's grid (band order, pixel scale, stamp size), with
the flux-conserving resampling of `geometry.conform`; `uda-sweep data import` and `predict` share it.

`open_cutouts` reads only metadata, so a bad input fails in seconds, before any expensive work. The work is then
cut into `Shard`s (small and picklable, so they can be shipped to other processes) and each is `read` on its own;
sources open files per call and hold no open handles, so they pickle too.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .geometry import Grid, conform
from .store import CATALOGUE, MANIFEST, PIXELS, mend_advice, read_manifest

__all__ = ["Shard", "CutoutBatch", "CutoutSource", "ConformedSource", "open_cutouts", "open_scanned",
           "write_parquet_cutouts", "fits_layout", "npy_layout", "NPY_SIDECAR"]

FITS_SUFFIXES = (".fits", ".fits.gz", ".fits.fz")
HDF5_SUFFIXES = (".h5", ".hdf5")
GALAXY10_BANDS = ["g", "r", "z"]
NPY_SIDECAR = "cutouts.json"
SUPPORTED = (
    "a data set folder (with manifest.json); a folder of FITS cutouts (*.fits, *.fits.gz, *.fits.fz); "
    "a .parquet file or a folder of them (columns id and flux); a Galaxy10-layout .h5/.hdf5 file; "
    "a folder of .npy stamps"
)
# A corrupt file is the user's own: advise mending or leaving it out, never deleting their data.
MEND = "re-download or re-write it (`uda-sweep data import --skip-bad` leaves such files out)"


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of one file; for FITS folders `files` holds the group of files and start/stop are
    their positions in the folder's sorted file list; for Parquet start/stop are row-group indices."""

    file: str
    start: int
    stop: int
    files: tuple[str, ...] = ()


@dataclass
class CutoutBatch:
    ids: np.ndarray  # str (object dtype), one per row
    flux: np.ndarray  # float32 (n, C, H, W), nanomaggies
    source_file: np.ndarray  # str, the file each row came from (absolute path)
    source_index: np.ndarray  # int64, the row within that file (0 for one-stamp FITS files)

    def __len__(self) -> int:
        return len(self.ids)


def _parse_bands(value) -> list[str]:
    """'grz', 'g,r,z', b'grz' or a sequence of names -> ['g', 'r', 'z']."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = value.strip()
        return [b.strip() for b in value.split(",")] if "," in value else list(value)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def _same_scale(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=0.01))


def _steps(n: int, size: int) -> list[tuple[int, int]]:
    if size < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {size}")
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


class CutoutSource:
    """Base class: one subclass per input kind."""

    kind: str
    check_finite: bool = True  # refuse a shard with non-finite pixels (import turns it off and checks per row)
    path: Path
    bands: list[str]
    pixel_arcsec: float | None
    stamp_shape: tuple[int, int, int]
    num_rows: int

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        raise NotImplementedError

    def read(self, shard: Shard) -> CutoutBatch:
        raise NotImplementedError

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        """Stamps by (source_file, source_index) as a batch reports them; float32 (len(indices), C, H, W)."""
        raise NotImplementedError

    def batches(self, rows_per_shard: int = 1024) -> Iterator[CutoutBatch]:
        for shard in self.shards(rows_per_shard):
            yield self.read(shard)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, rows={self.num_rows}, bands={self.bands}, "
                f"stamp={self.stamp_shape}, pixel_arcsec={self.pixel_arcsec})")

    def _batch(self, ids, flux: np.ndarray, files, index) -> CutoutBatch:
        """Assemble a batch, refusing non-finite pixels: a NaN would silently become a wrong prediction."""
        n = len(flux)
        batch = CutoutBatch(
            np.array([str(i) for i in ids], dtype=object),
            np.ascontiguousarray(flux, dtype=np.float32),
            np.array([files] * n if isinstance(files, str) else list(files), dtype=object),
            np.asarray(index, dtype=np.int64).reshape(n),
        )
        bad = ~np.isfinite(batch.flux).all(axis=(1, 2, 3))
        if bad.any() and self.check_finite:
            i = int(np.argmax(bad))
            raise DataError(f"{batch.source_file[i]}: row {batch.source_index[i]} (id {batch.ids[i]!r}) has non-finite "
                            f"pixels ({int(bad.sum())} such rows in this shard); mask or drop it before predicting")
        return batch

    def _check_file(self, file: str, allowed: Sequence[str]) -> None:
        if file not in allowed:
            raise DataError(f"{file}: not a file of {self.path}; pass a source_file value from a batch of this source")


class _DatasetSource(CutoutSource):
    kind = "dataset"

    def __init__(self, folder: Path, domain: str):
        if domain not in ("source", "target", "all"):
            raise DataError(f"domain {domain!r}: choose 'source', 'target' or 'all'")
        manifest = read_manifest(folder)  # no fingerprint: hashing the pixels would cost as much as reading them
        try:
            cat = pq.read_table(folder / CATALOGUE, columns=["id", "row", "domain"]).to_pandas()
            pixels = np.load(folder / PIXELS, mmap_mode="r")  # reads the header only
        except Exception as e:  # pyarrow and numpy raise many types on missing or corrupt files
            raise DataError(f"{folder}: cannot read ({type(e).__name__}: {e}); "
                            f"{mend_advice(folder, manifest)}") from None
        if domain != "all":
            cat = cat[cat["domain"] == domain]
        self.path, self.bands = folder, list(manifest["bands"])
        if pixels.ndim != 4 or pixels.shape[1] != len(self.bands):
            raise DataError(f"{folder / PIXELS}: shape {pixels.shape} does not match bands {self.bands}; "
                            f"{mend_advice(folder, manifest)}")
        self.stamp_shape = tuple(int(s) for s in pixels.shape[1:])
        scales = {d: manifest["surveys"][d]["pixel_arcsec"] for d in ("source", "target")}
        if domain == "all":
            self.pixel_arcsec = scales["source"] if _same_scale(scales["source"], scales["target"]) else None
        else:
            self.pixel_arcsec = scales[domain]
        self._ids = cat["id"].astype(str).to_numpy(dtype=object)
        self._rows = cat["row"].to_numpy(dtype=np.int64)
        self._pixels = str(folder / PIXELS)
        self.num_rows = len(self._rows)

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        return [Shard(self._pixels, lo, hi) for lo, hi in _steps(self.num_rows, rows_per_shard)]

    def read(self, shard: Shard) -> CutoutBatch:
        rows = self._rows[shard.start : shard.stop]
        return self._batch(self._ids[shard.start : shard.stop], self._read_rows(rows), self._pixels, rows)

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        self._check_file(file, [self._pixels])
        return self._read_rows(np.asarray(indices, dtype=np.int64)).astype(np.float32)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        # mapped per call, not kept: a pickled memmap would carry the whole array along
        return np.load(self._pixels, mmap_mode="r")[rows]


class _FitsSource(CutoutSource):
    kind = "fits"

    def __init__(self, path: Path, files: Sequence[str] | None = None, layout: tuple | None = None):
        """`files` and their common `layout` (bands, shape, pixel scale) when a pre-scan grouped them already."""
        self.path = path
        if files is None:
            found = [path] if path.is_file() else [p for p in path.iterdir() if p.name.lower().endswith(FITS_SUFFIXES)]
            files = [str(p) for p in sorted(found)]
        self._files = list(files)
        self._scanned = layout is not None
        if layout is None:
            _, *layout = self._open(self._files[0], with_data=False)
        self.bands, self.stamp_shape, self.pixel_arcsec = list(layout[0]), tuple(layout[1]), layout[2]
        self.num_rows = len(self._files)

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        steps = _steps(self.num_rows, rows_per_shard)
        return [Shard(str(self.path), lo, hi, tuple(self._files[lo:hi])) for lo, hi in steps]

    def read(self, shard: Shard) -> CutoutBatch:
        files = shard.files or tuple(self._files[shard.start : shard.stop])
        flux = np.stack([self._read_one(f) for f in files]) if files else np.zeros((0, *self.stamp_shape))
        return self._batch([_fits_id(f) for f in files], flux, files, np.zeros(len(files)))

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        self._check_file(file, self._files)
        if any(i != 0 for i in indices):
            raise DataError(f"{file}: a FITS cutout holds one stamp (index 0), asked for {list(indices)}")
        return np.stack([self._read_one(file) for _ in indices]).astype(np.float32)

    def _read_one(self, file: str) -> np.ndarray:
        if self._scanned:  # the pre-scan read this file's bands and scale: only the shape can have changed since
            data, _, shape, _ = self._open(file, with_data=True, layout=False)
            if shape != self.stamp_shape:
                raise DataError(f"{file}: stamp {shape} changed since the pre-scan read {self.stamp_shape}")
            return data
        data, bands, shape, scale = self._open(file, with_data=True)
        if bands != self.bands or shape != self.stamp_shape or not _same_scale(scale, self.pixel_arcsec):
            raise DataError(f"{file}: bands {bands}, stamp {shape}, pixel scale {scale} arcsec differ from the first "
                            f"file's ({self.bands}, {self.stamp_shape}, {self.pixel_arcsec}); one folder must hold "
                            "cutouts of one layout: move it elsewhere")
        return data

    @staticmethod
    def _open(file: str, with_data: bool, layout: bool = True):
        """(data or None, bands, (C, H, W), arcsec per pixel or None) from the first image HDU of `file`; with
        `layout` False (files a pre-scan has read already) bands and pixel scale are not parsed again (None)."""
        from astropy.io import fits

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="File may have been truncated")  # else only a warning
                with fits.open(file, memmap=False) as hdul:
                    # .fits.fz files keep the image in HDU 1 behind an empty primary HDU
                    hdu = next((h for h in hdul if h.is_image and h.shape), None)
                    if hdu is None:
                        raise DataError(f"{file}: no image HDU; expected a (bands, H, W) cutout in nanomaggies")
                    headers = (hdu.header, hdul[0].header)
                    shape = tuple(int(s) for s in hdu.shape)
                    shape = (1, *shape) if len(shape) == 2 else shape  # a 2-D image is one band
                    if len(shape) != 3:
                        raise DataError(f"{file}: image shape {shape}; expected (bands, H, W) or (H, W)")
                    integer = hdu.header.get("BITPIX", -32) > 0 and "BSCALE" not in hdu.header
                    data = hdu.data if with_data else None
                    if integer or (data is not None and data.dtype.kind != "f"):
                        raise DataError(f"{file}: pixels are integers (BITPIX {hdu.header.get('BITPIX')}), expected "
                                        "float fluxes in nanomaggies "
                                        "(Legacy Survey fits-cutout, not jpeg-cutout)")
                    data = None if data is None else np.asarray(data, dtype=np.float32).reshape(shape)
                    scale = _fits_pixel_scale(hdu.header, headers) if layout else None
        except DataError:
            raise
        except Exception as e:  # astropy, gzip and zlib raise many types on damaged files
            raise DataError(f"{file}: cannot be read as FITS ({type(e).__name__}: {e}); the file is corrupt or "
                            f"truncated: {MEND}") from None
        return data, _fits_bands(file, headers, shape[0]) if layout else None, shape, scale


def fits_layout(file: str) -> tuple[list[str], tuple[int, int, int], float | None]:
    """(bands, (C, H, W), arcsec per pixel or None) of one FITS cutout from its header: the pre-scan's check."""
    _, bands, shape, scale = _FitsSource._open(file, with_data=False)
    return bands, shape, scale


def _fits_id(file: str) -> str:
    name = Path(file).name
    return next(name[: -len(s)] for s in FITS_SUFFIXES if name.lower().endswith(s))


def _fits_bands(file: str, headers, n: int) -> list[str]:
    for h in headers:
        if "BANDS" in h:
            bands = _parse_bands(h["BANDS"])
            break
        if "BAND0" in h:
            bands = [str(h.get(f"BAND{i}", "")).strip() for i in range(n)]
            break
    else:
        raise DataError(f"{file}: header has neither BANDS nor BAND0, BAND1, ...; add e.g. BANDS='grz' to the header")
    if len(bands) != n or "" in bands:
        raise DataError(f"{file}: header bands {bands} do not name the image's {n} planes; fix BANDS/BANDi")
    return bands


def _fits_pixel_scale(header, headers) -> float | None:
    # only the cards that set the pixel scale matrix (not CRVAL/CRPIX, which move with each cutout), so the WCS,
    # the slowest part of reading a cutout, is built once per folder
    cards = tuple((k, header[k]) for k in header if _WCS_SCALE_KEY.match(k))
    scale = _wcs_pixel_scale(cards) if cards else None
    if scale is None:
        scale = next((h["PIXSCALE"] for h in headers if "PIXSCALE" in h), None)
    return None if scale is None else float(scale)


_WCS_SCALE_KEY = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CDELT\d|CD\d_\d|PC\d_\d|CROTA\d)$")


@functools.lru_cache(maxsize=64)
def _wcs_pixel_scale(cards: tuple) -> float | None:
    from astropy.io.fits import Header
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(Header(list(cards)))
        if wcs.has_celestial:
            return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)  # degrees -> arcsec
    except Exception:  # an unusable WCS: fall back to PIXSCALE
        pass
    return None


class _ParquetSource(CutoutSource):
    kind = "parquet"

    def __init__(self, path: Path):
        self.path = path
        self._files = [str(path)] if path.is_file() else [str(p) for p in sorted(path.glob("*.parquet"))]
        self._offsets: dict[str, np.ndarray] = {}  # per file: first row of each row group, then the row count
        first = None
        for f in self._files:
            meta, layout = self._layout(f)
            first = first or layout
            if layout[0] != first[0] or layout[1] != first[1] or not _same_scale(layout[2], first[2]):
                raise DataError(f"{f}: bands {layout[0]}, stamp {layout[1]}, pixel_arcsec {layout[2]} differ from "
                                f"{self._files[0]} ({first[0]}, {first[1]}, {first[2]}); one folder, one layout")
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self._offsets[f] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.bands, self.stamp_shape, self.pixel_arcsec = first
        self.num_rows = int(sum(o[-1] for o in self._offsets.values()))

    @staticmethod
    def _layout(file: str):
        expected = ("expected column id, column flux of type fixed_shape_tensor(float32, [C, H, W]) and schema "
                    "metadata bands='g,r,z' (write it with uda_core.data.readers.write_parquet_cutouts)")
        try:
            pf = pq.ParquetFile(file)
        except Exception as e:
            raise DataError(f"{file}: cannot be read as Parquet ({type(e).__name__}: {e}); {MEND}") from None
        schema = pf.schema_arrow
        schema_meta = schema.metadata or {}
        missing = [c for c in ("id", "flux") if c not in schema.names]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing}; {expected}")
        flux = schema.field("flux").type
        tensor = isinstance(flux, pa.FixedShapeTensorType)
        if not tensor or len(flux.shape) != 3 or not pa.types.is_floating(flux.value_type):
            raise DataError(f"{file}: column flux has type {flux}; {expected}")
        if b"bands" not in schema_meta:
            raise DataError(f"{file}: schema metadata lacks 'bands'; {expected}")
        bands = _parse_bands(schema_meta[b"bands"].decode())
        shape = tuple(int(s) for s in flux.shape)
        if len(bands) != shape[0]:
            raise DataError(f"{file}: metadata bands {bands} but flux has {shape[0]} planes; {expected}")
        scale = float(schema_meta[b"pixel_arcsec"]) if b"pixel_arcsec" in schema_meta else None
        return pf.metadata, (bands, shape, scale)

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        _steps(0, rows_per_shard)
        out = []
        for f, offsets in self._offsets.items():  # whole row groups, about rows_per_shard rows each
            start = 0
            for g in range(1, len(offsets)):
                if offsets[g] - offsets[start] >= rows_per_shard or g == len(offsets) - 1:
                    out.append(Shard(f, start, g))
                    start = g
        return out

    def read(self, shard: Shard) -> CutoutBatch:
        ids, flux = self._read_groups(shard.file, range(shard.start, shard.stop))
        first = self._offsets[shard.file][shard.start]
        return self._batch(ids, flux, shard.file, np.arange(first, first + len(flux)))

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        self._check_file(file, self._files)
        offsets, idx = self._offsets[file], np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= offsets[-1]):
            raise DataError(f"{file}: row indices {list(indices)} outside 0..{offsets[-1] - 1}")
        group_of = np.searchsorted(offsets, idx, side="right") - 1
        groups = sorted(set(group_of.tolist()))
        _, flux = self._read_groups(file, groups)
        sizes = np.diff(offsets)[groups]
        begins = dict(zip(groups, np.cumsum(sizes) - sizes))  # where each group read starts within `flux`
        local = [begins[g] + i - offsets[g] for i, g in zip(idx, group_of)]
        return flux[np.asarray(local, dtype=np.int64)].astype(np.float32)

    def _read_groups(self, file: str, groups) -> tuple[list, np.ndarray]:
        try:
            table = pq.ParquetFile(file).read_row_groups(list(groups), columns=["id", "flux"])
        except Exception as e:
            raise DataError(f"{file}: row groups {list(groups)} "
                            f"cannot be read ({type(e).__name__}: {e}); {MEND}") from None
        if table.num_rows == 0:
            return [], np.zeros((0, *self.stamp_shape), dtype=np.float32)
        return table.column("id").to_pylist(), table.column("flux").combine_chunks().to_numpy_ndarray()


class _Hdf5Source(CutoutSource):
    kind = "hdf5"

    def __init__(self, path: Path):
        self.path, self._file = path, str(path)
        with self._h5() as f:
            if "images" not in f:
                raise DataError(f"{path}: no dataset 'images' (found {sorted(f.keys())}); expected the Galaxy10 "
                                "DECaLS layout: images (N, H, W, C) float32 nanomaggies")
            images = f["images"]
            if images.ndim != 4:
                raise DataError(f"{path}: images has shape {images.shape}; expected (N, H, W, C), channel-last, "
                                "or (N, C, H, W), channel-first")
            if images.dtype.kind != "f":
                raise DataError(
                    f"{path}: images are {images.dtype}, not float fluxes. The released Galaxy10 DECaLS file holds "
                    "display-stretched uint8 RGB images, but models here are trained on float nanomaggy fluxes "
                    "(Legacy Survey FITS cutouts); convert the images to float32 nanomaggies (e.g. fetch the FITS "
                    "cutouts for the same ra/dec) and try again")
            raw = f.attrs.get("bands", images.attrs.get("bands"))
            self.bands = GALAXY10_BANDS if raw is None else _parse_bands(raw)
            self._channel_first = self._is_channel_first(images.shape, raw is not None)
            n, h, w, c = (int(s) for s in images.shape)
            if self._channel_first:
                n, c, h, w = (int(s) for s in images.shape)
            self.pixel_arcsec = self._pixel_scale(f, n)
            self._has_id = "id" in f
            if self._has_id and f["id"].shape[:1] != (n,):
                raise DataError(f"{path}: dataset id has shape {f['id'].shape}, images has {n} rows; one id per image")
        self.stamp_shape, self.num_rows = (c, h, w), n

    def _is_channel_first(self, shape: tuple, bands_given: bool) -> bool:
        """Galaxy10 stores (N, H, W, C); (N, C, H, W) is taken when only it has square stamps of len(bands)
        planes. Anything else gets advice that fits the shape."""
        nb = len(self.bands)
        last = shape[1] == shape[2] and shape[3] == nb
        first = shape[2] == shape[3] and shape[1] == nb
        if last or first:
            return first and not last
        planes = shape[3] if shape[1] == shape[2] else shape[1] if shape[2] == shape[3] else None
        if planes is None:
            raise DataError(f"{self.path}: images has shape {tuple(shape)}, which holds no square stamps; expected "
                            "(N, H, W, C) channel-last (the Galaxy10 layout) or (N, C, H, W) channel-first")
        source = "its attribute bands" if bands_given else f"the Galaxy10 default {GALAXY10_BANDS}"
        raise DataError(f"{self.path}: images has shape {tuple(shape)}, stamps of {planes} planes, but {source} "
                        f"names {nb}: {self.bands}; set the file (or images) attribute bands to one band per plane, "
                        f"in order (e.g. '{'grizy'[:planes]}')")

    def _to_nchw(self, images: np.ndarray) -> np.ndarray:
        return images if self._channel_first else images.transpose(0, 3, 1, 2)

    def _h5(self):
        import h5py

        try:
            return h5py.File(self._file, "r")
        except Exception as e:
            raise DataError(f"{self._file}: cannot be read as HDF5 ({type(e).__name__}: {e}); {MEND}") from None

    def _pixel_scale(self, f, n: int) -> float | None:
        if "pxscale" not in f:
            return None
        scale = np.asarray(f["pxscale"][()], dtype=np.float64).ravel()
        if scale.size not in (1, n) or not np.isfinite(scale).all():
            raise DataError(f"{self.path}: pxscale must be one finite value or one per image, got {scale.size} values")
        if not np.allclose(scale, scale[0], rtol=0.01, atol=0):
            i = int(np.argmax(~np.isclose(scale, scale[0], rtol=0.01, atol=0)))
            raise DataError(f"{self.path}: pxscale varies (row 0: {scale[0]}, row {i}: {scale[i]} arcsec); one model "
                            "sees one pixel scale: resample the images or split the file by pixel scale")
        return float(scale[0])

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        return [Shard(self._file, lo, hi) for lo, hi in _steps(self.num_rows, rows_per_shard)]

    def read(self, shard: Shard) -> CutoutBatch:
        with self._h5() as f:
            images = f["images"][shard.start : shard.stop]  # a contiguous slice: h5py fancy indexing is ~50x slower
            ids = self._ids(f, shard.start, shard.stop)
        return self._batch(ids, self._to_nchw(images), self._file, np.arange(shard.start, shard.stop))

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        self._check_file(file, [self._file])
        with self._h5() as f:
            images = [f["images"][int(i)] for i in indices]  # per-index reads, again not fancy indexing
        if not images:
            return np.zeros((0, *self.stamp_shape), dtype=np.float32)
        return np.ascontiguousarray(self._to_nchw(np.stack(images)), dtype=np.float32)

    def _ids(self, f, start: int, stop: int) -> list:
        if not self._has_id:
            return list(range(start, stop))
        import h5py

        ds = f["id"]
        return list((ds.asstr() if h5py.check_string_dtype(ds.dtype) else ds)[start:stop])


def _npy_sidecar(folder: Path) -> dict:
    path = folder / NPY_SIDECAR
    if not path.exists():
        return {}
    import json

    try:
        meta = json.loads(path.read_text())
        bands = _parse_bands(meta["bands"]) if "bands" in meta else None
        scale = float(meta["pixel_arcsec"]) if meta.get("pixel_arcsec") is not None else None
        if scale is not None and not 0 < scale < 60:
            raise ValueError(f"pixel_arcsec {scale} is not a pixel scale in arcsec")
    except (ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path}: expected JSON like {{\"bands\": \"grz\", \"pixel_arcsec\": 0.262}} "
                        f"({type(e).__name__}: {e}); fix the file") from None
    return {"bands": bands, "pixel_arcsec": scale}


def _open_npy(file: str) -> np.ndarray:
    """A memory map of one .npy file: its header only until pixels are touched; a short file fails here."""
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/EOFError on damaged headers and short files
        raise DataError(f"{file}: cannot be read as .npy ({type(e).__name__}: {e}); {MEND}") from None


def npy_layout(file: str, bands: list[str] | None) -> tuple[list[str] | None, tuple[int, int, int]]:
    """(bands, (C, H, W)) of one .npy stamp from its header only (memory-mapped: a truncated file fails here)."""
    arr = _open_npy(file)
    shape = tuple(int(s) for s in arr.shape)
    shape = (1, *shape) if len(shape) == 2 else shape
    if len(shape) != 3 or arr.dtype.kind != "f":
        raise DataError(f"{file}: a {arr.dtype} array of shape {arr.shape}; expected one float (bands, H, W) or "
                        "(H, W) stamp of fluxes in nanomaggies per file")
    if bands is not None and len(bands) != shape[0]:
        raise DataError(f"{file}: {shape[0]} planes but bands {bands}; one band name per plane "
                        f"(set them in {NPY_SIDECAR} or with the bands option)")
    return bands, shape


class _NpySource(CutoutSource):
    kind = "npy"

    def __init__(self, path: Path, files: Sequence[str] | None = None, bands: list[str] | None = None,
                 pixel_arcsec: float | None = None):
        """Bands and pixel scale: `cutouts.json` in the folder, else the caller's (who knows the survey)."""
        self.path = path
        side = _npy_sidecar(path if path.is_dir() else path.parent)
        self._files = list(files) if files is not None else [str(p) for p in sorted(path.glob("*.npy"))]
        bands = side["bands"] if side.get("bands") is not None else bands
        if bands is None:
            raise DataError(f"{path}: .npy stamps do not record their bands; write {path / NPY_SIDECAR} "
                            "(e.g. {\"bands\": \"grz\", \"pixel_arcsec\": 0.262}) or give the bands option")
        self.bands, self.stamp_shape = npy_layout(self._files[0], list(bands))
        self.pixel_arcsec = side["pixel_arcsec"] if side.get("pixel_arcsec") is not None else pixel_arcsec
        self.num_rows = len(self._files)

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        return [Shard(str(self.path), lo, hi, tuple(self._files[lo:hi]))
                for lo, hi in _steps(self.num_rows, rows_per_shard)]

    def read(self, shard: Shard) -> CutoutBatch:
        files = shard.files or tuple(self._files[shard.start : shard.stop])
        flux = np.stack([self._read_one(f) for f in files]) if files else np.zeros((0, *self.stamp_shape))
        return self._batch([Path(f).stem for f in files], flux, files, np.zeros(len(files)))

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        self._check_file(file, self._files)
        return np.stack([self._read_one(file) for _ in indices]).astype(np.float32)

    def _read_one(self, file: str) -> np.ndarray:
        arr = _open_npy(file)
        shape = (1, *arr.shape) if arr.ndim == 2 else tuple(arr.shape)
        if shape != self.stamp_shape:
            raise DataError(f"{file}: stamp {shape} differs from the first file's {self.stamp_shape}; one folder, "
                            "one layout (`uda-sweep data import` accepts mixed sizes)")
        return np.asarray(arr, dtype=np.float32).reshape(shape)


class ConformedSource(CutoutSource):
    """Another source's stamps delivered on `grid` (band order, pixel scale, stamp size): see geometry.conform."""

    def __init__(self, inner: CutoutSource, grid: Grid):
        self.inner, self.grid = inner, grid
        self.kind, self.path, self.num_rows = inner.kind, inner.path, inner.num_rows
        self.bands, self.pixel_arcsec = list(grid.bands), grid.pixel_arcsec
        self.stamp_shape = (len(grid.bands), grid.stamp_px, grid.stamp_px)

    def shards(self, rows_per_shard: int = 1024) -> list[Shard]:
        return self.inner.shards(rows_per_shard)

    def read(self, shard: Shard) -> CutoutBatch:
        b = self.inner.read(shard)
        b.flux = self._conform(b.flux)
        return b

    def read_at(self, file: str, indices: list[int]) -> np.ndarray:
        return self._conform(self.inner.read_at(file, indices))

    def _conform(self, flux: np.ndarray) -> np.ndarray:
        return conform(flux, self.inner.bands, self.inner.pixel_arcsec, self.grid, str(self.inner.path))


def open_cutouts(path: str | Path, domain: str = "target", bands: list[str] | None = None,
                 pixel_arcsec: float | None = None) -> CutoutSource:
    """Detect the input kind and read its metadata; `domain` selects the rows of a data set folder only; `bands`
    and `pixel_arcsec` serve inputs that do not record them (.npy stamps without cutouts.json)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{path}: does not exist; give {SUPPORTED}")
    name = path.name.lower()
    if path.is_dir():
        if (path / MANIFEST).exists():
            return _DatasetSource(path, domain)
        if any(p.name.lower().endswith(FITS_SUFFIXES) for p in path.iterdir()):
            return _FitsSource(path)
        if any(path.glob("*.parquet")):
            return _ParquetSource(path)
        if any(path.glob("*.npy")):
            return _NpySource(path, bands=bands, pixel_arcsec=pixel_arcsec)
    elif name.endswith(FITS_SUFFIXES):
        return _FitsSource(path)
    elif name.endswith(".parquet"):
        return _ParquetSource(path)
    elif name.endswith(HDF5_SUFFIXES):
        return _Hdf5Source(path)
    raise DataError(f"{path}: not a supported cutout input; give {SUPPORTED}")


def open_scanned(path: str | Path, domain: str = "target") -> tuple[CutoutSource, list[tuple[str, str]]]:
    """`open_cutouts` with every file's metadata read first (headers only, as `data import` pre-scans), so a
    corrupt, truncated or odd file sorted last fails in seconds, before any pixel is read. A folder of FITS or
    .npy stamps becomes a source of the files sharing the first readable file's layout; every other file comes
    back as (file, reason). Other inputs are opened as they are: their metadata is read whole already."""
    path = Path(path).expanduser().resolve()
    stamps = path.is_dir() and not (path / MANIFEST).exists()
    fits_files = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(FITS_SUFFIXES)) if stamps else []
    npy_files = [] if fits_files or not stamps or any(path.glob("*.parquet")) else sorted(map(str, path.glob("*.npy")))
    side = _npy_sidecar(path) if npy_files else {}
    if not fits_files and side.get("bands") is None:  # nothing to pre-scan, or bands to ask for: open_cutouts says
        return open_cutouts(path, domain), []
    if fits_files:
        layouts = _layouts(fits_files, fits_layout)
    else:
        layouts = _layouts(npy_files, lambda f: (*npy_layout(f, side["bands"]), side.get("pixel_arcsec")))
    good = [(f, lay) for f, lay in layouts if not isinstance(lay, str)]
    if not good:
        raise DataError(f"{path}: no file can be read; the first: {layouts[0][1]}")
    first_file, first = good[0]
    bad = [(f, lay) for f, lay in layouts if isinstance(lay, str)]
    for f, (bands, shape, scale) in good:
        if list(bands) != list(first[0]) or shape != first[1] or not _same_scale(scale, first[2]):
            bad.append((f, f"{f}: bands {list(bands)}, stamp {shape}, pixel scale {scale} arcsec differ from "
                           f"{first_file}'s ({list(first[0])}, {first[1]}, {first[2]}); one folder holds cutouts of "
                           "one layout: move it elsewhere (`uda-sweep data import` accepts mixed layouts)"))
    left_out = {f for f, _ in bad}
    keep = [f for f, _ in good if f not in left_out]
    if fits_files:
        source = _FitsSource(path, keep, (list(first[0]), first[1], first[2]))
    else:
        source = _NpySource(path, keep, list(first[0]), first[2])
    return source, sorted(bad)


def _layouts(files: list[str], layout) -> list[tuple[str, tuple | str]]:
    """(file, its layout, or why it cannot be read) for each file, headers only."""
    out = []
    for f in files:
        try:
            out.append((f, layout(f)))
        except DataError as e:
            out.append((f, str(e)))
    return out


def write_parquet_cutouts(path: str | Path, ids: Sequence, flux: np.ndarray, bands: Sequence[str],
                          pixel_arcsec: float | None, rows_per_group: int = 1024) -> Path:
    """Write cutouts in the layout `open_cutouts` reads (written to a temporary name, then renamed)."""
    path = Path(path)
    flux = np.ascontiguousarray(flux, dtype=np.float32)
    if flux.ndim != 4 or len(ids) != len(flux) or len(bands) != flux.shape[1]:
        raise DataError(f"{path}: need flux (n, C, H, W) with n ids and C bands; got flux {flux.shape}, "
                        f"{len(ids)} ids, bands {list(bands)}")
    if any("," in b for b in bands):
        raise DataError(f"{path}: band names {list(bands)} must not contain commas")
    metadata = {b"bands": ",".join(bands).encode()}
    if pixel_arcsec is not None:
        metadata[b"pixel_arcsec"] = repr(float(pixel_arcsec)).encode()
    table = pa.table({
        "id": pa.array([str(i) for i in ids], type=pa.string()),
        "flux": pa.FixedShapeTensorArray.from_numpy_ndarray(flux),
    }).replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=max(1, int(rows_per_group)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
