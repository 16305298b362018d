"""Simulator speed: stamps/s per core at 64 px, 3 bands, with the universal task's class mix.

Baseline in the same run: the same renderer forced through one galaxy per call (no batching), which is what a
per-galaxy loop (GalSim-style) costs here. Goal: >= 300 stamps/s per core.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from uda_core.data.population import draw_population
from uda_core.data.render import render
from uda_core.data.store import _sample_classes
from uda_core.data.surveys import SURVEYS
from uda_core.data.tasks import get_task


def rate(params, survey, size, batch):
    n = len(params["class_name"])
    t = time.perf_counter()
    for lo in range(0, n, batch):
        render({k: v[lo : lo + batch] for k, v in params.items()}, survey, size)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(1)  # per core
    task = get_task("universal")
    rng = np.random.default_rng(0)
    results = {}
    for name in ("decals", "sdss", "bass_mzls", "lsst_y1"):
        s = SURVEYS[name]
        classes = (_sample_classes(rng, task.target_priors, a.n // 2)
                   + _sample_classes(rng, task.source_priors, a.n // 2))
        p = draw_population(rng, classes, s, a.size * s.pixel_arcsec)
        p["seed"] = rng.integers(0, 2**62, len(classes))
        rate(p, s, a.size, 128)  # warm-up (PSF caches)
        batched = rate(p, s, a.size, 128)
        single = rate({k: v[:64] for k, v in p.items()}, s, a.size, 1)
        results[name] = {"stamps_per_s_per_core": round(batched, 1), "one_by_one": round(single, 1),
                         "speedup": round(batched / single, 2)}
        print(f"{name:10s} batched {batched:7.1f} stamps/s/core   one-by-one {single:6.1f}   x{batched / single:.1f}")
    worst = min(r["stamps_per_s_per_core"] for r in results.values())
    print(json.dumps({"bench": "simulator", "size_px": a.size, "bands": 3, "surveys": results,
                      "min_stamps_per_s_per_core": worst, "goal": 300, "goal_met": worst >= 300}))


if __name__ == "__main__":
    main()
