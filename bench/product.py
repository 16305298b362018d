"""The product, measured: one sweep over the method registry chooses the method and its settings without target
labels; how far is its choice above AdaBN, per survey pair?

Per pair, one real sweep (Ray Tune, OptunaSearch TPE over `space: all`, ASHA, MLflow), on bench/adaptation's data set
and setup (`bench` size, width 16, batch 64 per domain, 1,000 steps, seed 0), with the baselines source-only, AdaBN
and AdaBN + survey emulation trained in the same sweep. The sweep's default label-free objective picks its best
trial; that pick is what `uda-sweep promote` would register. Its target/test shared-class accuracy and H-score (at
the checkpoint the objective chose) are then compared with AdaBN's and emulation's, and with the target oracle's
bench/adaptation record of the same seed (the gap to close). Every target number needs target labels: oracle
reporting, never a choice.

Goal (issue 19): at least +10 points over AdaBN in accuracy and in H-score, closing at least half of the gap between
AdaBN and the target oracle.

A sweep whose state exists is read, not re-run (`uda-sweep resume <name> --storage <out>/runs` finishes a killed
one). Cost on this 2-core CPU: 8 trials + 3 baselines, about 20-30 minutes of both cores per pair.

    OMP_NUM_THREADS=1 .venv/bin/python bench/product.py [--pairs decals:sdss ...] [--trials 8] [--publish]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.adaptation import PAIRS, load_record, record_path  # noqa: E402
from bench.publish import RESULTS, publish  # noqa: E402

ACC, H = "oracle/target_test/acc_shared", "oracle/target_test/h_score"


def sweep_name(pair: str, seed: int) -> str:
    source, target = pair.split(":")
    return f"product-{source}-{target}-seed{seed}"


def sweep_file(pair: str, args) -> Path:
    """Write the pair's sweep (bench/adaptation's setup, `space: all`) under --out."""
    source, target = pair.split(":")
    name = sweep_name(pair, args.seed)
    raw = {
        "name": name,
        "description": "issue 19's product measurement: method and settings chosen by the default label-free objective",
        "run": {"data": {"task": "universal", "source": source, "target": target, "size": "bench", "seed": args.seed,
                         "root": str(args.root.resolve())},
                "model": {"backbone": "cnn", "width": 16, "depth": 4, "feature_dim": 64, "domain_bn": True},
                "method": {"name": "emulation"},  # the first trial: emulation with its defaults
                "optim": {"batch_size": 64},
                "train": {"steps": args.steps, "eval_every": args.steps // 4, "seed": args.seed, "threads": 1}},
        "search": {"num_trials": args.trials, "seed": args.seed, "space": "all",
                   "overrides": {"model.width": 16, "optim.batch_size": 64}},
        "baselines": ["source_only", "adabn", "emulation"],
        "scheduler": {"type": "asha", "grace_period": 3 * args.steps // 4, "reduction_factor": 3},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "concurrency": 2},
        "failure": {"max_retries": 1},
        "storage": {"path": str((args.out / "runs").resolve())},
        "tracking": {"uri": f"sqlite:///{(args.out / 'mlflow.db').resolve()}", "embedding": "none", "finalists": 0},
    }
    path = args.out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def oracle_metrics(pair: str, args) -> dict | None:
    """bench/adaptation's target-oracle record of this pair and seed, in its default setup at --steps (a record of
    another setup is refused there), or None when it has not run."""
    setup = {"size": "bench", "steps": args.steps, "eval_every": args.steps, "width": 16, "batch_size": 64}
    record = load_record(record_path(args.adaptation, pair, "target_oracle", args.seed), setup)
    return record and record["metrics"]


def measure(pair: str, args) -> dict:
    from sweeps.run import STATE_FILE, open_sweep, run_sweep
    from sweeps.summary import best_row, trial_rows

    oracle = oracle_metrics(pair, args)  # first: a record of another setup stops this before a sweep runs
    name = sweep_name(pair, args.seed)
    storage = (args.out / "runs").resolve()
    if not (storage / name / STATE_FILE).exists():  # an existing sweep is read as it was run
        print(f"{pair}: running sweep {name} ({args.trials} trials + 3 baselines)", flush=True)
        run_sweep(sweep_file(pair, args), workdir=args.out, progress=True)
    exp_dir, sweep, _ = open_sweep(name, storage)
    rows = trial_rows(exp_dir, sweep)
    best = best_row(rows, sweep)
    baseline = {r["method"]: r for r in rows if r["kind"] == "baseline"}
    at = lambda row, m: row and row.get(f"at_best/{m}")  # noqa: E731
    out = {"pair": pair, "sweep": name, "trials": len(rows),
           "finished": sum(r["status"] == "TERMINATED" for r in rows),
           "chosen": best and {"trial_id": best["trial_id"], "method": best["method"], "step": best["best_step"],
                               "acc": at(best, ACC), "h": at(best, H)},
           "baselines": {m: {"acc": at(r, ACC), "h": at(r, H)} for m, r in baseline.items()},
           "target_oracle": oracle and {"acc": oracle["acc"], "h": oracle["h"]}}
    adabn = out["baselines"].get("adabn")
    if best and adabn and None not in (at(best, ACC), adabn["acc"]):
        out["over_adabn"] = {"acc": at(best, ACC) - adabn["acc"], "h": at(best, H) - adabn["h"]}
        if oracle and oracle["acc"] > adabn["acc"]:
            out["gap_closed_acc"] = (at(best, ACC) - adabn["acc"]) / (oracle["acc"] - adabn["acc"])
        out["goal_met"] = (out["over_adabn"]["acc"] >= 0.10 and out["over_adabn"]["h"] >= 0.10
                           and out.get("gap_closed_acc", 0) >= 0.5)
    return out


def table(results: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| pair | chosen | acc | H | AdaBN acc / H | emulation acc / H | target oracle acc | +acc | +H | "
             "gap closed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, b, o = r["chosen"] or {}, r["baselines"], r["target_oracle"] or {}
        d = r.get("over_adabn", {})
        lines.append(f"| {r['pair']} | {c.get('method', '-')} | {f(c.get('acc'))} | {f(c.get('h'))} | "
                     f"{f(b.get('adabn', {}).get('acc'))} / {f(b.get('adabn', {}).get('h'))} | "
                     f"{f(b.get('emulation', {}).get('acc'))} / {f(b.get('emulation', {}).get('h'))} | "
                     f"{f(o.get('acc'))} | {f(d.get('acc'))} | {f(d.get('h'))} | {f(r.get('gap_closed_acc'))} |")
    return "\n".join(lines)


def merged(result: dict, published: Path) -> dict:
    """`result`, plus the pairs of the published figures that this run did not measure, when those were measured in
    the same setup: one pair can be re-measured (or added) without re-running the others."""
    if not published.exists():
        return result
    before = json.loads(published.read_text())
    if before.get("setup") != result["setup"]:
        return result
    measured = {r["pair"] for r in result["pairs"]}
    kept = [r for r in before["pairs"] if r["pair"] not in measured]
    return {**result, "pairs": kept + result["pairs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), help="source:target survey pairs")
    ap.add_argument("--trials", type=int, default=8, help="TPE trials per sweep (plus 3 baselines)")
    ap.add_argument("--seed", type=int, default=0, help="data and training seed (bench/adaptation's)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--root", type=Path, default=ROOT / "bench" / "out" / "adaptation_data", help="data set cache")
    ap.add_argument("--adaptation", type=Path, default=ROOT / "bench" / "records" / "adaptation",
                    help="bench/adaptation's --records: the target oracle's records")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "product")
    ap.add_argument("--publish", action="store_true", help="write bench/results/product.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = [measure(p, args) for p in args.pairs]
    print(table(results))
    result = {"bench": "product", "setup": {"trials": args.trials, "seed": args.seed, "steps": args.steps,
                                            "size": "bench", "width": 16}, "wall_s": round(time.time() - t0, 1),
              "pairs": results}
    if args.publish:
        publish("product", merged(result, RESULTS / "product.json"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
