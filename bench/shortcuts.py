"""Shortcut check: how well do stamp summary statistics alone classify the shared classes, per domain?

Features per stamp (no pixels): flux per band in a 1.5x half-light aperture, colours, half-light radius,
concentration (R80 / R20) and the second-moment axis ratio. Classifiers: multinomial logistic regression and a
gradient-boosted tree ensemble, trained and tested within each domain on the shared classes. Goal: balanced
accuracy at most chance + 15 points (chance = 1 / number of shared classes).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from uda_core.data.dataset import load_dataset
from uda_core.data.store import DataSpec, ensure_dataset


def summary_features(flux: np.ndarray) -> np.ndarray:
    """(N, B, H, W) nanomaggies -> (N, F) summary statistics."""
    n, b, h, w = flux.shape
    yy, xx = np.mgrid[:h, :w] - (h - 1) / 2
    r = np.sqrt(xx**2 + yy**2).ravel()
    order = np.argsort(r)
    total = flux.sum(axis=1).reshape(n, -1)[:, order]
    cum = np.cumsum(total, axis=1) / np.maximum(total.sum(1, keepdims=True), 1e-9)
    rs = r[order]
    r20, r50, r80 = (rs[np.argmax(cum >= q, axis=1)] + 0.5 for q in (0.2, 0.5, 0.8))
    aper = (r[None] <= 1.5 * r50[:, None]).reshape(n, 1, h, w)
    band_flux = np.maximum((flux * aper).sum(axis=(2, 3)), 1e-3)
    mags = 22.5 - 2.5 * np.log10(band_flux)
    img = np.clip(flux.sum(1), 0, None)
    m = img.sum((1, 2)) + 1e-9
    mxx = (img * xx**2).sum((1, 2)) / m
    myy = (img * yy**2).sum((1, 2)) / m
    mxy = (img * xx * yy).sum((1, 2)) / m
    tr, det = mxx + myy, mxx * myy - mxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    q = np.sqrt(np.maximum(tr / 2 - disc, 1e-9) / np.maximum(tr / 2 + disc, 1e-9))
    colours = mags[:, :-1] - mags[:, 1:]
    return np.column_stack([mags, colours, np.log(r50), r80 / r20, q])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--source", default="decals")
    ap.add_argument("--target", default="sdss")
    ap.add_argument("--root", default="data")
    a = ap.parse_args()
    data = load_dataset(ensure_dataset(DataSpec("universal", a.source, a.target, a.size), a.root))
    shared = data.shared
    chance = 1 / len(shared)
    pix = np.load(data.folder / "pixels.npy", mmap_mode="r")
    # Column groups of summary_features: 3 magnitudes, 2 colours, log r50, R80/R20, axis ratio.
    groups = {"photometry (flux, colour)": [0, 1, 2, 3, 4], "+ size": [0, 1, 2, 3, 4, 5],
              "+ size, concentration": [0, 1, 2, 3, 4, 5, 6], "+ size, concentration, axis ratio": list(range(8))}
    out = {}
    for domain, train_key, test_key in (("source", "source/train", "source/test"),
                                        ("target", "target/train", "target/test")):
        sets = []
        for key in (train_key, test_key):
            cat = data[key].catalogue
            keep = cat["label"].isin(shared).to_numpy()
            flux = np.asarray(pix[cat["row"].to_numpy()[keep]], dtype=np.float32)
            sets.append((summary_features(flux), cat["label"].to_numpy()[keep]))
        (xtr, ytr), (xte, yte) = sets
        res = {}
        for g, cols in groups.items():
            for name, clf in (("logistic", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
                              ("boosted_trees", HistGradientBoostingClassifier(max_iter=200, random_state=0))):
                clf.fit(xtr[:, cols], ytr)
                res[f"{g} / {name}"] = round(balanced_accuracy_score(yte, clf.predict(xte[:, cols])), 3)
        out[domain] = res
        for k, v in res.items():
            print(f"{domain:6s} ({getattr(a, domain)}) {k:50s} balanced accuracy {v:.3f}  (chance {chance:.2f})")
    photometry = max(v for d in out.values() for k, v in d.items() if k.startswith("photometry"))
    issue_list = max(v for d in out.values() for k, v in d.items() if k.startswith("+ size, concentration /"))
    print(json.dumps({"bench": "shortcuts", "size": a.size, "pair": f"{a.source}->{a.target}", "chance": chance,
                      "balanced_acc": out, "max_photometry_only": photometry,
                      "max_flux_colour_size_concentration": issue_list,
                      "goal_max": round(chance + 0.15, 3), "goal_met_photometry": photometry <= chance + 0.15,
                      "goal_met_flux_colour_size_concentration": issue_list <= chance + 0.15}))


if __name__ == "__main__":
    main()
