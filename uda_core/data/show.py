"""A picture of a data set: example stamps per class (rows) and domain (column blocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .store import CATALOGUE, PIXELS, has_target_labels, mend_advice, verify

__all__ = ["show_dataset", "to_rgb"]


def to_rgb(flux: np.ndarray, softening: float) -> np.ndarray:
    """(bands, H, W) fluxes -> (H, W, 3) display image: reddest band as red, arcsinh stretch; one or two bands are
    shown in grey (their mean)."""
    flux = np.asarray(flux, dtype=np.float32)
    if flux.shape[0] < 3:
        flux = np.repeat(flux.mean(axis=0, keepdims=True), 3, axis=0)
    img = np.arcsinh(flux[::-1].transpose(1, 2, 0) / (3 * softening))
    top = np.percentile(img, 99.5)
    return np.clip(img / top if top > 0 else img, 0, 1)


def _read_stamps(folder: Path, manifest: dict):
    """The catalogue columns the picture needs and the memory-mapped pixels; a damaged file is a DataError naming it."""
    import pyarrow.parquet as pq

    try:
        cat = pq.read_table(folder / CATALOGUE, columns=["row", "domain", "split", "class_name", "r_mag"]).to_pandas()
    except Exception as e:  # pyarrow raises many types on a corrupt file or a missing column
        raise DataError(f"{folder / CATALOGUE}: cannot read ({type(e).__name__}: {e}); "
                        f"{mend_advice(folder, manifest)}") from None
    try:
        pixels = np.load(folder / PIXELS, mmap_mode="r")
    except Exception as e:  # numpy: a damaged header or a size that does not fit it
        raise DataError(f"{folder / PIXELS}: cannot read ({type(e).__name__}: {e}); "
                        f"{mend_advice(folder, manifest)}") from None
    rows = cat["row"]
    if pixels.ndim != 4 or (len(rows) and not 0 <= rows.min() <= rows.max() < len(pixels)):
        raise DataError(f"{folder / PIXELS}: shape {pixels.shape} does not hold the catalogue's rows "
                        f"(0 to {rows.max() if len(rows) else 0}); {mend_advice(folder, manifest)}")
    return cat, pixels


def show_dataset(folder: Path, out: Path | None = None, per_class: int = 5, seed: int = 0) -> Path:
    if per_class < 1:
        raise ConfigError(f"--per-class: give at least 1 stamp per class and domain, got {per_class}")
    folder = Path(folder)
    manifest = verify(folder, full=False)  # file sizes: a truncated file fails here, before any picture work
    cat, pixels = _read_stamps(folder, manifest)
    import matplotlib  # only for a real data set: a wrong folder fails in a second

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = manifest["task"]["class_names"]
    rng = np.random.default_rng(seed)
    domains = ["source", "target"]
    fig, axes = plt.subplots(len(names), per_class * 2, figsize=(per_class * 2 * 1.1, len(names) * 1.15), squeeze=False)
    unlabelled = not has_target_labels(manifest)
    for d_i, domain in enumerate(domains):
        sky = manifest["surveys"][domain].get("sky_sigma_nmgy") or manifest["surveys"]["source"]["sky_sigma_nmgy"]
        soft = sky[len(sky) // 2]  # the middle band (r of g, r, z)
        # an unlabelled target: random stamps fill its block, one row after another
        pool = cat[cat["domain"] == domain].iloc[rng.permutation(int((cat["domain"] == domain).sum()))]
        for c_i, cls in enumerate(names):
            if domain == "target" and unlabelled:
                pick = pool.iloc[c_i * per_class : (c_i + 1) * per_class]
            else:
                rows = cat[(cat["domain"] == domain) & (cat["class_name"] == cls)]
                pick = rows.iloc[rng.permutation(len(rows))[:per_class]] if len(rows) else rows
            for k in range(per_class):
                ax = axes[c_i, d_i * per_class + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(pick):
                    r = pick.iloc[k]
                    ax.imshow(to_rgb(pixels[int(r["row"])], soft), origin="lower")
                    if np.isfinite(r["r_mag"]):
                        ax.text(1, 1, f"r={r['r_mag']:.1f}", color="w", fontsize=5)
                else:
                    ax.set_facecolor("0.85")
                if k == 0 and d_i == 0:
                    ax.set_ylabel(cls, fontsize=7)
                if c_i == 0 and k == 0:
                    ax.set_title(f"{domain}: {manifest['surveys'][domain]['name']}", fontsize=8, loc="left")
    note = "; the target has no labels: its block shows random stamps, not classes" if unlabelled else ""
    fig.suptitle(f"{folder.name}  (grey: class absent from that domain{note})", fontsize=8)
    fig.tight_layout()
    out = Path(out) if out else folder / "examples.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
