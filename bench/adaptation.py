"""Adaptation, measured: every method against the better of the two simple baselines, over paired seeds.

Protocol (issue 19, part 5). Universal task on three survey pairs (DECaLS -> SDSS, LSST Y10 -> Y1, DECaLS ->
BASS/MzLS). Seed s fixes both the data set (data.seed) and the training seed of every method, so the runs of one
seed are paired: they share the data set and the initial weights (their batches differ where a method draws more
random numbers, e.g. emulation's noise). Every run is scored at its LAST
evaluation (nothing is selected on target labels) on target/test, which at `--size bench` holds 3,000 stamps with
450 unknowns. All target numbers need target labels: they are oracle reporting, never a choice.

Per run: shared-class accuracy, H-score and known false-rejection rate / unknown recall of the DEPLOYED rule (the
one the exported model flags unknowns with), unknown AUROC of the method's own anomaly score overall and per
unknown class, seconds. Per pair and method: mean and 95% t-interval over seeds, and the mean and 95% t-interval
of the paired difference to the best simple baseline. That baseline is, per metric, whichever of adabn and
emulation (AdaBN + survey emulation) has the better mean on that metric: the conservative reading, since each
method then faces the tougher of the two on every column. Methods that train on target labels (target_oracle,
open_set_oracle) are ceilings, marked "(oracle)".

One JSON record per (pair, method, seed), about 500 bytes, goes to `--records` (bench/records/adaptation, kept in
git: a working session's ignored files do not reach the next one), written whole when the run ends; a run whose
record exists is skipped, so a killed benchmark continues where it stopped (and two processes on disjoint
`--pairs` may share `--records` to use both cores). Records carry the setup (size, steps, model) and
a record from another setup is an error, never silently mixed in. `--analyse-only` redraws tables and picture.

Cost on this 2-core CPU, one thread, width 16, batch 64 per domain, 1,000 steps, 48 px (`small`, whose training
splits `bench` shares), measured while other workers held the machine at a load of 8-10 (wall / CPU seconds per
run): adabn 337 / 98, emulation 302 / 93, dance 579 / 177, ovanet 591 / 168. On a quiet core a run costs about
its CPU time, 1.5-3 minutes; the full protocol (3 pairs x 9 methods x 5 seeds = 135 runs) is about 5-6 hours of
one quiet core, 15-20 hours on this shared machine: more than one working session, so start it, let it be
killed, start it again.

    OMP_NUM_THREADS=1 .venv/bin/python bench/adaptation.py [--pairs decals:sdss ...] [--methods adabn,dance]
        [--seeds 5] [--size bench] [--steps 1000] [--records bench/records/adaptation] [--publish]
On a GPU: --size large --width 32 (5,000 target/test stamps at 96 px).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.publish import publish  # noqa: E402

from uda_core.methods.params import PARAMS, TRAINS_ON_TARGET_LABELS  # noqa: E402 (light: no torch)

PAIRS = ("decals:sdss", "lsst_y10:lsst_y1", "decals:bass_mzls")
METHODS = ("source_only", "adabn", "emulation", "dance", "ovanet", "contrastive", "sphkmeans", "target_oracle",
           "open_set_oracle")
BASELINES = ("adabn", "emulation")  # the best simple baselines: every adaptation claim is made against them
ORACLES = TRAINS_ON_TARGET_LABELS  # target_oracle, open_set_oracle: ceilings, never candidates
# Per-domain batch-norm statistics for every method but source_only (which is the plain network). With shared
# statistics the eval-time running mean mixes two surveys whose noise differs several-fold (DANCE lost its source
# accuracy that way in a run measured on main).
CONFIG_OVERRIDES = {"source_only": {"model": {"domain_bn": False}}}
DEFAULT_OVERRIDES = {"model": {"domain_bn": True}}

TT = "oracle/target_test"
# Short name -> where it is read in an evaluation's metrics; "auroc" falls back to the rule's score (own_auroc_key).
METRICS = {"acc": f"{TT}/acc_shared", "h": f"{TT}/h_score", "auroc": f"{TT}/auroc",
           "known_rejected": f"{TT}/known_rejected", "unknown_recall": f"{TT}/unknown_recall"}
LOWER_IS_BETTER = frozenset({"known_rejected"})
LABELS = {"acc": "accuracy (shared)", "h": "H-score", "auroc": "AUROC",
          "known_rejected": "known rejected (lower is better)", "unknown_recall": "unknown recall"}


# ---- records -------------------------------------------------------------------------------------------------

def record_path(records: Path, pair: str, method: str, seed: int) -> Path:
    return records / f"{pair.replace(':', '-')}_{method}_seed{seed}.json"


def load_record(path: Path, setup: dict) -> dict | None:
    """The finished run's record, or None when it has not run; a record of another setup is an error."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record["setup"] != setup:
        raise SystemExit(f"{path} was measured with {record['setup']}, not {setup}: use another --records, or the "
                         "same settings, so that runs of two setups are never averaged together")
    return record


def write_record(path: Path, record: dict) -> None:
    """Write-then-rename: a killed run leaves no record, so it runs again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def pending_runs(records: Path, setup: dict, pairs, methods, seeds) -> list[tuple[str, str, int]]:
    """(pair, method, seed) without a record, seed by seed, so a partial benchmark holds complete paired seeds."""
    return [(p, m, s) for s in seeds for p in pairs for m in methods
            if load_record(record_path(records, p, m, s), setup) is None]


# ---- statistics ----------------------------------------------------------------------------------------------

def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and `confidence` t-interval of the finite values; the interval is nan with fewer than two."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan, math.nan
    lo, hi = stats.ttest_1samp(v, 0.0).confidence_interval(confidence)
    return float(v.mean()), float(lo), float(hi)


def paired_difference(method: dict[int, float], baseline: dict[int, float]) -> tuple[float, float, float, int]:
    """Mean and 95% t-interval of method - baseline over the seeds both have a finite value for, and their count."""
    seeds = [s for s in method if s in baseline and _finite(method[s]) and _finite(baseline[s])]
    mean, lo, hi = t_interval([method[s] - baseline[s] for s in seeds])
    return mean, lo, hi, len(seeds)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def best_baseline(by_method: dict[str, dict[int, float]], metric: str) -> str | None:
    """The simple baseline with the better mean on `metric` (direction-aware), among those measured."""
    means = {b: t_interval(by_method[b].values())[0] for b in BASELINES if b in by_method}
    means = {b: m for b, m in means.items() if math.isfinite(m)}
    if not means:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(means, key=means.get)


def summarise(records: list[dict]) -> dict:
    """{pair: {method: {metric: {"mean", "lo", "hi", "n", "diff", "diff_lo", "diff_hi", "n_paired",
    "baseline"}}}} over the records' seeds; metrics are the records' metric names plus seconds."""
    table: dict = {}
    for r in records:
        values = {**r["metrics"], "seconds": r["seconds"], "cpu_seconds": r.get("cpu_seconds")}
        for k, v in values.items():
            table.setdefault(r["pair"], {}).setdefault(k, {}).setdefault(r["method"], {})[r["seed"]] = v
    out: dict = {}
    for pair, metrics in table.items():
        for metric, by_method in metrics.items():
            base = None if metric in ("seconds", "cpu_seconds") else best_baseline(by_method, metric)
            for method, by_seed in by_method.items():
                mean, lo, hi = t_interval(by_seed.values())
                cell = {"mean": mean, "lo": lo, "hi": hi, "n": sum(_finite(v) for v in by_seed.values())}
                if base is not None:
                    d, dlo, dhi, n = paired_difference(by_seed, by_method[base])
                    cell.update(diff=d, diff_lo=dlo, diff_hi=dhi, n_paired=n, baseline=base)
                out.setdefault(pair, {}).setdefault(method, {})[metric] = cell
    return out


# ---- tables and picture --------------------------------------------------------------------------------------

def _fmt(mean, lo, hi, scale=1.0, digits=3, sign=""):
    if not math.isfinite(mean):
        return "-"
    f = f"{{:{sign}.{digits}f}}"
    body = f.format(mean * scale)
    return body if not math.isfinite(lo) else f"{body} [{f.format(lo * scale)}, {f.format(hi * scale)}]"


def _label(method: str) -> str:
    return f"{method} (oracle)" if method in ORACLES else method


def metric_order(summary: dict) -> list[str]:
    """The report's columns: the fixed metrics, then AUROC per unknown class, as present in the records."""
    present = {k for methods in summary.values() for cells in methods.values() for k in cells}
    by_class = sorted(k for k in present if k.startswith("auroc/"))
    return [k for k in METRICS if k in present] + by_class


def markdown_tables(summary: dict, methods: list[str]) -> str:
    parts = []
    for pair, by_method in summary.items():
        rows = [m for m in methods if m in by_method]
        cols = metric_order({pair: by_method})
        head = [LABELS.get(c, c.replace("auroc/", "AUROC ")) for c in cols]
        n_seeds = max(c["n"] for m in rows for c in by_method[m].values())
        parts.append(f"\n### {pair.replace(':', ' -> ')}: mean [95% interval], seeds: {n_seeds}\n")
        parts.append("| method | " + " | ".join(head) + " | seeds | s per run (CPU s) |")
        parts.append("|---" * (len(cols) + 3) + "|")
        for m in rows:
            cells = [_fmt(**_pick(by_method[m].get(c))) for c in cols]
            seeds = by_method[m].get("acc", {}).get("n", 0)  # runs that finished (a diverged one has no numbers)
            secs, cpu = (by_method[m][k]["mean"] for k in ("seconds", "cpu_seconds"))
            parts.append(f"| {_label(m)} | " + " | ".join(cells) + f" | {seeds} | {secs:.0f} ({cpu:.0f}) |")
        bases = [by_method[rows[0]].get(c, {}).get("baseline", "-") for c in cols] if rows else []
        parts.append("\nPaired difference to the better simple baseline, points (baseline per column: "
                     + ", ".join(f"{h}: {b}" for h, b in zip(head, bases)) + ")\n")
        parts.append("| method | " + " | ".join(head) + " |")
        parts.append("|---" * (len(cols) + 1) + "|")
        for m in rows:
            cells = [_fmt(**_pick(by_method[m].get(c), diff=True), scale=100, digits=1, sign="+") for c in cols]
            parts.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(parts)


def _pick(cell: dict | None, diff: bool = False) -> dict:
    if not cell or (diff and "diff" not in cell):
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan}
    if diff:
        return {"mean": cell["diff"], "lo": cell["diff_lo"], "hi": cell["diff_hi"]}
    return {"mean": cell["mean"], "lo": cell["lo"], "hi": cell["hi"]}


def plot_differences(summary: dict, methods: list[str], path: Path) -> Path:
    """Per pair (rows) and for accuracy and H-score (columns): each method's paired difference to the better
    baseline, with its 95% interval; the issue's +5 and +10 point goals dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(summary)
    fig, axes = plt.subplots(len(pairs), 2, figsize=(10, 0.45 * len(methods) * len(pairs) + 1.2), squeeze=False,
                             sharey="row")
    for i, pair in enumerate(pairs):
        rows = [m for m in methods if m in summary[pair]]
        for j, metric in enumerate(("acc", "h")):
            ax = axes[i][j]
            cells = [summary[pair][m].get(metric, {}) for m in rows]
            d = np.array([100 * c.get("diff", math.nan) for c in cells])
            lo = np.array([100 * c.get("diff_lo", math.nan) for c in cells])
            hi = np.array([100 * c.get("diff_hi", math.nan) for c in cells])
            for y, m in enumerate(rows):  # oracles in grey: ceilings, not candidates
                err = np.nan_to_num([[d[y] - lo[y]], [hi[y] - d[y]]])
                ax.errorbar(d[y], y, xerr=err, fmt="o", color="tab:grey" if m in ORACLES else "tab:blue", capsize=3)
            ax.axvline(0, color="black", lw=0.8)
            for goal in (5, 10):
                ax.axvline(goal, color="tab:green", lw=0.6, ls="--")
            ax.set_yticks(range(len(rows)), [_label(m) for m in rows])
            ax.set_ylim(len(rows) - 0.5, -0.5)  # first method on top, no marker on the frame
            base = cells[0].get("baseline", "?") if cells else "?"
            ax.set_title(f"{pair.replace(':', ' -> ')}: {LABELS[metric]}, method - {base}", fontsize=9)
            ax.set_xlabel("paired difference, points (95% t-interval)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- running -------------------------------------------------------------------------------------------------

def run_config(pair: str, method: str, seed: int, args) -> dict:
    source, target = pair.split(":")
    overrides = CONFIG_OVERRIDES.get(method, DEFAULT_OVERRIDES)
    return {
        "data": {"source": source, "target": target, "size": args.size, "seed": seed, "root": str(args.root)},
        "model": {"width": args.width, "depth": 4, "feature_dim": 4 * args.width, **overrides.get("model", {})},
        "method": {"name": method},
        "optim": {"batch_size": args.batch_size},
        "train": {"steps": args.steps, "eval_every": args.eval_every or args.steps, "seed": seed,
                  "threads": args.threads, "progress": False, "keep_checkpoints": 1},
    }


def setup_of(args) -> dict:
    """What makes two runs comparable; a record of another setup is refused."""
    return {"size": args.size, "steps": args.steps, "eval_every": args.eval_every or args.steps,
            "width": args.width, "batch_size": args.batch_size}


def run_metrics(metrics: dict, reject_score: str, unknown_classes) -> dict:
    """The record's numbers from the last evaluation's metrics (None where absent or not finite)."""
    def get(key):
        v = metrics.get(key)
        return v if _finite(v) else None

    out = {k: get(v) for k, v in METRICS.items()}
    if out["auroc"] is None:  # the method's own score where it reports one, else the rule's score
        out["auroc"] = get(f"{TT}/auroc/{reject_score}")
    for u in unknown_classes:
        out[f"auroc/{u}"] = get(f"{TT}/auroc_by_class/{u}")
    return out


def run_one(pair: str, method: str, seed: int, args) -> dict:
    from uda_core.config import build_config
    from uda_core.data.tasks import get_task
    from uda_core.train import TrainingDiverged, load_data, train

    cfg = build_config(run_config(pair, method, seed, args))
    data = load_data(cfg, progress=False)
    task = get_task(cfg.data.task)
    t0, cpu0 = time.perf_counter(), time.process_time()
    diverged = False
    with tempfile.TemporaryDirectory() as tmp:
        try:
            last = train(cfg, lambda *_: None, Path(tmp), data=data).metrics
        except TrainingDiverged:
            last, diverged = {}, True  # a failed method: no number, and the table counts it out
    return {"pair": pair, "method": method, "seed": seed, "setup": setup_of(args),
            "metrics": run_metrics(last, cfg.eval.reject_score, task.class_names[task.num_known:]),
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0, "diverged": diverged}


def _best(by_method: dict, metric: str, key: str = "mean") -> float:
    values = [c[metric].get(key, math.nan) for c in by_method.values() if metric in c]
    return max((v for v in values if math.isfinite(v)), default=math.nan)


def _mean(cells: dict, metric: str) -> float:
    return cells.get(metric, {}).get("mean", math.nan)


def goals(summary: dict) -> dict:
    """The issue's goals per pair, read from the label-free methods' means (oracle reporting: nothing is chosen)."""
    out = {}
    for pair, by_method in summary.items():
        label_free = {m: c for m, c in by_method.items() if m not in ORACLES}
        adapters = {m: c for m, c in label_free.items() if m not in BASELINES and m != "source_only"}
        gain = _best(adapters, "h", "diff")
        out[pair] = {"best_h_gain_points": round(100 * gain, 1) if math.isfinite(gain) else None,
                     "h_gain>=5": gain >= 0.05,
                     "auroc>=0.90": _best(label_free, "auroc") >= 0.90,
                     "auroc_lens>=0.85": _best(label_free, "auroc/lens") >= 0.85,
                     "auroc_artifact>=0.95": _best(label_free, "auroc/artifact") >= 0.95,
                     "flag_known<=0.10_recall>=0.70": [m for m, c in label_free.items()
                                                       if _mean(c, "known_rejected") <= 0.10
                                                       and _mean(c, "unknown_recall") >= 0.70]}
    return out


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), help="source:target survey pairs")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated; those not in the method registry are skipped, with a note")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (data and training, paired)")
    ap.add_argument("--size", default="bench", help="data.size preset (bench: 3,000 target/test stamps)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=0, help="0: one evaluation, at the end (the one scored)")
    ap.add_argument("--width", type=int, default=16, help="CNN width (feature_dim is 4x)")
    ap.add_argument("--batch-size", type=int, default=64, help="per domain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", type=Path, default=ROOT / "data", help="data set cache")
    ap.add_argument("--records", type=Path, default=ROOT / "bench" / "records" / "adaptation",
                    help="one JSON file per run, kept in git so later sessions extend them")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "adaptation", help="the picture")
    ap.add_argument("--analyse-only", action="store_true", help="tables and picture from the records only")
    ap.add_argument("--publish", action="store_true", help="write bench/results/adaptation.json")
    args = ap.parse_args()

    wanted = args.methods.split(",")
    methods = [m for m in wanted if m in PARAMS]
    if skipped := [m for m in wanted if m not in PARAMS]:
        print(f"not in the method registry, skipped: {', '.join(skipped)}", flush=True)
    setup, seeds = setup_of(args), list(range(args.seeds))
    t0 = time.time()
    if not args.analyse_only:
        import torch

        torch.set_num_threads(args.threads)
        todo = pending_runs(args.records, setup, args.pairs, methods, seeds)
        print(f"{len(todo)} runs to do ({len(args.pairs) * len(methods) * len(seeds) - len(todo)} recorded)",
              flush=True)
        for i, (pair, method, seed) in enumerate(todo):
            record = run_one(pair, method, seed, args)
            write_record(record_path(args.records, pair, method, seed), record)
            shown = " ".join(f"{k}={v:.3f}" for k, v in record["metrics"].items() if v is not None)
            print(f"[{i + 1}/{len(todo)}] {pair} {method} seed {seed}: {shown} ({record['seconds']:.0f} s)",
                  flush=True)

    records = [r for p in args.pairs for m in methods for s in seeds
               if (r := load_record(record_path(args.records, p, m, s), setup)) is not None]
    summary = summarise(records)
    print(markdown_tables(summary, methods))
    picture = plot_differences(summary, methods, args.out / "adaptation.png") if summary else None
    result = {"bench": "adaptation", "setup": {**setup, "pairs": args.pairs, "seeds": args.seeds},
              "records": len(records), "diverged": sum(r["diverged"] for r in records),
              "wall_s": round(time.time() - t0, 1), "baselines": list(BASELINES), "oracles": sorted(ORACLES),
              "goals": goals(summary), "summary": _rounded(summary), "picture": picture and str(picture)}
    if args.publish:
        publish("adaptation", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
