"""Catalogue throughput: `uda-sweep predict` (batched, streamed, bf16 where the CPU has fast bf16) against a naive
one-galaxy-at-a-time loop of the same model, in the same process.

A quickstart-sized model (CNN width 16, depth 4, 48 px, 3 bands) is trained for a few steps and saved as the same
MLflow pyfunc model a sweep registers. Throughput does not depend on the weights. Figures:
  naive        the loaded MLflow model's `predict` called once per galaxy (the loop a user writes by hand)
  naive_core   one `Classifier.predict` call per galaxy: the same loop without MLflow's per-call input checks
               and DataFrame, a stricter baseline that isolates what batching alone buys
  batched      `Classifier.predict` on batches, in memory
  catalogue    the whole `predict_catalogue`: load the model, read the data set folder in shards, predict,
               write Parquet, draw the anomaly picture
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

    from sweeps.finalists import PYFUNC_CODE, REQUIREMENTS, model_signature
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
    signature, example = model_signature(out / "classifier")
    mlflow.pyfunc.save_model(str(out / "model"), python_model=str(PYFUNC_CODE),
                             artifacts={"classifier": str(out / "classifier")},
                             signature=signature, input_example=example, pip_requirements=REQUIREMENTS)
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
        source = open_cutouts(folder, "all")
        flux = np.concatenate([b.flux for b in source.batches()])
        n = len(flux)
        import contextlib

        precision = "fp32" if clf.autocast is contextlib.nullcontext else "bf16"
        print(f"{n} galaxies (both domains) of {source.stamp_shape}, "
              f"precision 'auto' ({precision}), {a.threads} threads")
        import mlflow

        pyfunc = mlflow.pyfunc.load_model(str(model_dir))
        results = {}
        for views in (1, 8):
            m = min(a.naive, n) if views == 1 else min(a.naive // 4, n)
            clf.predict(flux[:8], views=views)  # warm-up
            naive = _rate(m, lambda: [pyfunc.predict(flux[i:i + 1], params={"views": views}) for i in range(m)])
            naive_core = _rate(m, lambda: [clf.predict(flux[i:i + 1], views=views) for i in range(m)])
            batched = _rate(n, lambda: clf.predict(flux, views=views))
            catalogue = _rate(n, lambda: predict_catalogue(str(model_dir), folder, tmp / f"cat{views}.parquet",
                                                           views=views,
                                                           domain="all", progress=False, top_n=25))
            results[views] = {"naive_per_s": round(naive, 1), "naive_core_per_s": round(naive_core, 1),
                              "batched_per_s": round(batched, 1), "catalogue_per_s": round(catalogue, 1),
                              "catalogue_vs_naive": round(catalogue / naive, 2),
                              "catalogue_vs_naive_core": round(catalogue / naive_core, 2)}
            print(f"views={views}: naive {naive:.0f}/s, naive_core {naive_core:.0f}/s ({m} galaxies each), "
                  f"batched {batched:.0f}/s, catalogue {catalogue:.0f}/s = {catalogue / naive:.1f}x naive "
                  f"(goal >= 10x), {catalogue / naive_core:.1f}x naive_core")
    print(json.dumps({"bench": "predict", "galaxies": n, "threads": a.threads, "precision": precision,
                      "views_1": results[1], "views_8": results[8],
                      "goal_10x_met": results[8]["catalogue_vs_naive"] >= 10
                      and results[1]["catalogue_vs_naive"] >= 10}))


if __name__ == "__main__":
    main()
