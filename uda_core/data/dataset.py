"""A data set folder loaded as in-memory tensors, one per domain and split.

Training draws batches by indexing these tensors (no per-sample Python in the hot path). Pixels are mapped to
network inputs by arcsinh(flux / s) with one softening s per band, the source survey's sky sigma, for both
domains: the same physical flux gives the same input in either survey, so the domain gap the network sees is the
real one (resolution, seeing, depth), not a normalisation artefact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from ..errors import DataError
from ..votes import VoteTree, tree_from_dict
from .store import CATALOGUE, MANIFEST, PIXELS, TARGET_LABELS, UNLABELLED, has_target_labels, mend_advice, verify

__all__ = ["Split", "UdaData", "load_dataset", "preprocess", "vote_setup"]

REQUIRED_COLUMNS = ("id", "row", "domain", "split", "label", "train_label", "r_mag")
SPLITS = ("source/train", "source/val", "source/test", "target/train", "target/test")


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 network inputs
    y: torch.Tensor  # (N,) true class ids (int64); UNLABELLED (-1) in an unlabelled target
    train_y: torch.Tensor  # (N,) labels used for training (label noise applied to source/train)
    catalogue: pd.DataFrame
    votes: torch.Tensor | None = None  # (N, A) float32 volunteer vote counts, where the domain has votes

    def __len__(self) -> int:
        return len(self.y)


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

    def __getitem__(self, key: str) -> Split:
        return self.splits[key]

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
    """arcsinh stretch with a per-band softening (nanomaggies); the same mapping for every domain, in training and
    in prediction. In torch, which uses every core (2x numpy's speed here)."""
    s = torch.tensor(softening, dtype=torch.float32)[None, :, None, None]
    return torch.asinh(torch.as_tensor(np.asarray(flux, dtype=np.float32)) / s) / 3.0


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


def load_dataset(folder: Path, verify_content: bool = True) -> UdaData:
    folder = Path(folder)
    manifest = verify(folder, full=verify_content)
    try:
        cat = pq.read_table(folder / CATALOGUE).to_pandas()
        pixels = np.load(folder / PIXELS, mmap_mode="r")
    except Exception as e:  # pyarrow and numpy raise many types on corrupt files
        raise DataError(f"{folder}: cannot read ({type(e).__name__}: {e}); {mend_advice(folder, manifest)}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in cat.columns]
    if missing:
        raise DataError(f"{folder / CATALOGUE}: missing columns {missing}; a data set needs {list(REQUIRED_COLUMNS)}")
    if len(pixels) != len(cat) or pixels.shape[1] != len(manifest["bands"]):
        raise DataError(f"{folder}: {PIXELS} shape {pixels.shape} does not match the catalogue "
                        f"({len(cat)} rows, bands {manifest['bands']})")
    _check_labels(cat, manifest, folder)
    softening = manifest["surveys"]["source"]["sky_sigma_nmgy"]
    tree, vote_domains = vote_setup(manifest, cat, folder)
    splits = {}
    for key in SPLITS:
        domain, split = key.split("/")
        part = cat[(cat["domain"] == domain) & (cat["split"] == split)].reset_index(drop=True)
        flux = pixels[part["row"].to_numpy()]
        if not np.isfinite(flux).all():
            bad = part["id"][~np.isfinite(flux).all(axis=(1, 2, 3))].tolist()[:5]
            raise DataError(f"{folder}/{PIXELS}: non-finite pixels in {key} (ids {bad}...); mask or drop those stamps")
        splits[key] = Split(
            preprocess(flux, softening),
            torch.tensor(part["label"].to_numpy(), dtype=torch.long),
            torch.tensor(part["train_label"].to_numpy(), dtype=torch.long),
            part,
            torch.tensor(part[tree.columns].to_numpy(dtype=np.float32)) if domain in vote_domains else None,
        )
    task = manifest["task"]
    return UdaData(splits, task["class_names"], task["num_known"], task["shared"], manifest["bands"], softening,
                   manifest, folder, tree)
