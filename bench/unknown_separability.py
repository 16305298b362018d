"""Are the unknown classes visible in the target survey's pixels at all? Two reference scores, no CNN.

bench/adaptation finds every CNN's unknown AUROC near 0.6, the open-set oracle's included. This asks whether the
images or the network are the limit, with features a network could learn: per band, the azimuthally averaged
radial profile (arcsinh of the surface brightness, and its shape normalised by the total) of every target/test
stamp.
  supervised (ORACLE)  a logistic regression on those features, 5-fold cross-validated on target/test's own labels:
                       what a simple learner reaches when it is shown the unknowns. A ceiling, never a method.
  label-free           the mean distance to the 10 nearest source/train galaxies, emulated as the target survey
                       (methods.emulation, full strength), in the standardised feature space: a density score that
                       no target label touches.
Per pair: AUROC of unknown against known, overall and per unknown class (each class against the known ones).
Every figure needs target labels to compute: oracle reporting.

Seed s is bench/adaptation's data set of seed s (the same folders under the same --root). The score and its
features were fixed on seed 0; seeds 1 and up are fresh draws of the same surveys, where they are confirmed.

    .venv/bin/python bench/unknown_separability.py [--pairs decals:sdss ...] [--seeds 3] [--size bench] [--publish]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.publish import publish  # noqa: E402

PAIRS = ("decals:sdss", "lsst_y10:lsst_y1", "decals:bass_mzls")
NEIGHBOURS = 10
MAX_REFERENCE = 6000  # emulated source/train stamps in the label-free reference
KINDS = ("supervised_oracle", "label_free_knn")


def profile_features(flux: np.ndarray) -> np.ndarray:
    """(N, B, H, W) fluxes -> (N, 2 B H/2): per band the radial profile (arcsinh) and its normalised shape."""
    flux = np.asarray(flux, np.float64)
    n, bands, h, w = flux.shape
    yy, xx = np.mgrid[:h, :w]
    ring = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2).astype(int).ravel()
    per_ring = np.bincount(ring)
    # Ring sums as one matrix product, (N*B, H*W) @ (H*W, rings), then each divided by its pixel count.
    onehot = np.zeros((h * w, per_ring.size))
    onehot[np.arange(h * w), ring] = 1.0
    prof = (flux.reshape(n * bands, h * w) @ onehot / per_ring).reshape(n, bands, -1)[:, :, : h // 2]
    total = prof.sum(2, keepdims=True)
    shape = prof / np.where(np.abs(total) > 0, total, 1.0)
    return np.concatenate([np.arcsinh(10 * prof).reshape(n, -1), shape.reshape(n, -1)], 1)


def questions(y: np.ndarray, num_known: int, class_names: list[str]):
    """(name, rows, is_unknown): unknown against known ("all"), then each unknown class against the known ones."""
    yield "all", np.ones(len(y), bool), y >= num_known
    for u in range(num_known, len(class_names)):
        keep = (y < num_known) | (y == u)
        yield class_names[u], keep, y[keep] == u


def aurocs(y: np.ndarray, score: np.ndarray, num_known: int, class_names: list[str]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {name: float(roc_auc_score(target, score[keep])) for name, keep, target in questions(y, num_known,
                                                                                                 class_names)}


def supervised_aurocs(x: np.ndarray, y: np.ndarray, num_known: int, class_names: list[str]) -> dict[str, float]:
    """ORACLE: per question, a logistic regression's 5-fold cross-validated probabilities on target/test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for name, keep, target in questions(y, num_known, class_names):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        out[name] = float(roc_auc_score(target, cross_val_predict(clf, x[keep], target, cv=5,
                                                                  method="predict_proba")[:, 1]))
    return out


def label_free_score(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mean distance to the NEIGHBOURS nearest reference rows, in the reference's standardised space."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(reference)
    nn = NearestNeighbors(n_neighbors=NEIGHBOURS).fit(scale.transform(reference))
    return nn.kneighbors(scale.transform(x))[0].mean(1)


def measure(folder: Path) -> dict:
    import torch

    from uda_core.data.dataset import load_dataset
    from uda_core.methods.emulation import emulate, survey_gap

    data = load_dataset(folder, verify_content=False, votes=False)
    test = data["target/test"]
    x_test = profile_features(test.x.flux(slice(0, len(test))).numpy())
    y = test.y.numpy()
    src = data["source/train"]
    n = min(len(src), MAX_REFERENCE)
    gap, gen = survey_gap(data.manifest), torch.Generator().manual_seed(0)
    reference = np.concatenate([profile_features(emulate(src.x.flux(slice(lo, min(lo + 512, n))), gap, 1.0,
                                                         gen).numpy()) for lo in range(0, n, 512)])
    k, names = data.num_known, data.class_names
    return {"n_test": int(len(y)), "n_unknown": int((y >= k).sum()),
            "supervised_oracle": supervised_aurocs(x_test, y, k, names),
            "label_free_knn": aurocs(y, label_free_score(reference, x_test), k, names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS))
    ap.add_argument("--seeds", type=int, default=1, help="data sets of seeds 0..N-1")
    ap.add_argument("--size", default="bench")
    ap.add_argument("--root", type=Path, default=ROOT / "data")
    ap.add_argument("--publish", action="store_true", help="write bench/results/unknown_separability.json")
    args = ap.parse_args()

    from uda_core.data.store import DataSpec, ensure_dataset

    t0, result = time.time(), {}
    for pair in args.pairs:
        source, target = pair.split(":")
        per_seed = []
        for seed in range(args.seeds):
            folder = ensure_dataset(DataSpec(source=source, target=target, size=args.size, seed=seed), args.root,
                                    progress=False)
            per_seed.append(measure(folder))
            shown = {kind: ", ".join(f"{k} {v:.3f}" for k, v in per_seed[-1][kind].items()) for kind in KINDS}
            print(f"{pair} seed {seed}: unknown AUROC on radial profiles; supervised (oracle): "
                  f"{shown['supervised_oracle']}; label-free kNN to emulated source: {shown['label_free_knn']}",
                  flush=True)
        result[pair] = {"seeds": per_seed, "mean": {kind: {k: round(float(np.mean([r[kind][k] for r in per_seed])), 3)
                                                          for k in per_seed[0][kind]} for kind in KINDS}}
    out = {"bench": "unknown_separability", "size": args.size, "seeds": args.seeds, "neighbours": NEIGHBOURS,
           "pairs": result, "wall_s": round(time.time() - t0, 1)}
    if args.publish:
        publish("unknown_separability", out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
