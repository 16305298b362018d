"""`uda-sweep data import`: real cutouts of two surveys -> a data set folder that train, sweeps and predict read.

Steps, cheapest first, so bad input fails in seconds:
  1. label tables (ids and one label column only), Galaxy Zoo vote tables (ids and the vote-count columns) and the
     class mapping;
  2. a metadata pre-scan of every input file (header, shape, bands, pixel scale; no pixels), grouping files that
     share a layout; ids joined to labels;
  3. pixels read shard by shard, put on one grid (band order, pixel scale, stamp size: geometry.conform), checked
     finite, appended to a memory-mapped pixels.npy in a temporary folder;
  4. seeded splits stratified by class, the catalogue, a units check against the survey's depth, the manifest
     with its fingerprint; then the folder is renamed into place.
With `workers` > 1 the pre-scan and the reading and resampling run in that many processes; the checks and
writes stay in order in the calling process, so the result is the same. The user's input files are only read.
With `skip_bad`, files or rows that fail a check are left out and listed
with their reasons in skipped.csv inside the data set; without it, the first failing check stops the import with
every problem found so far counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from .geometry import Grid, band_order, conform, padded, same_scale
from ..votes import GZ_DECALS
from .label_table import CLASS_NAME, parse_class_map, read_class_labels, read_vote_table
from .readers import FITS_SUFFIXES, CutoutSource, _FitsSource, _NpySource, _npy_sidecar, fits_layout, npy_layout, \
    open_cutouts
from .store import CATALOGUE, GENERATOR_VERSION, MANIFEST, PIXELS, UNLABELLED, _sha256_files

__all__ = ["DomainInput", "ImportSpec", "ImportResult", "import_dataset", "SKIPPED"]

log = logging.getLogger(__name__)
SKIPPED = "skipped.csv"
# A units check warns when the measured sky noise is this many times off the survey's depth in either direction.
UNITS_FACTOR = 3.0


@dataclass
class DomainInput:
    cutouts: str
    labels: str | None = None  # CSV/Parquet label table; for the target, labels used only to evaluate
    survey: str | dict | None = None  # preset name, survey YAML or mapping: names the survey, checks units
    pixel_arcsec: float | None = None  # for files that do not record it (.npy stamps, FITS without WCS)
    bands: list[str] | None = None  # the planes' bands, for files that do not record them (.npy stamps)
    # Galaxy Zoo DECaLS vote counts (CSV/TSV/Parquet, `{question}_{answer}` columns) joined by id: a label for the
    # source (the vote head learns from them), for evaluation only in the target, as `labels`.
    votes: str | None = None


@dataclass
class ImportSpec:
    source: DomainInput
    target: DomainInput
    id_column: str = "id"
    label_column: str = "label"
    class_map: str | None = None  # 'E=elliptical,...' or a YAML file; None: label values are the class names
    unknown_classes: list[str] = field(default_factory=list)  # believed to appear only in the target
    bands: list[str] | None = None  # the grid's bands, in order; default: the source's bands
    stamp_px: int | None = None  # default: the source cutouts' size
    pixel_arcsec: float | None = None  # default: the source cutouts' pixel scale
    source_split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test
    target_test_frac: float = 0.2
    seed: int = 0
    skip_bad: bool = False
    workers: int = 1  # processes reading and resampling shards

    def check(self) -> None:
        if len(self.source_split) != 3 or min(self.source_split) <= 0 or not math.isclose(sum(self.source_split), 1):
            raise ConfigError(f"--source-split {self.source_split}: three positive fractions (train, val, test) "
                              "that sum to 1, e.g. 0.7,0.1,0.2")
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"--workers {self.workers}: must lie in [1, 256]")
        if not 0 < self.target_test_frac < 1:
            raise ConfigError(f"--target-test-frac {self.target_test_frac}: must lie strictly between 0 and 1")
        if self.stamp_px is not None and not 8 <= self.stamp_px <= 1024:
            raise ConfigError(f"--stamp-px {self.stamp_px}: must lie in [8, 1024]")
        if self.pixel_arcsec is not None and not 0 < self.pixel_arcsec < 60:
            raise ConfigError(f"--pixel-arcsec {self.pixel_arcsec}: must be a positive pixel scale in arcsec")
        for flag, scale in (("--source-pixel-arcsec", self.source.pixel_arcsec),
                            ("--target-pixel-arcsec", self.target.pixel_arcsec)):
            if scale is not None and not 0 < scale < 60:
                raise ConfigError(f"{flag} {scale}: must be a positive pixel scale in arcsec")
        if self.source.labels is None and self.source.votes is None:
            raise ConfigError("the source needs a label table (--source-labels), or Galaxy Zoo votes (--source-votes) "
                              "to take its classes from: the classifier learns from them")
        for flag, path in (("--source", self.source.cutouts), ("--target", self.target.cutouts),
                           ("--source-labels", self.source.labels), ("--target-labels", self.target.labels),
                           ("--source-votes", self.source.votes), ("--target-votes", self.target.votes)):
            if path is not None and not Path(path).expanduser().exists():
                raise ConfigError(f"{flag} {path}: does not exist")
        for name in self.unknown_classes:
            if not CLASS_NAME.fullmatch(name):
                raise ConfigError(f"--unknown-classes: {name!r} must start with a letter "
                                  "and use letters, digits, _ . -")


@dataclass
class ImportResult:
    folder: Path
    counts: dict[str, int]
    skipped: int
    prescan_seconds: float
    files_scanned: int
    copy_seconds: float
    warnings: list[str]

    @property
    def stamps(self) -> int:
        return sum(self.counts.values())


@dataclass
class _Group:
    """Input rows that share one layout, read through one cutout source."""

    source: CutoutSource
    domain: str


class _Problems:
    """Files and rows that failed a check: kept for skipped.csv with `skip_bad`, else the import stops."""

    def __init__(self, skip_bad: bool):
        self.skip_bad, self.rows = skip_bad, []

    def add(self, domain: str, file: str, index: int | None, gid: str | None, reason: str) -> None:
        self.rows.append({"domain": domain, "file": file, "index": index, "id": gid, "reason": reason})

    def stop_unless_skipping(self, stage: str) -> None:
        if self.rows and not self.skip_bad:
            first = self.rows[0]
            more = f" ({len(self.rows) - 1} more problem(s) found so far)" if len(self.rows) > 1 else ""
            raise DataError(f"{first['reason']}{more}; nothing was written. Mend the input, or pass --skip-bad to "
                            f"import the rest and list what was left out in {SKIPPED} ({stage})")


def _read_votes(spec: ImportSpec) -> dict[str, pd.DataFrame | None]:
    """Each domain's vote table (id -> GZ_DECALS.columns counts), or None; every table-level check happens here."""
    return {d: read_vote_table(getattr(spec, d).votes, spec.id_column, GZ_DECALS) if getattr(spec, d).votes else None
            for d in ("source", "target")}


def labels_from_votes(votes: pd.DataFrame, path: str) -> pd.Series:
    """id -> the first question's most voted answer (smooth, featured-or-disk or artifact; ties go to the first)."""
    q, s = GZ_DECALS.questions[0], GZ_DECALS.slices[0]
    counts = votes.iloc[:, s].to_numpy()
    none = counts.sum(1) == 0
    if none.any():
        raise DataError(f"{path}: {int(none.sum())} row(s) have no {q.name} votes (e.g. id "
                        f"{votes.index[none.argmax()]!r}), so no class can be taken from them; drop those rows or "
                        "give the classes with --source-labels")
    return pd.Series(np.asarray(q.answers, dtype=object)[counts.argmax(1)], index=votes.index, name=q.name)


def _read_labels(spec: ImportSpec, votes: dict | None = None) -> tuple[pd.Series, pd.Series | None, dict | None]:
    cmap = parse_class_map(spec.class_map)
    if spec.source.labels is None:  # classes from the source's votes (ImportSpec.check: it has votes)
        src = labels_from_votes(votes["source"], spec.source.votes)
    else:
        src = read_class_labels(spec.source.labels, spec.id_column, spec.label_column)
    tgt = read_class_labels(spec.target.labels, spec.id_column, spec.label_column) if spec.target.labels else None
    for domain, table in (("source", src), ("target", tgt)):
        if table is None:
            continue
        where = getattr(spec, domain).labels or getattr(spec, domain).votes
        unmapped = sorted(set(table.unique()) - set(cmap)) if cmap is not None else []
        if unmapped:
            raise DataError(f"{where}: label values {unmapped[:10]} are not in --class-map; "
                            "map each to a class name, or to nothing to drop those rows (e.g. 'X=')")
        if cmap is None:
            bad = sorted(v for v in table.unique() if not CLASS_NAME.fullmatch(v))
            if bad:
                raise DataError(f"{where}: label values {bad[:10]} are not usable class names; "
                                "map them with --class-map (e.g. '0=elliptical,1=spiral')")
    known = {cmap[v] if cmap is not None else v for v in src.unique()} - {None}
    if not known:
        raise DataError(f"{spec.source.labels or spec.source.votes}: --class-map drops every source label value; "
                        "keep at least one class")
    clash = sorted(set(spec.unknown_classes) & known)
    if clash:
        raise ConfigError(f"--unknown-classes {clash}: these are labelled in the source, so they are known classes")
    return src, tgt, cmap


def _stamp_files(folder: Path) -> tuple[str, list[str]]:
    """('fits' or 'npy', the sorted stamp files) of a folder of one-stamp files; ('', []) for anything else."""
    fits_files = sorted(str(p) for p in folder.iterdir() if p.name.lower().endswith(FITS_SUFFIXES))
    if fits_files:
        return "fits", fits_files
    npy_files = sorted(str(p) for p in folder.glob("*.npy"))
    return ("npy", npy_files) if npy_files else ("", [])


def _file_layouts(files: list[str], npy_bands: list[str] | None, scale: float | None) -> list:
    """Per file: (bands, (C, H, W), pixel scale or `scale`) from its header, or the DataError's message."""
    out = []
    for f in files:
        try:
            if npy_bands is not None:
                b, shape = npy_layout(f, list(npy_bands))
                out.append((tuple(b), shape, scale))
            else:
                b, shape, own = fits_layout(f)
                out.append((tuple(b), shape, own if own is not None else scale))
        except DataError as e:
            out.append(str(e))
    return out


def _scan_folder(folder: Path, domain: str, dom: DomainInput, problems: _Problems,
                 bar, pool=None) -> list[CutoutSource]:
    """Pre-scan every FITS or .npy file of a folder (headers only); one source per distinct layout."""
    kind, files = _stamp_files(folder)
    npy = kind == "npy"
    side = _npy_sidecar(folder) if npy else {}
    npy_bands = side["bands"] if side.get("bands") is not None else dom.bands
    if npy and npy_bands is None:
        raise ConfigError(f"{folder}: .npy stamps do not record their bands; write cutouts.json beside them "
                          "(e.g. {\"bands\": \"grz\", \"pixel_arcsec\": 0.262}) or pass --"
                          f"{domain}-bands")
    side_scale = side.get("pixel_arcsec")
    scale = side_scale if side_scale is not None else dom.pixel_arcsec
    chunks = [files[i : i + 256] for i in range(0, len(files), 256)]
    args = (npy_bands if npy else None, scale)
    results = pool.map(_file_layouts, chunks, *([a] * len(chunks) for a in args)) if pool else \
        (_file_layouts(c, *args) for c in chunks)
    layouts: dict[tuple, list[str]] = {}
    for chunk, found in zip(chunks, results):
        for f, layout in zip(chunk, found):
            if isinstance(layout, str):
                problems.add(domain, f, None, None, layout)
                continue
            key = (layout[0], layout[1], None if layout[2] is None else round(float(layout[2]), 4))
            layouts.setdefault(key, []).append(f)
        bar.update(len(chunk))
    out = []
    for (b, shape, scale), group in layouts.items():
        if npy:
            out.append(_NpySource(folder, group, list(b), scale))
        else:
            out.append(_FitsSource(folder, group, (list(b), shape, scale)))
    return out


def _scan(dom: DomainInput, domain: str, problems: _Problems, bar, pool=None) -> list[CutoutSource]:
    """The domain's cutouts as sources of one layout each, every file's metadata read; a whole input that cannot
    be read (not a cutout kind, a damaged single file) is an error, not a file to skip."""
    path = Path(dom.cutouts).expanduser().resolve()
    if path.is_dir() and not (path / MANIFEST).exists() and _stamp_files(path)[0]:
        sources = _scan_folder(path, domain, dom, problems, bar, pool)
    else:
        sources = [open_cutouts(path, domain="all", bands=dom.bands, pixel_arcsec=dom.pixel_arcsec)]
        bar.update(1)
    for s in sources:
        if s.pixel_arcsec is None and dom.pixel_arcsec is not None:
            s.pixel_arcsec = dom.pixel_arcsec
        if s.pixel_arcsec is None:  # guessing would silently resample SDSS stamps as if they were DECaLS ones
            raise ConfigError(f"{s.path}: the {domain} cutouts do not record their pixel scale; pass "
                              f"--{domain}-pixel-arcsec (e.g. 0.396 for SDSS, 0.262 for Legacy Surveys cutouts)")
        _warn_big_row_groups(s)
    return sources


def _warn_big_row_groups(source: CutoutSource) -> None:
    """A Parquet shard is whole row groups: pyarrow's default (up to 1M rows) would be read into memory at once."""
    offsets = getattr(source, "_offsets", None)
    if not offsets:
        return
    biggest = max(int(np.diff(o).max(initial=0)) for o in offsets.values())
    per_row = 4 * int(np.prod(source.stamp_shape))
    if biggest * per_row > 2**30:
        log.warning("%s: row groups of up to %d stamps are read whole (%.1f GB at a time); rewrite it with "
                    "uda_core.data.readers.write_parquet_cutouts (1,024 rows per group)", source.path, biggest,
                    biggest * per_row / 1e9)


def _resolve_grid(spec: ImportSpec, sources: list[CutoutSource]) -> Grid:
    """The grid every stamp is put on: given values, else the commonest source layout's."""
    if not sources:
        raise DataError(f"{spec.source.cutouts}: no readable source cutouts")
    common = Counter()
    for s in sources:
        common[(tuple(s.bands), s.stamp_shape[1], s.pixel_arcsec)] += s.num_rows
    bands, px, scale = common.most_common(1)[0][0]
    bands = tuple(spec.bands) if spec.bands else bands
    scale = spec.pixel_arcsec or scale
    if scale is None:
        raise DataError(f"{spec.source.cutouts}: the cutouts do not record their pixel scale; pass "
                        "--source-pixel-arcsec (and --pixel-arcsec for the grid to import onto)")
    return Grid(tuple(bands), int(spec.stamp_px or px), float(scale))


def _survey(dom: DomainInput, domain: str):
    if dom.survey is None:
        return None
    from .surveys import get_survey

    try:
        return get_survey(dom.survey)
    except ConfigError as e:
        raise ConfigError(f"--{domain}-survey: {e}") from None


def _border_sigma(flux: np.ndarray, width: int = 4) -> np.ndarray:
    """Per-band robust sky sigma (1.4826 x MAD) of the outer `width` pixels of each stamp, median over stamps."""
    h = flux.shape[-1]
    w = max(1, min(width, h // 4))
    mask = np.ones(flux.shape[-2:], bool)
    mask[w:-w, w:-w] = False
    edge = flux[..., mask]  # (n, C, pixels)
    mad = np.median(np.abs(edge - np.median(edge, axis=-1, keepdims=True)), axis=-1) * 1.4826
    return np.median(mad, axis=0)


def _units_warnings(domain: str, raw: np.ndarray, bands: list[str], file: str, survey, scale) -> list[str]:
    """Warnings (not errors) when stamps do not look like fluxes in the survey's units."""
    out = []
    finite = raw[np.isfinite(raw)]
    if finite.size and finite.min() >= 0 and (np.all(finite == np.round(finite)) and finite.max() <= 255
                                              or finite.max() <= 1.0):
        out.append(f"{domain} ({file}): pixel values lie in [{finite.min():g}, {finite.max():g}] with no negative sky "
                   "noise: these look like display-stretched images (PNG/JPEG-like), not fluxes in nanomaggies")
    if survey is None:
        return out
    from .store import delivered_sky_sigma

    measured = _border_sigma(raw)
    expected = delivered_sky_sigma(survey, raw.shape[-1])
    for i, b in enumerate(bands):
        if b not in survey.bands or not np.isfinite(measured[i]) or measured[i] <= 0:
            continue
        want = expected[survey.bands.index(b)]
        if scale is not None and not same_scale(scale, survey.pixel_arcsec):
            want *= scale / survey.pixel_arcsec  # sky sigma per pixel grows with the pixel's side
        factor = measured[i] / want
        if not 1 / UNITS_FACTOR <= factor <= UNITS_FACTOR:
            out.append(f"{domain} ({file}): band {b} sky noise {measured[i]:.3g} is {factor:.3g}x what {survey.name}'s "
                       f"depth implies ({want:.3g} nanomaggies per pixel): another unit (counts, ADU, Jy, magnitudes?) "
                       "or another survey; convert to nanomaggies (m = 22.5 - 2.5 log10 f)")
    return out


def _stratified_splits(labels: np.ndarray, fractions: tuple[float, ...], names: tuple[str, ...],
                       seed: int) -> np.ndarray:
    """Split names per row: within each class a seeded shuffle cut at the fractions (a class of n rows puts
    round(n f) in each later split, the rest in the first), so every split keeps the class proportions."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        counts = [int(round(len(rows) * f)) for f in fractions[1:]]
        start = len(rows) - sum(counts)
        out[rows[:start]] = names[0]
        for name, n in zip(names[1:], counts):
            out[rows[start : start + n]] = name
            start += n
    return out


def _stamp_mag(flux: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """r magnitude of all the flux in the stamp (the middle band without r): a rough brightness for the
    accuracy-by-magnitude picture, NaN where the stamp's flux is not positive."""
    b = bands.index("r") if "r" in bands else len(bands) // 2
    total = flux[:, b].sum(axis=(-2, -1), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 22.5 - 2.5 * np.log10(total), np.nan)


def _read_on_grid(source: CutoutSource, shard, grid: Grid):
    """A worker's job: one shard read and put on the grid; a DataError is returned (the caller retries it)."""
    try:
        raw = source.read(shard)
    except DataError as e:
        return e
    return raw, conform(raw.flux, source.bands, source.pixel_arcsec, grid, str(source.path))


def _read_ahead(jobs: list, grid: Grid, pool, workers: int):
    """Per job, in order: (batch, stamps on the grid) or a DataError from the pool's processes, at most 2 x workers
    shards ahead of the consumer (bounded memory); None for every job without a pool."""
    if pool is None:
        yield from (None for _ in jobs)
        return
    from collections import deque

    pending: deque = deque()
    for g, shard in jobs:
        pending.append(pool.submit(_read_on_grid, g.source, shard, grid))
        if len(pending) >= 2 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _pool(workers: int):
    """Worker processes for the pre-scan and the copy (a no-op context with one worker). Spawned, not forked: a
    forked child of a process with threads (tqdm, pyarrow) can deadlock."""
    if workers <= 1:
        return contextlib.nullcontext()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class _Copier:
    """Reads every group shard by shard onto the grid and appends the good rows to the pixel file, one catalogue
    row each. A row is bad when its pixels are not finite, its id repeats, or a labelled domain has no label for it;
    a row whose label the class map drops is left out without being bad."""

    def __init__(self, spec: ImportSpec, grid: Grid, labels: dict, cmap: dict | None, surveys: dict,
                 problems: _Problems, pixels: np.ndarray, votes: dict | None = None):
        self.spec, self.grid, self.labels, self.cmap, self.surveys = spec, grid, labels, cmap, surveys
        self.votes = votes or {"source": None, "target": None}
        self.read_ids: dict[str, set] = {"source": set(), "target": set()}  # every id read, kept or not
        self.problems, self.pixels = problems, pixels
        self.rows: list[dict] = []
        self.seen: dict[str, set] = {"source": set(), "target": set()}
        self.warnings: list[str] = []
        self.units_checked: set[str] = set()

    def run(self, groups: list[_Group], name: str, progress: bool, pool=None, workers: int = 1) -> list[dict]:
        """With a pool, shards are read and put on the grid in its `workers` processes (reading FITS is header
        parsing, CPU-bound); the checks and writes stay here, in shard order, so the result does not depend on it."""
        bar = tqdm(total=sum(g.source.num_rows for g in groups), desc=f"importing {name}", unit="stamp",
                   disable=not progress)
        jobs = [(g, shard) for g in groups for shard in g.source.shards(512 if pool is None else 128)]
        for (g, shard), done in zip(jobs, _read_ahead(jobs, self.grid, pool, workers)):
            if isinstance(done, DataError) or done is None:  # failed (or serial): read here, file by file if need be
                for raw in self._read(g, shard):
                    self._append(g, raw, conform(raw.flux, g.source.bands, g.source.pixel_arcsec, self.grid,
                                                 str(g.source.path)))
            else:
                self._append(g, *done)
            bar.update(shard.stop - shard.start)
        bar.close()
        return self.rows

    def _read(self, g: _Group, shard) -> list:
        """The shard's batch; when it fails, its files one by one, so one damaged file costs only itself."""
        try:
            return [g.source.read(shard)]
        except DataError as e:
            if len(shard.files) <= 1:
                self.problems.add(g.domain, shard.files[0] if shard.files else shard.file, None, None, str(e))
                self.problems.stop_unless_skipping("reading pixels")
                return []
        return [b for i, f in enumerate(shard.files)
                for b in self._read(g, type(shard)(shard.file, shard.start + i, shard.start + i + 1, (f,)))]

    def _append(self, g: _Group, raw, flux: np.ndarray) -> None:
        """Check one batch (`flux`: its stamps on the grid) row by row; write the good rows after the last one."""
        if g.domain not in self.units_checked and len(raw):  # on the first stamps of each survey
            self.units_checked.add(g.domain)
            self.warnings += _units_warnings(g.domain, raw.flux[:500], g.source.bands, str(raw.source_file[0]),
                                             self.surveys[g.domain], g.source.pixel_arcsec)
        table = self.labels[g.domain]
        keep = np.zeros(len(raw), bool)
        self.read_ids[g.domain].update(raw.ids)
        for i, gid in enumerate(raw.ids):
            reason = self._bad(g.domain, gid, raw.flux[i], table, raw.source_index[i])
            if reason:
                self.problems.add(g.domain, str(raw.source_file[i]), int(raw.source_index[i]), str(gid),
                                  f"{raw.source_file[i]}: {reason}")
            elif table is None or self.cmap is None or self.cmap[table[gid]] is not None:
                keep[i] = True
                self.seen[g.domain].add(gid)
        self.problems.stop_unless_skipping("reading pixels")
        start = len(self.rows)
        for i in np.flatnonzero(keep):
            self.rows.append({"id": str(raw.ids[i]), "domain": g.domain,
                              "label_value": None if table is None else table[raw.ids[i]],
                              "source_file": str(raw.source_file[i]), "source_index": int(raw.source_index[i])})
        self.pixels[start : len(self.rows)] = flux[keep]

    def _bad(self, domain: str, gid: str, flux: np.ndarray, table, index: int) -> str | None:
        if not np.isfinite(flux).all():
            return f"row {index} (id {gid!r}) has non-finite pixels; mask or replace them (e.g. with 0 where the " \
                   "survey has no data)"
        if gid in self.seen[domain]:
            return f"id {gid!r} appears twice in the {domain} cutouts; ids join cutouts to labels: make them unique"
        dom = getattr(self.spec, domain)
        if table is not None and gid not in table.index:
            where = f"label table {dom.labels}" if dom.labels else f"vote table {dom.votes}"
            return f"id {gid!r} has no row in the {domain} {where}"
        if self.votes[domain] is not None and gid not in self.votes[domain].index:
            return f"id {gid!r} has no row in the {domain} vote table {dom.votes}"
        return None


def import_dataset(spec: ImportSpec, out: str | Path, progress: bool = True) -> ImportResult:
    """Import two surveys' cutouts into a new data set folder `out` (see the module docstring)."""
    spec.check()
    with _pool(spec.workers) as pool:  # processes start at their first job, after the cheap checks
        return _import(spec, out, progress, pool)


def _import(spec: ImportSpec, out: str | Path, progress: bool, pool) -> ImportResult:
    out = Path(out).expanduser()
    if out.exists():
        raise DataError(f"{out} already exists; choose another --out (nothing was changed)")
    warnings: list[str] = []
    problems = _Problems(spec.skip_bad)
    votes = _read_votes(spec)
    src_labels, tgt_labels, cmap = _read_labels(spec, votes)
    surveys = {d: _survey(getattr(spec, d), d) for d in ("source", "target")}

    # 2. pre-scan: metadata of every file
    t0 = time.perf_counter()
    with tqdm(desc="pre-scan", unit="file", disable=not progress) as bar:
        groups = [_Group(s, d) for d in ("source", "target") for s in _scan(getattr(spec, d), d, problems, bar, pool)]
        files_scanned = bar.n
    problems.stop_unless_skipping("pre-scan")
    grid = _resolve_grid(spec, [g.source for g in groups if g.domain == "source"])
    kept_groups = []
    for g in groups:
        s = g.source
        s.check_finite = False  # non-finite rows are left out one by one below, not the whole shard
        try:
            band_order(s.bands, grid.bands, str(s.path))
        except DataError as e:
            problems.add(g.domain, str(s.path), None, None, str(e))
            continue
        if padded(s.stamp_shape[1:], s.pixel_arcsec, grid):
            warnings.append(f"{g.domain} ({s.path}): {s.num_rows} stamp(s) of {s.stamp_shape[1]} px at "
                            f"{s.pixel_arcsec}\"/px cover less than {grid.stamp_px} px at {grid.pixel_arcsec}\"/px: "
                            "zero-padded at the edges")
        kept_groups.append(g)
    problems.stop_unless_skipping("pre-scan")
    prescan_seconds = time.perf_counter() - t0
    if not any(g.domain == "target" for g in kept_groups):
        raise DataError(f"{spec.target.cutouts}: no readable target cutouts")

    # 3. pixels
    total = sum(g.source.num_rows for g in kept_groups)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t1 = time.perf_counter()
        shape = (len(grid.bands), grid.stamp_px, grid.stamp_px)
        pixels = np.lib.format.open_memmap(tmp / PIXELS, mode="w+", dtype=np.float32, shape=(max(total, 1), *shape))
        labels = {"source": src_labels, "target": tgt_labels}
        copier = _Copier(spec, grid, labels, cmap, surveys, problems, pixels, votes)
        rows = copier.run(kept_groups, out.name, progress, pool, spec.workers)
        warnings += copier.warnings + _unmatched_votes(spec, votes, copier.read_ids)
        pixels.flush()
        del pixels
        copy_seconds = time.perf_counter() - t1
        cat = _catalogue(rows, cmap, spec, surveys)
        if len(cat) < total:  # rows left out: the pixel file keeps only the written ones
            _truncate_npy(tmp / PIXELS, len(cat))
        cat["row"] = np.arange(len(cat))
        task = _task(cat, spec, cmap, tgt_labels is not None)
        _assign_labels_and_splits(cat, task, spec)
        pix = np.load(tmp / PIXELS, mmap_mode="r")
        cat["r_mag"] = np.concatenate([_stamp_mag(np.asarray(pix[lo : lo + 2048]), grid.bands)
                                       for lo in range(0, len(cat), 2048)]) if len(cat) else []
        sky = {d: _measured_sky(pix, cat, d) for d in ("source", "target")}
        del pix
        cat["label_value"] = [None if pd.isna(v) else str(v) for v in cat["label_value"]]
        _add_votes(cat, votes)
        pq.write_table(pa.Table.from_pandas(cat, preserve_index=False), tmp / CATALOGUE)
        counts = {f"{d}/{s}": int(((cat["domain"] == d) & (cat["split"] == s)).sum())
                  for d, s in (("source", "train"), ("source", "val"), ("source", "test"),
                               ("target", "train"), ("target", "test"))}
        empty = [k for k, v in counts.items() if v == 0]
        if empty:
            raise DataError(f"too few stamps: split(s) {empty} would be empty ({counts}); import more cutouts or "
                            "change --source-split / --target-test-frac")
        if problems.rows:
            pd.DataFrame(problems.rows).to_csv(tmp / SKIPPED, index=False)
        manifest = _manifest(spec, grid, task, counts, sky, surveys, tmp, tgt_labels is not None, len(problems.rows),
                             [d for d in ("source", "target") if votes[d] is not None])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for w in warnings:
        log.info(w)  # the caller shows result.warnings (the CLI prints them once)
    return ImportResult(out, counts, len(problems.rows), prescan_seconds, files_scanned, copy_seconds, warnings)


def _unmatched_votes(spec: ImportSpec, votes: dict, read_ids: dict) -> list[str]:
    """Warnings for vote rows that match no cutout: a Galaxy Zoo catalogue usually covers more galaxies than one
    has cutouts of (and one table may serve both domains), so they are left out, not an error."""
    out = []
    for d in ("source", "target"):
        if votes[d] is None:
            continue
        extra = votes[d].index[~votes[d].index.isin(list(read_ids[d]))]
        if len(extra):
            out.append(f"{d} vote table {getattr(spec, d).votes}: {len(extra)} of {len(votes[d])} row(s) match no "
                       f"{d} cutout (e.g. ids {extra[:3].tolist()}) and were not imported")
    return out


def _add_votes(cat: pd.DataFrame, votes: dict) -> None:
    """The vote-count columns (GZ_DECALS.columns, int32): each row's votes, 0 in a domain without a vote table."""
    counts = np.zeros((len(cat), GZ_DECALS.num_answers), dtype=np.int32)
    for d in ("source", "target"):
        if votes[d] is not None:
            rows = (cat["domain"] == d).to_numpy()
            counts[rows] = votes[d].loc[cat.loc[rows, "id"].to_numpy()].to_numpy(np.int32)
    for i, col in enumerate(GZ_DECALS.columns):
        cat[col] = counts[:, i]


def _survey_names(spec: ImportSpec, surveys: dict) -> dict[str, str]:
    """Each domain's survey name: the given survey's, else the name of its cutout file or folder."""
    return {d: (s.name if s is not None else Path(getattr(spec, d).cutouts).name) for d, s in surveys.items()}


def _catalogue(rows: list[dict], cmap, spec: ImportSpec, surveys: dict) -> pd.DataFrame:
    cat = pd.DataFrame(rows, columns=["id", "domain", "label_value", "source_file", "source_index"])
    values = cat["label_value"]
    cat["class_name"] = [None if pd.isna(v) else (cmap[v] if cmap is not None else v) for v in values]
    cat["survey"] = cat["domain"].map(_survey_names(spec, surveys))
    return cat


def _truncate_npy(path: Path, rows: int) -> None:
    """Shrink a C-ordered .npy file to its first `rows` rows in place (no copy of the pixels): the header is
    rewritten with the new shape, padded to its old length so the data keep their offset, and the file is cut."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        old_shape, _, dtype = read(f)
        offset = f.tell()
        shape = (rows, *old_shape[1:])
        text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        size = offset - 8 - (2 if version == (1, 0) else 4)  # the header text's bytes after magic and length
        f.seek(offset - size)
        f.write(text.ljust(size - 1).encode("latin1") + b"\n")
        f.truncate(offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _task(cat: pd.DataFrame, spec: ImportSpec, cmap: dict | None, target_labelled: bool) -> dict:
    src = set(cat[cat["domain"] == "source"]["class_name"])
    order = list(dict.fromkeys(v for v in (cmap or {}).values() if v is not None))  # the user's order, if given
    known = [c for c in order if c in src] + sorted(c for c in src if c not in order)
    if not known:
        raise DataError(f"{spec.source.labels}: no labelled source stamp left")
    unknown = list(dict.fromkeys(spec.unknown_classes))
    if target_labelled:
        tgt = cat[cat["domain"] == "target"]["class_name"]
        unknown += [c for c in sorted(tgt.unique()) if c not in known and c not in unknown]
        shared = [i for i, c in enumerate(known) if c in set(tgt)]
    else:
        shared = list(range(len(known)))  # unknown without labels; every known class may appear
    return {"class_names": known + unknown, "num_known": len(known), "shared": shared,
            "target_only_believed": list(dict.fromkeys(spec.unknown_classes))}


def _assign_labels_and_splits(cat: pd.DataFrame, task: dict, spec: ImportSpec) -> None:
    index = {c: i for i, c in enumerate(task["class_names"])}
    cat["label"] = [UNLABELLED if pd.isna(c) else index[c] for c in cat["class_name"]]
    cat["train_label"] = cat["label"]
    cat["class_name"] = cat["class_name"].fillna("")
    split = np.empty(len(cat), dtype=object)
    src = (cat["domain"] == "source").to_numpy()
    split[src] = _stratified_splits(cat["label"].to_numpy()[src],
                                    spec.source_split, ("train", "val", "test"), spec.seed)
    tgt = ~src
    split[tgt] = _stratified_splits(cat["label"].to_numpy()[tgt], (1 - spec.target_test_frac, spec.target_test_frac),
                                    ("train", "test"), spec.seed + 1)
    cat["split"] = split


def _measured_sky(pix: np.ndarray, cat: pd.DataFrame, domain: str) -> list[float]:
    """A domain's per-band sky sigma measured on the imported grid. The source's is the arcsinh softening (as a
    generated data set records its survey's), so one physical flux maps to one network input in both domains."""
    rows = cat.index[cat["domain"] == domain].to_numpy()[:1000]
    stamps = np.asarray(pix[rows], dtype=np.float32)
    sigma = _border_sigma(stamps)
    for i, s in enumerate(sigma):
        if not np.isfinite(s) or s <= 0:  # noise-free borders: fall back to the spread of all pixels in the band
            sigma[i] = float(np.std(stamps[:, i])) or 1.0
    return [float(s) for s in sigma]


def _manifest(spec, grid, task, counts, sky, surveys, folder, target_labelled, skipped, vote_domains=()) -> dict:
    config = json.loads(json.dumps(asdict(spec), default=str))
    blob = json.dumps({**config, "generator_version": GENERATOR_VERSION}, sort_keys=True)
    domains = {}
    names = _survey_names(spec, surveys)
    for d in ("source", "target"):
        s, dom = surveys[d], getattr(spec, d)
        domains[d] = {"name": names[d], "pixel_arcsec": grid.pixel_arcsec,
                      "sky_sigma_nmgy": sky[d], "inputs": str(Path(dom.cutouts).resolve()),
                      "labels": None if dom.labels is None else str(Path(dom.labels).resolve()),
                      "votes": None if dom.votes is None else str(Path(dom.votes).resolve())}
        if s is not None:
            domains[d]["definition"] = s.to_dict()
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "origin": "imported",
        "config": config,
        "config_hash": hashlib.sha256(blob.encode()).hexdigest(),
        "task": task,
        "bands": list(grid.bands),
        "stamp_px": grid.stamp_px,
        "surveys": domains,
        "counts": counts,
        "target_labels": "eval" if target_labelled else "none",
        "skipped": skipped,
        "files": {name: (folder / name).stat().st_size for name in (CATALOGUE, PIXELS)},
        "fingerprint": _sha256_files(folder),
    }
    if vote_domains:
        # Source votes are a label the vote head learns from; target votes, like --target-labels, only evaluate
        # (training reads source/train votes only): "target": "eval" says so.
        manifest["votes"] = {"tree": GZ_DECALS.to_dict(), "domains": list(vote_domains),
                             **({"target": "eval"} if "target" in vote_domains else {})}
    return manifest
