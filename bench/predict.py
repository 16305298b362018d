"""Catalogue throughput: `uda-sweep predict` (batched, streamed, bf16 where the CPU has fast bf16) against a naive
one-galaxy-at-a-time loop of the same model, in the same process.

A quickstart-sized model (CNN width 16, depth 4, 48 px, 3 bands) is trained for a few steps and saved as the same
MLflow pyfunc model a sweep registers. Throughput does not depend on the weights. Figures:
  naive      one `Classifier.predict` call per galaxy (what a per-object loop over the pyfunc model does)
  batched    `Classifier.predict` on batches, in memory
  catalogue  the whole `predict_catalogue`: read the data set folder in shards, predict, write Parquet, picture
each with views=1 (probabilities only) and views=8 (plus the dihedral-view uncertainty, the command's default).
Goal: catalogue >= 10x naive. Last line: JSON.

    .venv/bin/python bench/predict.py [--size small] [--naive 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _train_and_save(size: str, root: Path, out: Path) -> tuple[Path, Path]:
    import mlflow

    from sweeps.finalists import PYFUNC_CODE
    from uda_core.config import build_config
    from uda_core.inference import export_classifier
    from uda_core.train import load_data, train

    cfg = build_config({"data": {"size": size, "root": str(root)},
                        "model": {"backbone": "cnn", "width": 16, "depth": 4, "feature_dim": 64, "domain_bn": True},
                        "method": {"name": "dance"}, "optim": {"batch_size": 32},
                        "train": {"steps": 4, "eval_every": 4, "progress": False}})
    data = load_data(cfg, progress=True)
    ckpts = []
    train(cfg, lambda ev, ck: ckpts.append(ck), out / "run", data=data)
    export_classifier(ckpts[-1], out / "classifier", data)
    mlflow.pyfunc.save_model(str(out / "model"), python_model=str(PYFUNC_CODE),
                             artifacts={"classifier": str(out / "classifier")}, pip_requirements=["galaxy-uda-sweeps"])
    return out / "model", data.folder


def _rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--root", default="data")
    ap.add_argument("--naive", type=int, default=300, help="galaxies in the naive loop")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from sweeps.catalogue import predict_catalogue
    from uda_core.data.readers import open_cutouts
    from uda_core.inference import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir, folder = _train_and_save(a.size, Path(a.root), tmp)
        clf = Classifier.load(model_dir / "artifacts" / "classifier", precision="auto")
        source = open_cutouts(folder, "target")
        flux = np.concatenate([b.flux for b in source.batches()])
        n = len(flux)
        import contextlib

        precision = "fp32" if clf.autocast is contextlib.nullcontext else "bf16"
        print(f"{n} target galaxies of {source.stamp_shape}, precision 'auto' ({precision}), {a.threads} threads")
        results = {}
        for views in (1, 8):
            m = min(a.naive, n) if views == 1 else min(a.naive // 4, n)
            clf.predict(flux[:8], views=views)  # warm-up
            naive = _rate(m, lambda: [clf.predict(flux[i:i + 1], views=views) for i in range(m)])
            batched = _rate(n, lambda: clf.predict(flux, views=views, batch_size=512))
            catalogue = _rate(n, lambda: predict_catalogue(str(model_dir), folder, tmp / f"cat{views}.parquet", views=views,
                                                           progress=False, top_n=25))
            results[views] = {"naive_per_s": round(naive, 1), "batched_per_s": round(batched, 1),
                              "catalogue_per_s": round(catalogue, 1), "catalogue_vs_naive": round(catalogue / naive, 2),
                              "batched_vs_naive": round(batched / naive, 2)}
            print(f"views={views}: naive {naive:.0f}/s ({m} galaxies), batched {batched:.0f}/s "
                  f"({batched / naive:.1f}x), catalogue {catalogue:.0f}/s ({catalogue / naive:.1f}x; goal >= 10x)")
    print(json.dumps({"bench": "predict", "galaxies": n, "threads": a.threads,
                      "views_1": results[1], "views_8": results[8], "goal_10x_met": results[8]["catalogue_vs_naive"] >= 10
                      and results[1]["catalogue_vs_naive"] >= 10}))


if __name__ == "__main__":
    main()
