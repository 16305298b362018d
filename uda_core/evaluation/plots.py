"""Figures for evaluation reports (PNG, matplotlib Agg backend)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: must be set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import l2_normalize, to_numpy  # noqa: E402

__all__ = ["plot_confusion", "plot_embedding", "plot_accuracy_by_bin", "plot_vote_confusions", "plot_vote_table"]


def _save(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as PNG to ``path`` (creating parents) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return out


def plot_confusion(conf: dict, path: str | Path, title: str = "") -> Path:
    """Heat map of a ``confusion()`` dict: colours = row fractions, text = raw counts.

    conf["matrix"]: (R, C) counts, conf["rows"]: R names, conf["cols"]: C names. Rows without a sample in this
    split (a source-private class on the target, a target-private one on the source) are left out and named
    under the title; every predicted column is kept.
    """
    return _save(_confusion_figure(conf, title), path)


def _confusion_figure(conf: dict, title: str = "") -> Any:
    """The figure of `plot_confusion` (not saved, not closed)."""
    counts = np.asarray(conf["matrix"], dtype=np.int64).reshape(len(conf["rows"]), len(conf["cols"]))
    rows, cols = list(conf["rows"]), list(conf["cols"])
    totals = counts.sum(axis=1)
    keep = totals > 0
    empty = [r for r, k in zip(rows, keep) if not k]
    counts, totals = counts[keep], totals[keep]
    rows = [r for r, k in zip(rows, keep) if k]
    frac = counts / totals[:, None] if rows else counts.astype(float)
    width = 1.0 + 0.9 * len(cols)
    fig, ax = plt.subplots(figsize=(width, 0.8 + 0.7 * max(len(rows), 1)))
    if rows:
        im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    else:  # nothing to draw: an empty frame with the predicted columns, and why it is empty
        ax.set_xlim(-0.5, len(cols) - 0.5)
        ax.set_ylim(-0.5, 0.5)
        ax.text((len(cols) - 1) / 2, 0, "no samples in this split", ha="center", va="center", color="0.4")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"{r} (n={t})" for r, t in zip(rows, totals)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if empty and rows:
        # small grey line between the title and the matrix, wrapped to the figure's width
        note = textwrap.fill("no samples (rows left out): " + ", ".join(empty), width=max(30, int(width * 13)))
        ax.annotate(note, xy=(0.5, 1.0), xycoords="axes fraction", xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8, color="0.35")
        ax.set_title(title, pad=8 + 11 * (note.count("\n") + 1))
    else:
        ax.set_title(title)
    if rows:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row fraction")
    return fig


def _subsample(x: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Random subset of at most ``max_points`` rows (sorted indices) of ``x``."""
    if x.shape[0] <= max_points:
        return x
    return x[np.sort(rng.choice(x.shape[0], size=max_points, replace=False))]


def plot_embedding(
    source_feats: Any,
    target_feats: Any,
    target_unknown_mask: Any,
    path: str | Path,
    method: str = "pca",
    max_points: int = 1000,
    seed: int = 0,
    title: str = "",
) -> Path:
    """2-D embedding (PCA or t-SNE) of L2-normalised source and target features.

    source_feats (M, D), target_feats (N, D), target_unknown_mask (N,) bool, or
    None when the target has no labels (target stamps are then one group).
    At most ``max_points`` points are drawn per group (source, target known,
    target unknown), sampled with a seeded RNG. Features are L2-normalised since
    the classifier is cosine-based.
    """
    rng = np.random.default_rng(seed)
    src = l2_normalize(source_feats)
    tgt = l2_normalize(target_feats)
    groups = [("source", _subsample(src, max_points, rng), "tab:blue", "o")]
    if target_unknown_mask is None:
        groups.append(("target", _subsample(tgt, max_points, rng), "tab:green", "^"))
    else:
        unk = to_numpy(target_unknown_mask).astype(bool).ravel()
        groups += [
            ("target known", _subsample(tgt[~unk], max_points, rng), "tab:green", "^"),
            ("target unknown", _subsample(tgt[unk], max_points, rng), "tab:red", "x"),
        ]
    stacked = np.concatenate([g[1] for g in groups], axis=0)
    if method == "pca":
        from sklearn.decomposition import PCA

        emb = PCA(n_components=2, random_state=seed).fit_transform(stacked)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (stacked.shape[0] - 1) / 3.0)))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca",
                   random_state=seed).fit_transform(stacked)
    else:
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig, ax = plt.subplots(figsize=(6, 5))
    start = 0
    for name, pts, color, marker in groups:
        seg = emb[start:start + pts.shape[0]]
        start += pts.shape[0]
        if seg.shape[0]:
            ax.scatter(seg[:, 0], seg[:, 1], s=8, c=color, marker=marker, alpha=0.6,
                       label=f"{name} ({seg.shape[0]})")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"{method.upper()} embedding")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def plot_accuracy_by_bin(
    bins: Sequence[dict], path: str | Path, xlabel: str, title: str = ""
) -> Path:
    """Accuracy per bin from ``accuracy_by_bin()`` (line at bin centres, counts annotated)."""
    centres = np.array([(b["lo"] + b["hi"]) / 2.0 for b in bins], dtype=float)
    widths = np.array([b["hi"] - b["lo"] for b in bins], dtype=float)
    acc = np.array([b["acc"] for b in bins], dtype=float)
    ns = [int(b["n"]) for b in bins]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(centres, np.nan_to_num(acc), width=0.9 * widths, color="tab:blue", alpha=0.6)
    for x, a, n in zip(centres, acc, ns):
        ax.text(x, (0.0 if np.isnan(a) else a) + 0.02, f"n={n}", ha="center", fontsize=7)
    ax.set_ylim(0.0, 1.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    return _save(fig, path)


# Galaxy Zoo answers too long for a tick label; others are cut at _ANSWER_CHARS characters.
_SHORT_ANSWERS = {"featured-or-disk": "featured", "more-than-4": ">4", "cant-tell": "can't tell",
                  "minor-disturbance": "minor", "major-disturbance": "major", "cigar-shaped": "cigar",
                  "in-between": "between"}
_ANSWER_CHARS = 10


def _short(answer: str) -> str:
    a = _SHORT_ANSWERS.get(answer, answer)
    return a if len(a) <= _ANSWER_CHARS else a[: _ANSWER_CHARS - 1] + "."


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def plot_vote_confusions(votes: dict, path: str | Path, title: str = "", cols: int = 4) -> Path:
    """Grid of per-question confusion matrices of a `VoteReport.to_json()` dict (true vs predicted top answer, on
    the galaxies counting at the 0.5 cut): colours row fractions, text counts, accuracy and n in each title."""
    conf, rows = votes["confusion"], {r["question"]: r for r in votes["questions"]}
    names = list(conf)
    ncols = min(cols, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, q in zip(axes.ravel(), names):
        counts = np.asarray(conf[q]["matrix"], dtype=np.int64)
        totals = counts.sum(axis=1, keepdims=True)
        frac = np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)
        ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        k = counts.shape[0]
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7 if k > 4 else 8,
                            color="white" if frac[i, j] > 0.5 else "black")
        labels = [_short(a) for a in conf[q]["rows"]]
        ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), labels, fontsize=7)
        r = rows.get(q, {})
        ax.set_title(f"{q}\nacc50 {_fmt(r.get('acc50'))}, n {r.get('n50', int(counts.sum()))}", fontsize=8)
    fig.supxlabel("predicted top answer (expected vote fraction)", fontsize=8)
    fig.supylabel("true top answer (volunteer votes)", fontsize=8)
    mv = votes.get("min_votes")
    fig.suptitle(title + (f"\ngalaxies with >= {mv:g} votes on the question, top fraction > 0.5, "
                          "parent answers on top" if mv is not None else ""), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_vote_table(votes: dict, path: str | Path, title: str = "") -> Path:
    """The per-question table of a `VoteReport.to_json()` dict as a picture: n and accuracy at cuts 0.5 and 0.8,
    then macro TPR / precision per detection threshold ("-": no galaxy to score)."""
    thresholds = sorted({r["threshold"] for r in votes["answers"]})
    header = ["question", "n50", "acc50", "n80", "acc80"] + [f"TPR / prec\nt = {t:g}" for t in thresholds]
    cells = []
    for r in votes["questions"]:
        row = [r["question"], str(r["n50"]), _fmt(r["acc50"]), str(r["n80"]), _fmt(r["acc80"])]
        for t in thresholds:
            k = f"t{round(t * 100):d}"
            row.append(f"{_fmt(r.get(f'tpr_{k}'))} / {_fmt(r.get(f'precision_{k}'))}")
        cells.append(row)
    mean = votes.get("mean", {})
    cells.append(["mean (scored questions)", "", _fmt(mean.get("mean_acc50")), "", _fmt(mean.get("mean_acc80"))]
                 + [""] * len(thresholds))
    fig, ax = plt.subplots(figsize=(2.6 + 0.75 * 4 + 1.25 * len(thresholds), 0.9 + 0.3 * (len(cells) + 1)))
    ax.axis("off")
    widths = [0.24] + [0.075] * 4 + [0.125] * len(thresholds)
    table = ax.table(cellText=cells, colLabels=header, colWidths=[w / sum(widths) for w in widths],
                     loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.35)
    for (i, j), cell in table.get_celld().items():
        if i == 0:
            cell.set_height(cell.get_height() * 1.7)
            cell.set_facecolor("#dde5f0")
        if j == 0 and i > 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.03
        if i == len(cells):
            cell.set_facecolor("#f0f0f0")
    mv = votes.get("min_votes")
    note = (f"accuracy: >= {mv:g} votes on the question, top fraction > cut (0.5, 0.8), parent answers on top\n"
            "detection: positive = vote fraction > 0.5, called = predicted fraction > t; macro mean over answers "
            "with positives; -: nothing to score") if mv is not None else ""
    ax.set_title(f"{title}\n{note}" if note else title, fontsize=8)
    return _save(fig, path)
