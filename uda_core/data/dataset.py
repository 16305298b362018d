"""A data set folder opened for training: per domain and split, memory-mapped stamps, labels and catalogue rows.

Training draws batches by indexing `Split.x` (data.stamps: rows read from the mapped pixel file, no per-sample
Python in the hot path), so a trial's memory does not grow with the data set. Pixels are mapped to
network inputs by arcsinh(flux / s) with one softening s per band, the source survey's sky sigma, for both
domains: the same physical flux gives the same input in either survey, so the domain gap the network sees is the
real one (resolution, seeing, depth), not a normalisation artefact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from ..errors import DataError
from ..votes import VoteTree, tree_from_dict
from .stamps import Stamps, stretch
from .store import (
    CATALOGUE,
    MANIFEST,
    PIXELS,
    TARGET_LABELS,
    UNLABELLED,
    content_verified,
    has_target_labels,
    mend_advice,
    record_verified,
    verify,
)

__all__ = ["Split", "UdaData", "load_dataset", "preprocess", "vote_setup"]

REQUIRED_COLUMNS = ("id", "row", "domain", "split", "label", "train_label", "r_mag")
SPLITS = ("source/train", "source/val", "source/test", "target/train", "target/test")


@dataclass
class Split:
    x: Stamps  # network inputs, read from the memory-mapped pixel file when indexed
    y: torch.Tensor  # (N,) true class ids (int64); UNLABELLED (-1) in an unlabelled target
    train_y: torch.Tensor  # (N,) labels used for training (label noise applied to source/train)
    catalogue: pd.DataFrame
    votes: torch.Tensor | None = None  # (N, A) float32 volunteer vote counts, where the domain has votes

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> Split:
        """The rows `index` of this split (no pixels are read)."""
        t = torch.from_numpy(index)
        return Split(self.x.subset(index), self.y[t], self.train_y[t],
                     self.catalogue.iloc[index].reset_index(drop=True),
                     None if self.votes is None else self.votes[t])


@dataclass
class UdaData:
    splits: dict[str, Split]
    class_names: list[str]
    num_known: int
    shared: list[int]
    bands: list[str]
    softening: list[float]
    manifest: dict
    folder: Path
    vote_tree: VoteTree | None = None  # the Galaxy Zoo decision tree, when the data set carries votes
    _capped: dict = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, key: str) -> Split:
        return self.splits[key]

    def capped(self, max_rows: int) -> UdaData:
        """This data set with every split longer than `max_rows` cut to a fixed random sample of that many rows
        (kept in file order): what evaluation and model export read, so their cost has a bound whatever the size.

        The sample depends only on the split's length and `max_rows`, so every trial and step sees the same one.
        """
        if all(len(s) <= max_rows for s in self.splits.values()):
            return self
        if max_rows not in self._capped:
            splits = {k: s if len(s) <= max_rows else
                      s.subset(np.sort(np.random.default_rng([len(s), max_rows]).choice(len(s), max_rows,
                                                                                        replace=False)))
                      for k, s in self.splits.items()}
            self._capped[max_rows] = UdaData(splits, self.class_names, self.num_known, self.shared, self.bands,
                                             self.softening, self.manifest, self.folder, self.vote_tree)
        return self._capped[max_rows]

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def stamp_px(self) -> int:
        return int(self.manifest["stamp_px"])

    @property
    def has_target_labels(self) -> bool:
        """Whether target rows carry class labels (manifest `target_labels` is not "none"): oracle/ metrics need
        them."""
        return has_target_labels(self.manifest)


def preprocess(flux: np.ndarray, softening: list[float]) -> torch.Tensor:
    """Stamps (N, C, H, W) in nanomaggies as network inputs (data.stamps.stretch), as a CPU tensor."""
    return stretch(torch.as_tensor(np.asarray(flux, dtype=np.float32)), softening)


def _check_labels(cat: pd.DataFrame, manifest: dict, folder: Path) -> None:
    """Source rows always carry a class label; target rows may lack one only where the manifest says "none"."""
    kind = manifest.get("target_labels", "simulated")
    if kind not in TARGET_LABELS:
        raise DataError(f"{folder / MANIFEST}: target_labels {kind!r} is not one of {list(TARGET_LABELS)}; "
                        "set it to what the target rows carry")
    missing = (cat["label"] == UNLABELLED) | (cat["train_label"] == UNLABELLED)
    source = missing & (cat["domain"] == "source")
    if source.any():
        raise DataError(f"{folder / CATALOGUE}: {int(source.sum())} source rows have no class label "
                        f"(label = {UNLABELLED}, ids {cat['id'][source].tolist()[:5]}); source stamps train the "
                        "classifier: give them their class or drop them")
    target = missing & (cat["domain"] == "target")
    if target.any() and has_target_labels(manifest):
        raise DataError(f"{folder / CATALOGUE}: {int(target.sum())} target rows have no class label "
                        f"(label = {UNLABELLED}, ids {cat['id'][target].tolist()[:5]}) but {MANIFEST} says "
                        f"target_labels: {kind!r}; label every target row, or set target_labels to 'none' if the "
                        "target survey is unlabelled")


def vote_setup(manifest: dict, cat: pd.DataFrame, folder: Path) -> tuple[VoteTree | None, list[str]]:
    """The data set's vote tree and the domains whose rows carry votes (manifest "votes": {"tree", "domains"}).

    Votes are labels: a domain listed there has a count column per answer of the tree, counts >= 0.
    """
    raw = manifest.get("votes")
    if not raw:
        return None, []
    try:
        tree = tree_from_dict(raw["tree"])
        domains = raw["domains"]
        if not isinstance(domains, list) or not set(domains) <= {"source", "target"}:
            raise DataError(f"domains must be a list of 'source' and 'target', got {domains!r}")
    except (DataError, KeyError, TypeError) as e:
        raise DataError(f"{folder / MANIFEST}: votes: {e}; {mend_advice(folder, manifest)}") from None
    missing = [c for c in tree.columns if c not in cat.columns]
    if missing:
        raise DataError(f"{folder / CATALOGUE}: the manifest's vote tree {tree.name} needs columns {missing[:5]}"
                        f"{'...' if len(missing) > 5 else ''}; {mend_advice(folder, manifest)}")
    try:
        counts = cat.loc[cat["domain"].isin(domains), tree.columns].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        counts = np.array([np.nan])  # a text column: refused below
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise DataError(f"{folder / CATALOGUE}: vote counts must be numbers, finite and >= 0; "
                        f"{mend_advice(folder, manifest)}")
    return tree, domains


def _check_finite(pixels: np.ndarray, cat: pd.DataFrame, folder: Path, chunk: int = 4096) -> None:
    """Every stamp's pixels are finite; read in chunks so the check needs no more memory than a batch."""
    for lo in range(0, len(pixels), chunk):
        bad = ~np.isfinite(pixels[lo : lo + chunk]).all(axis=(1, 2, 3))
        if bad.any():
            rows = set((lo + np.flatnonzero(bad)).tolist())
            hit = cat[cat["row"].isin(rows)]
            where = sorted(set(hit["domain"].astype(str) + "/" + hit["split"].astype(str)))
            raise DataError(f"{folder}/{PIXELS}: non-finite pixels in {', '.join(where) or 'unused rows'} "
                            f"(ids {hit['id'].tolist()[:5]}...); mask or drop those stamps")


def _read_catalogue(folder: Path, manifest: dict, columns: tuple[str, ...] | None) -> pd.DataFrame:
    """The catalogue, or only `columns` of it (a trial needs a few of dozens)."""
    try:
        table = pq.read_table(folder / CATALOGUE, columns=None if columns is None else list(columns))
    except Exception as e:  # pyarrow raises many types on corrupt files and missing columns
        raise DataError(f"{folder}: cannot read {CATALOGUE} ({type(e).__name__}: {e}); "
                        f"{mend_advice(folder, manifest)}") from None
    return table.to_pandas()


def load_dataset(folder: Path, verify_content: bool = True, votes: bool = True,
                 columns: tuple[str, ...] | None = None) -> UdaData:
    """A data set folder as splits of memory-mapped stamps, labels and catalogue rows.

    `votes`: read the vote counts (a model without a vote head never looks at them). `columns`: the catalogue
    columns to keep beyond the required ones (None: all). The content check (fingerprint, finite pixels) runs
    once per version of the files (store.content_verified), not at every load.
    """
    folder = Path(folder)
    manifest = verify(folder, full=False)
    checked = not verify_content or content_verified(folder, manifest)
    if not checked:
        verify(folder, full=True)
    schema = _catalogue_schema(folder, manifest)
    missing = [c for c in REQUIRED_COLUMNS if c not in schema]
    if missing:
        raise DataError(f"{folder / CATALOGUE}: missing columns {missing}; a data set needs {list(REQUIRED_COLUMNS)}")
    tree_columns = _vote_columns(manifest, folder) if votes else []
    wanted = None if columns is None else tuple(dict.fromkeys(
        (*REQUIRED_COLUMNS, *columns, *(c for c in tree_columns if c in schema))))
    cat = _read_catalogue(folder, manifest, wanted)
    try:
        pixels = np.load(folder / PIXELS, mmap_mode="r")
    except Exception as e:  # numpy raises many types on corrupt files
        raise DataError(f"{folder}: cannot read ({type(e).__name__}: {e}); {mend_advice(folder, manifest)}") from None
    if len(pixels) != len(cat) or pixels.shape[1] != len(manifest["bands"]):
        raise DataError(f"{folder}: {PIXELS} shape {pixels.shape} does not match the catalogue "
                        f"({len(cat)} rows, bands {manifest['bands']})")
    _check_labels(cat, manifest, folder)
    if not checked:
        _check_finite(pixels, cat, folder)
    softening = manifest["surveys"]["source"]["sky_sigma_nmgy"]
    tree, vote_domains = vote_setup(manifest, cat, folder) if votes else (None, [])
    if not checked:
        record_verified(folder, manifest)
    splits = {}
    for key in SPLITS:
        domain, split = key.split("/")
        part = cat[(cat["domain"] == domain) & (cat["split"] == split)].reset_index(drop=True)
        splits[key] = Split(
            Stamps(pixels, part["row"].to_numpy(), softening),
            torch.tensor(part["label"].to_numpy(), dtype=torch.long),
            torch.tensor(part["train_label"].to_numpy(), dtype=torch.long),
            part.drop(columns=tree.columns) if domain in vote_domains and columns is not None else part,
            torch.tensor(part[tree.columns].to_numpy(dtype=np.float32)) if domain in vote_domains else None,
        )
    task = manifest["task"]
    return UdaData(splits, task["class_names"], task["num_known"], task["shared"], manifest["bands"], softening,
                   manifest, folder, tree)


def _catalogue_schema(folder: Path, manifest: dict) -> list[str]:
    try:
        return pq.read_schema(folder / CATALOGUE).names
    except Exception as e:  # pyarrow raises many types on corrupt files
        raise DataError(f"{folder}: cannot read {CATALOGUE} ({type(e).__name__}: {e}); "
                        f"{mend_advice(folder, manifest)}") from None


def _vote_columns(manifest: dict, folder: Path) -> list[str]:
    """The count columns of the manifest's vote tree (none without votes); a damaged tree is vote_setup's error."""
    raw = manifest.get("votes")
    try:
        return tree_from_dict(raw["tree"]).columns if raw else []
    except Exception:  # noqa: BLE001 - reported with its advice by vote_setup
        return []
