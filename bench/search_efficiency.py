"""Search efficiency: TPE + ASHA against random search without early stopping, same number of trials, 3 seeds.

For each seed both sweeps run on the same data with the same trial budget. Progress is measured in trial-steps
(training steps summed over trials, in order of wall time): how many trial-steps TPE + ASHA needs to reach the
best objective random search reached at the end. Goal: at most 40% of random search's trial-steps.

The objective is the ORACLE target accuracy on the simulated pair (target labels exist here): this benchmark
measures the search, not label-free selection (issue 4 measures that). Also reported: the sweep's overhead, wall
time divided by the summed trial times per concurrent slot, and, from the random-search checkpoints, how well
each label-free criterion ranks checkpoints by oracle target accuracy (Spearman) and its regret when used to
pick the model.

    .venv/bin/python bench/search_efficiency.py [--trials 12] [--seeds 0 1 2] [--size tiny] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORACLE = "oracle/target_test/acc_shared"
CRITERIA = {"source_val/acc": 1, "label_free/snd": 1, "label_free/entropy": -1, "label_free/im": 1}


def sweep_file(folder: Path, name: str, args, algorithm: str, seed: int) -> Path:
    raw = {
        "name": name,
        "run": {"data": {"size": args.size, "root": str(args.data_root)},
                "model": {"width": 16, "depth": 4, "feature_dim": 64, "domain_bn": True},
                "method": {"name": "dance"}, "optim": {"batch_size": 32},
                "train": {"steps": args.steps, "eval_every": args.steps // 6, "seed": 0, "precision": "fp32"},
                "eval": {"snd_max_samples": 500, "max_source_features": 500}},
        "search": {"num_trials": args.trials, "seed": seed, "algorithm": algorithm, "seed_with_defaults": False,
                   "overrides": {"model.width": 16, "optim.batch_size": 32, "optim.optimizer": "adamw"}},
        "objective": {"metric": ORACLE, "min_source_val_acc": 0.0},
        "scheduler": {"type": "asha" if algorithm == "tpe" else "none", "grace_period": 2 * (args.steps // 6),
                      "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "tracking": {"embedding": "none", "finalists": 0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def evaluations(summary) -> pd.DataFrame:
    """Every evaluation of every trial, with its wall-clock time."""
    from ray.tune import ExperimentAnalysis

    frames = []
    for tid, df in ExperimentAnalysis(str(summary.path)).trial_dataframes.items():
        if "step" in df:
            frames.append(df.assign(trial=tid))
    return pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable")


def progress(ev: pd.DataFrame, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative trial-steps and best objective so far, evaluation by evaluation in time order."""
    steps = np.cumsum(np.full(len(ev), every))
    best = np.maximum.accumulate(ev[ORACLE].fillna(-np.inf).to_numpy())
    return steps, best


def criteria(ev: pd.DataFrame) -> dict:
    out = {}
    oracle = ev[ORACLE].to_numpy()
    for name, sign in CRITERIA.items():
        score = sign * ev[name].to_numpy()
        ok = np.isfinite(score) & np.isfinite(oracle)
        rho = spearmanr(score[ok], oracle[ok]).statistic if ok.sum() > 2 else math.nan
        picked = oracle[ok][np.argmax(score[ok])] if ok.any() else math.nan
        out[name] = {"spearman": float(rho), "regret": float(np.nanmax(oracle) - picked)}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "search_efficiency")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_root = args.out / "data"

    import ray

    from sweeps.run import run_sweep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    every = args.steps // 6
    rows, crit = [], []
    for seed in args.seeds:
        per = {}
        for algorithm in ("random", "tpe"):
            name = f"eff-{algorithm}-s{seed}-{int(time.time())}"
            path = sweep_file(args.out, name, args, algorithm, seed)
            t0 = time.perf_counter()
            summary = run_sweep(path, workdir=args.out, progress=False)
            wall = time.perf_counter() - t0
            ev = evaluations(summary)
            trial_time = ev.groupby("trial")["time_total_s"].max().sum()
            steps, best = progress(ev, every)
            per[algorithm] = {"steps": steps, "best": best, "wall": wall, "trial_time": trial_time}
            print(f"seed {seed} {algorithm}: best {ORACLE} {best[-1]:.4f} after {steps[-1]} trial-steps, "
                  f"wall {wall:.0f}s, trial time {trial_time:.0f}s", flush=True)
            if algorithm == "random":
                crit.append(criteria(ev))
        target = per["random"]["best"][-1]
        reached = np.nonzero(per["tpe"]["best"] >= target)[0]
        needed = per["tpe"]["steps"][reached[0]] if len(reached) else math.inf
        rows.append({
            "seed": seed, "random_best": target, "random_steps": int(per["random"]["steps"][-1]),
            "tpe_asha_best": per["tpe"]["best"][-1], "tpe_asha_steps": int(per["tpe"]["steps"][-1]),
            "tpe_asha_steps_to_random_best": needed,
            "fraction_of_random_steps": needed / per["random"]["steps"][-1],
            # Overhead: the sweep's wall time against the ideal of its trial times spread over 2 slots.
            "overhead_random": per["random"]["wall"] / (per["random"]["trial_time"] / 2),
            "overhead_tpe_asha": per["tpe"]["wall"] / (per["tpe"]["trial_time"] / 2),
            "mean_trial_s_random": per["random"]["trial_time"] / args.trials,
        })
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    frac = df["fraction_of_random_steps"].replace(math.inf, np.nan)
    crit_mean = {k: {m: float(np.nanmean([c[k][m] for c in crit])) for m in ("spearman", "regret")} for k in CRITERIA}
    crit_se = {k: {m: float(np.nanstd([c[k][m] for c in crit], ddof=1) / math.sqrt(len(crit)))
                      if len(crit) > 1 else math.nan
                   for m in ("spearman", "regret")} for k in CRITERIA}
    for k in CRITERIA:
        print(f"criterion {k}: spearman with {ORACLE} across random-search checkpoints "
              f"{crit_mean[k]['spearman']:+.2f} +- {crit_se[k]['spearman']:.2f}, "
              f"regret {crit_mean[k]['regret']:.3f} +- {crit_se[k]['regret']:.3f}")
    result = {
        "trials": args.trials, "seeds": args.seeds, "size": args.size, "steps": args.steps,
        "fraction_of_random_steps_mean": float(frac.mean()),
        "fraction_of_random_steps_max": float(df["fraction_of_random_steps"].max()),
        "seeds_reaching_random_best": int(np.isfinite(df["fraction_of_random_steps"]).sum()),
        "goal_fraction": 0.4, "goal_met": bool((df["fraction_of_random_steps"] <= 0.4).all()),
        "random_best_mean": float(df["random_best"].mean()), "tpe_asha_best_mean": float(df["tpe_asha_best"].mean()),
        "overhead_random_mean": float(df["overhead_random"].mean()),
        "overhead_tpe_asha_mean": float(df["overhead_tpe_asha"].mean()),
        "mean_trial_s": float(df["mean_trial_s_random"].mean()),
        "criteria": {k: {**crit_mean[k], **{f"{m}_se": crit_se[k][m] for m in crit_se[k]}} for k in CRITERIA},
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
