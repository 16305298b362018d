"""Data sets on disk: a Parquet catalogue, a memory-mappable pixel array and a JSON manifest.

Layout of a data set folder:
  catalogue.parquet  one row per stamp: id, domain, split, labels, survey, physical parameters, row in pixels
  pixels.npy         float16 (N, bands, H, W) fluxes in nanomaggies, opened with mmap_mode="r"
  manifest.json      generator version, the generating config, counts, bands and a content fingerprint

Folders are written under a temporary name and renamed when complete, so a crash never leaves a half data set
under the real name, and a cached folder is reused only when its fingerprint checks out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError, field_validator
from tqdm.auto import tqdm

from ..errors import DataError, UdaError
from ..votes import GZ_DECALS
from .surveys import SURVEYS, Survey, get_survey
from .tasks import get_task

__all__ = ["SIZES", "DataSpec", "GENERATOR_VERSION", "generate", "ensure_dataset", "read_manifest", "verify",
           "UNLABELLED", "TARGET_LABELS", "has_target_labels", "mend_advice", "content_verified", "record_verified"]

GENERATOR_VERSION = "1.5"  # 1.5: galaxy sizes unclipped (stamp size limit), SDSS sample r < 17.77
CATALOGUE, PIXELS, MANIFEST = "catalogue.parquet", "pixels.npy", "manifest.json"
VERIFIED = ".verified.json"  # a passed content check and the file states it applies to (content_verified)

# A catalogue row without a class label (an unlabelled target survey) has label = train_label = UNLABELLED.
UNLABELLED = -1
# manifest["target_labels"]: "simulated" (generated: true labels), "eval" (imported, labels used only to evaluate),
# "none" (a real unlabelled survey). Manifests written before the key existed are simulated.
TARGET_LABELS = ("simulated", "eval", "none")


def has_target_labels(manifest: dict) -> bool:
    """Whether the target rows carry class labels, so oracle/ metrics can exist for this data set."""
    return manifest.get("target_labels", "simulated") != "none"


@dataclass(frozen=True)
class SizePreset:
    stamp_px: int
    source_train: int
    source_val: int
    source_test: int
    target_train: int
    target_test: int


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(32, 240, 80, 120, 240, 200),
    "small": SizePreset(48, 2000, 400, 600, 2000, 800),
    # small's training splits with a target/test of 3,000 (450 unknowns in the universal task), so that the
    # paired intervals of bench/adaptation are not dominated by test-set noise; CPU-sized.
    "bench": SizePreset(48, 2000, 400, 600, 2000, 3000),
    "default": SizePreset(64, 5000, 800, 1000, 5000, 1500),
    "large": SizePreset(96, 20000, 2000, 3000, 20000, 5000),
}


@dataclass(frozen=True)
class DataSpec:
    """What defines a simulated data set; its hash names the cache folder.

    `source` and `target` are surveys as `get_survey` takes them: a preset name, a survey YAML file, an inline
    definition (dict) or a Survey.
    """

    task: str = "universal"
    source: str | dict | Survey = "decals"
    target: str | dict | Survey = "sdss"
    size: str = "small"
    seed: int = 0
    label_noise: float = 0.0

    def __post_init__(self):
        # A survey file given as a Path is kept as its string: the spec goes into manifest.json as it is.
        for field in ("source", "target"):
            if isinstance(getattr(self, field), os.PathLike):
                object.__setattr__(self, field, os.fspath(getattr(self, field)))

    def surveys(self) -> tuple[Survey, Survey]:
        return get_survey(self.source), get_survey(self.target)

    def config_hash(self) -> str:
        surveys = {"source": self._survey_identity(self.source), "target": self._survey_identity(self.target)}
        identity = {**asdict(self), **surveys}
        blob = json.dumps({**identity, "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def folder_name(self) -> str:
        src, tgt = (self._folder_safe(s.name) for s in self.surveys())
        return f"{self.task}-{src}-{tgt}-{self.size}-seed{self.seed}-{self.config_hash()[:10]}"

    def check(self) -> None:
        get_task(self.task)
        src, tgt = self.surveys()
        if self.size not in SIZES:
            raise DataError(f"data.size: unknown size {self.size!r}; choose one of {sorted(SIZES)}")
        if src.bands != tgt.bands:
            raise DataError(
                f"data: source {src.name} has bands {src.bands} but target {tgt.name} has {tgt.bands}; "
                "a network needs the same bands in both domains: pick surveys with matching bands"
            )
        if not 0.0 <= self.label_noise < 0.5:
            raise DataError(f"data.label_noise: {self.label_noise} is outside [0, 0.5)")

    @staticmethod
    def _survey_identity(spec) -> str | dict:
        """What a survey contributes to the hash.

        A preset is its name: its numbers ship with the code, and changing them means bumping GENERATOR_VERSION
        (as for any simulator change), so hashing the name keeps preset data sets in the folders they had. Any
        other survey is its full definition, so editing a user's survey file or inline mapping makes a new data set.
        """
        if isinstance(spec, str) and spec in SURVEYS:
            return spec
        return get_survey(spec).to_dict()

    @staticmethod
    def _folder_safe(name: str) -> str:
        """A survey name fit for a folder name (validated definitions are; a Survey built in code may not be)."""
        return "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in name)[:40] or "survey"


def _sample_classes(rng: np.random.Generator, priors: dict[str, float], n: int) -> list[str]:
    """Exactly proportional class counts (largest remainder), shuffled: splits keep the domain's priors."""
    names = list(priors)
    raw = np.array([priors[c] for c in names]) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(raw - counts)[::-1][: n - counts.sum()]] += 1
    out = np.repeat(names, counts)
    rng.shuffle(out)
    return list(out)


def delivered_sky_sigma(survey, stamp_px: int) -> list[float]:
    """Per-band sky sigma per delivered pixel, measured on empty stamps (`survey`: anything get_survey takes).

    Equal to the depth formula on the native grid; for resampled surveys (BASS) the resampling scales and
    smooths the noise, so the formula's native value would overstate it about threefold.
    """
    from .population import draw_population  # the renderer imports torch: only when drawing
    from .render import render

    survey = get_survey(survey)
    if survey.native_pixel_arcsec is None:
        return [survey.sky_sigma_nmgy(b) for b in range(len(survey.bands))]
    n = 16
    empty = draw_population(np.random.default_rng(0), ["elliptical"] * n, survey, stamp_px * survey.pixel_arcsec)
    empty["r_mag"] = np.full(n, 40.0)  # invisible: only sky noise remains
    empty["seed"] = np.arange(n)
    img, _ = render(empty, survey, stamp_px)
    return [float(img[:, b].std()) for b in range(img.shape[1])]


def _sha256_files(folder: Path, names=(CATALOGUE, PIXELS)) -> str:
    h = hashlib.sha256()
    for name in names:
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def generate(spec: DataSpec, out: Path, batch: int = 128, progress: bool = True) -> Path:
    """Render a data set into `out` (written to a temporary folder first, then renamed into place)."""
    spec.check()
    out = Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; choose another --out (nothing was overwritten)")
    task, size = get_task(spec.task), SIZES[spec.size]
    source, target = spec.surveys()  # read once: a survey file edited mid-run cannot mix two definitions
    from .population import draw_population  # the renderer imports torch: only once the spec has passed
    from .render import render
    from .vote_sim import simulate_votes

    plan = [
        ("source", source, "train", size.source_train),
        ("source", source, "val", size.source_val),
        ("source", source, "test", size.source_test),
        ("target", target, "train", size.target_train),
        ("target", target, "test", size.target_test),
    ]
    total = sum(p[3] for p in plan)
    survey0 = source
    nb = len(survey0.bands)
    with folder_written_whole(out) as tmp:
        pixels = np.lib.format.open_memmap(tmp / PIXELS, mode="w+", dtype=np.float16,
                                           shape=(total, nb, size.stamp_px, size.stamp_px))
        rng = np.random.default_rng([spec.seed, 7])
        columns: dict[str, list] = {}
        row = 0
        bar = tqdm(total=total, desc=f"rendering {spec.folder_name()}", unit="stamp", disable=not progress)
        for part_index, (domain, survey, split, n) in enumerate(plan):
            classes = _sample_classes(rng, task.priors(domain), n)
            params = draw_population(rng, classes, survey, size.stamp_px * survey.pixel_arcsec)
            params["seed"] = rng.integers(0, 2**62, n)
            fluxes = np.zeros((n, nb))
            for lo in range(0, n, batch):
                part = {k: v[lo : lo + batch] for k, v in params.items()}
                img, flux = render(part, survey, size.stamp_px)
                if not np.isfinite(img.numpy()).all():  # pragma: no cover - a renderer bug, never user input
                    raise RuntimeError("renderer produced non-finite pixels")
                pixels[row + lo : row + lo + len(img)] = img.numpy().astype(np.float16)
                fluxes[lo : lo + len(img)] = flux
                bar.update(len(img))
            label = np.array([task.class_names.index(c) for c in classes])
            train_label = label.copy()
            if domain == "source" and split == "train" and spec.label_noise > 0:
                flip = rng.random(n) < spec.label_noise
                shift = rng.integers(1, task.num_known, n)
                train_label[flip] = (label[flip] + shift[flip]) % task.num_known
            rec = {
                "id": [f"{domain[0]}{split[:2]}{row + i:07d}" for i in range(n)],
                "row": np.arange(row, row + n),
                "domain": [domain] * n,
                "split": [split] * n,
                "survey": [survey.name] * n,
                "label": label,
                "train_label": train_label,
                "class_name": classes,
            }
            for b_i, b in enumerate(survey.bands):
                rec[f"mag_{b}"] = 22.5 - 2.5 * np.log10(np.maximum(fluxes[:, b_i], 1e-12))
            for key in ("redshift", "r_mag", "abs_mag_r", "hlr_arcsec", "sersic_n",
                        "axis_ratio", "pa_deg", "bulge_frac", "seed"):
                rec[key] = params[key]
            rec["artifact_kind"] = np.where(np.asarray(classes) == "artifact", params["artifact_kind"], "")
            # Volunteer votes draw from a stream of their own, so every pixel and column above is what it was
            # before votes existed (and a change to the vote model changes only the vote columns).
            votes = simulate_votes(params, survey, np.random.default_rng([spec.seed, 11, part_index]))
            for c_i, col in enumerate(GZ_DECALS.columns):
                rec[col] = votes[:, c_i].astype(np.int32)
            for k, v in rec.items():
                columns.setdefault(k, []).extend(list(v))
            row += n
        bar.close()
        pixels.flush()
        del pixels
        table = pa.table(columns)
        pq.write_table(table, tmp / CATALOGUE)
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "config": asdict(spec),
            "config_hash": spec.config_hash(),
            "task": {"class_names": list(task.class_names), "num_known": task.num_known, "shared": task.shared},
            "bands": list(survey0.bands),
            "stamp_px": size.stamp_px,
            "surveys": {
                d: {"name": s.name, "pixel_arcsec": s.pixel_arcsec,
                    "sky_sigma_nmgy": delivered_sky_sigma(s, size.stamp_px), "definition": s.to_dict()}
                for d, s in (("source", source), ("target", target))
            },
            "counts": {f"{d}/{sp}": n for d, _, sp, n in plan},
            "origin": "generated",
            "target_labels": "simulated",
            "votes": {"tree": GZ_DECALS.to_dict(), "domains": ["source", "target"]},
        }
        write_manifest(tmp, manifest)
    return out


@contextlib.contextmanager
def folder_written_whole(out: Path):
    """A temporary folder beside `out`, renamed to `out` when the block succeeds and removed when it fails, so
    a crash never leaves half a data set under the real name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict) -> None:
    """`manifest` with the sizes and content fingerprint of the folder's catalogue and pixels, as manifest.json."""
    manifest = {**manifest, "files": {name: (folder / name).stat().st_size for name in (CATALOGUE, PIXELS)},
                "fingerprint": _sha256_files(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


_CACHE_NAME = re.compile(r".+-seed\d+-[0-9a-f]{10}")  # DataSpec.folder_name(): a generated cache folder


def mend_advice(folder: Path, manifest: dict | None = None) -> str:
    """How to get a readable data set back. Only a generated cache folder may be deleted and regenerated; an
    imported one (or anything else) is the user's, so the advice is to write a new one, never to delete theirs."""
    folder = Path(folder)
    origin = (manifest or {}).get("origin")
    if origin == "imported":
        surveys = manifest.get("surveys")
        domains = surveys.values() if isinstance(surveys, dict) else []
        inputs = ", ".join(str(d.get("inputs")) for d in domains if isinstance(d, dict)) or "see manifest.json"
        return (f"re-import it with `uda-sweep data import ... --out NEW_FOLDER` from its inputs ({inputs}); "
                "those were only read, never changed")
    if _CACHE_NAME.fullmatch(folder.name) and origin in ("generated", None):
        return f"delete {folder}: it is a generated cache, made again on next use (nothing else is lost)"
    if origin == "generated":
        return ("simulate it again into a new folder with `uda-sweep data generate ... --out NEW_FOLDER` (its "
                "settings are under config in manifest.json)")
    return ("make a new one with `uda-sweep data import` (your own cutouts) or `uda-sweep data generate` "
            "(simulated) into a new folder")


class _DomainShape(BaseModel):
    name: str
    pixel_arcsec: float
    sky_sigma_nmgy: list[float]


class _TaskShape(BaseModel):
    class_names: list[str]
    num_known: int
    shared: list[int]


class _SurveysShape(BaseModel):
    source: _DomainShape
    target: _DomainShape


class _ManifestShape(BaseModel):
    """What readers of a manifest take from it (other keys are free), so a damaged one fails here, named."""

    generator_version: str
    fingerprint: str
    files: dict[str, int]
    task: _TaskShape
    bands: list[str]
    surveys: _SurveysShape
    stamp_px: int

    @field_validator("files")
    @classmethod
    def _both_files(cls, v):
        if missing := {CATALOGUE, PIXELS} - set(v):
            raise ValueError(f"must list the sizes of {CATALOGUE} and {PIXELS}; {sorted(missing)} missing")
        return v


def _not_a_folder(path: Path) -> str:
    """Why a file given where a data set folder belongs is the wrong thing, and what it is when it is a known YAML."""
    from ..config import describe_kind, read_yaml

    kind = None
    if path.suffix in (".yaml", ".yml"):
        try:
            kind = describe_kind(path, read_yaml(path))
        except UdaError:
            pass
    return (f"{path} is a file, not a data set folder (catalogue.parquet, pixels.npy, manifest.json, made by "
            "`uda-sweep data generate` or `uda-sweep data import`)" + (f"; {kind}" if kind else ""))


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if folder.is_file():
        raise DataError(_not_a_folder(folder))
    if not folder.exists():
        raise DataError(f"{folder}: no such data set folder (make one with `uda-sweep data generate` or "
                        "`uda-sweep data import`)")
    if not path.exists():
        raise DataError(f"{folder} is not a data set: {MANIFEST} is missing (make one with `uda-sweep data generate` "
                        "or `uda-sweep data import`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); {mend_advice(folder)}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a data set manifest (a JSON object); {mend_advice(folder)}")
    try:
        _ManifestShape.model_validate(manifest)
    except ValidationError as e:
        from ..config import _format

        raise DataError(f"{path} is damaged: {_format(e)}; {mend_advice(folder, manifest)}") from None
    if str(manifest["generator_version"]).split(".")[0] != GENERATOR_VERSION.split(".")[0]:
        raise DataError(f"{path}: made by generator {manifest['generator_version']}, "
                        f"this code reads {GENERATOR_VERSION}; "
                        f"{mend_advice(folder, manifest)}")
    return manifest


def _file_state(folder: Path, manifest: dict) -> dict[str, list[int]]:
    """Size, inode and change times of the manifest and every file it lists: any rewrite changes one of them."""
    out = {}
    for name in (MANIFEST, *manifest["files"]):
        st = (folder / name).stat()
        out[name] = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    return out


def content_verified(folder: Path, manifest: dict) -> bool:
    """Whether a full content check (fingerprint and pixels) already passed on exactly these files.

    Hashing a survey-sized pixel file takes a minute; every trial of a sweep would pay it at start. The record
    (VERIFIED, written by `record_verified`) is trusted only while no file has been touched since.
    """
    try:
        record = json.loads((Path(folder) / VERIFIED).read_text())
        return record == {"fingerprint": manifest["fingerprint"], "files": _file_state(Path(folder), manifest)}
    except (OSError, ValueError, TypeError, KeyError):
        return False


def record_verified(folder: Path, manifest: dict) -> None:
    """Note that the content check passed (best effort: a read-only data folder is checked at every load)."""
    record = {"fingerprint": manifest["fingerprint"], "files": _file_state(Path(folder), manifest)}
    tmp = Path(folder) / f"{VERIFIED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, Path(folder) / VERIFIED)
    except OSError:
        tmp.unlink(missing_ok=True)


def verify(folder: Path, full: bool = True) -> dict:
    """Check sizes (always) and the content fingerprint (when `full`, unless it already passed on these very
    files) before any expensive work."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, size in manifest["files"].items():
        p = folder / name
        if not p.exists() or p.stat().st_size != size:
            got = p.stat().st_size if p.exists() else "missing"
            raise DataError(f"{p}: expected {size} bytes, found {got} (truncated or replaced); "
                            f"{mend_advice(folder, manifest)}")
    if full and not content_verified(folder, manifest) and \
            _sha256_files(folder, tuple(manifest["files"])) != manifest["fingerprint"]:
        raise DataError(f"{folder}: content fingerprint does not match {MANIFEST} (corrupt files); "
                        f"{mend_advice(folder, manifest)}")
    return manifest


def ensure_dataset(spec: DataSpec, root: Path, progress: bool = True) -> Path:
    """The cached folder for `spec` under `root`, generated on first use (one process generates, others wait)."""
    spec.check()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / spec.folder_name()
    with open(root / f".{spec.folder_name()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            generate(spec, folder, progress=progress)
    verify(folder, full=False)  # the content is checked by load_dataset, which reads it next
    return folder
