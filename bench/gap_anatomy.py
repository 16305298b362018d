"""Gap anatomy: which survey difference makes the domain gap? One factor of the source moved to the target at a time.

For a pair (default decals -> sdss, universal task) the source survey is redefined with ONE group of the target's
numbers at a time, the target staying as it is:
  unchanged   the source survey itself
  noise       the target's depths (m5) and gains: the same galaxies at the target's signal-to-noise
  psf         the target's seeing (FWHM per band, Moffat beta)
  pixel       the target's pixel scale (and native grid, if the target is resampled)
  selection   the target's magnitude limits (r_limit, r_bright): the population the target's sample holds
  all         every number of the target (a renamed copy of it: a source-only run there has no survey gap)
Each source is a derived survey definition (an inline mapping the data layer takes like a preset), so its data
set is generated and cached like any other. Per factor and seed: source-only and AdaBN, scored at their last
evaluation. Figures are ORACLE numbers (target labels score them; nothing is chosen on them): source-only's
source-test and target shared-class accuracy, and AdaBN's target shared-class accuracy, mean +- standard error
over seeds. The gap is source-only's source-test minus target accuracy; a factor matters when moving it alone
closes much of the unchanged source's gap.

Resumable: each run writes <out>/<factor>_<method>_seed<k>.json and is skipped when that file exists (the default
<out> names the pair, task, size and steps, so runs of other settings never mix).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from uda_core.data.store import GENERATOR_VERSION, SIZES
from uda_core.data.surveys import SURVEYS, Survey, get_survey

# The target's numbers each factor copies into the source definition.
FACTORS: dict[str, tuple[str, ...]] = {
    "unchanged": (),
    "noise": ("m5", "gain_e_per_nmgy"),
    "psf": ("fwhm_arcsec", "moffat_beta"),
    "pixel": ("pixel_arcsec", "native_pixel_arcsec"),
    "selection": ("r_limit", "r_bright"),
    "all": ("m5", "gain_e_per_nmgy", "fwhm_arcsec", "moffat_beta", "pixel_arcsec", "native_pixel_arcsec",
            "r_limit", "r_bright"),
}
METHODS = {"source_only": {"model": {"domain_bn": False}}, "adabn": {"model": {"domain_bn": True}}}
KEYS = ("source_test/acc_shared", "oracle/target_test/acc_shared")


def derived_source(source: Survey, target: Survey, factor: str) -> dict | str:
    """The source survey with `factor`'s numbers taken from the target, as a definition the data layer takes.

    Every default-dependent number (r_limit follows the depth by default) is written out from the source, so
    moving one factor moves nothing else."""
    if factor == "unchanged":  # a preset by its name: the same cached data set as every other bench's
        return source.name if SURVEYS.get(source.name) == source else source.to_dict()
    if source.bands != target.bands:
        raise ValueError(f"{source.name} and {target.name} have different bands: no factor-by-factor source")
    definition = source.to_dict()
    for key in FACTORS[factor]:
        definition[key] = target.to_dict()[key]
    definition["name"] = f"{source.name}.{factor}-{target.name}"[:40]  # names the folder and seeds the noise
    return definition


def run_one(out: Path, factor: str, method: str, seed: int, a, source) -> dict:
    record = out / f"{factor}_{method}_seed{seed}.json"
    if record.exists():
        row = json.loads(record.read_text())
        if row.get("generator_version") == GENERATOR_VERSION:  # a record of an older simulator is run again
            return row
    from uda_core.config import build_config
    from uda_core.train import load_data, train

    raw = {
        "data": {"task": a.task, "source": source, "target": a.target, "size": a.size, "root": a.root},
        "method": {"name": method},
        "train": {"steps": a.steps, "eval_every": a.steps, "seed": seed, "progress": False, "threads": 1},
        **METHODS[method],
    }
    cfg = build_config(raw)
    data = load_data(cfg, progress=False)
    t = time.perf_counter()
    last = train(cfg, lambda *x: None, out / "runs" / f"{factor}_{method}_seed{seed}", data=data)
    row = {k: last.metrics.get(k) for k in KEYS}
    row.update(factor=factor, method=method, seed=seed, seconds=round(time.perf_counter() - t, 1),
               generator_version=GENERATOR_VERSION)
    record.write_text(json.dumps(row))
    return row


def mean_se(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="decals")
    ap.add_argument("--target", default="sdss")
    ap.add_argument("--task", default="universal")
    ap.add_argument("--size", default="small")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--factors", default=",".join(FACTORS))
    ap.add_argument("--root", default="data")
    ap.add_argument("--out", help="default: bench/out/gap_anatomy/<source>-<target>-<task>-<size>-<steps>")
    ap.add_argument("--publish", action="store_true")
    a = ap.parse_args()
    import torch

    # Imported now, with the renderer: a simulator file edited while this runs cannot mix two generators.
    from uda_core.data.population import stamp_limit_fraction
    from uda_core.data.render import render  # noqa: F401

    torch.set_num_threads(1)
    out = Path(a.out or f"bench/out/gap_anatomy/{a.source}-{a.target}-{a.task}-{a.size}-{a.steps}")
    out.mkdir(parents=True, exist_ok=True)
    src, tgt = get_survey(a.source), get_survey(a.target)
    factors = a.factors.split(",")
    stamp_px = SIZES[a.size].stamp_px
    rows: dict[str, dict[str, list[dict]]] = {f: {m: [] for m in METHODS} for f in factors}
    too_large = {}
    for f in factors:
        source = derived_source(src, tgt, f)
        too_large[f] = round(stamp_limit_fraction(get_survey(source), stamp_px), 3)
        for seed in range(a.seeds):
            for m in METHODS:
                row = run_one(out, f, m, seed, a, source)
                rows[f][m].append(row)
                print(f"{f:10s} seed {seed} {m:12s} source acc {row[KEYS[0]]:.3f}  target acc {row[KEYS[1]]:.3f}"
                      f"  ({row['seconds']} s)", flush=True)
    summary = {}
    for f in factors:
        so_src = mean_se([r[KEYS[0]] for r in rows[f]["source_only"]])
        so_tgt = mean_se([r[KEYS[1]] for r in rows[f]["source_only"]])
        ab_tgt = mean_se([r[KEYS[1]] for r in rows[f]["adabn"]])
        gaps = [r[KEYS[0]] - r[KEYS[1]] for r in rows[f]["source_only"]]
        summary[f] = {"source_only/source_test_acc": so_src, "source_only/target_acc": so_tgt,
                      "adabn/target_acc": ab_tgt, "source_only/gap": mean_se(gaps),
                      "source_too_large_for_stamp": too_large[f]}
    print(f"\n{a.source} -> {a.target}, {a.size}, {a.seeds} seed(s), {a.steps} steps; shared-class accuracy "
          "(oracle numbers), mean +- se over seeds")
    print("source changed by   source-only src-test   source-only target   gap (src - tgt)   AdaBN target   "
          "too large")
    for f, s in summary.items():
        cells = [s[k] for k in ("source_only/source_test_acc", "source_only/target_acc", "source_only/gap",
                                "adabn/target_acc")]
        print(f"{f:18s}  " + "   ".join(f"{m:.3f} +- {e:.3f}" for m, e in cells) + f"   {too_large[f]:.2f}")
    result = {"bench": "gap_anatomy", "pair": f"{a.source}->{a.target}", "task": a.task, "size": a.size,
              "seeds": a.seeds, "steps": a.steps, "generator_version": GENERATOR_VERSION, "oracle": True,
              "summary": {f: {k: ([round(x, 4) for x in v] if isinstance(v, tuple) else v) for k, v in s.items()}
                          for f, s in summary.items()}}
    line = json.dumps(result)
    if a.publish:
        Path("bench/results").mkdir(parents=True, exist_ok=True)
        Path("bench/results/gap_anatomy.json").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
