"""Search efficiency: TPE + ASHA against random search without early stopping; and the sweep's per-trial overhead.

Default mode, per seed and with the same number of trials: first random search for every seed, then TPE + ASHA.
Progress is measured in trial-steps (training steps summed over trials, in order of wall time): how many trial-steps
TPE + ASHA needs to reach the best objective random search reached at the end. Goal: at most 40% of random
search's trial-steps. ASHA's first rung (grace period) is chosen from the random-search runs themselves: the first
evaluation step at which a trial's objective so far ranks trials as its final objective does (Spearman, mean over
seeds, at least --min-rank-corr), so ASHA does not stop trials on noise. `--grace-period` fixes it instead.

The objective is the ORACLE target accuracy on the simulated pair (target labels exist here): this benchmark
measures the search, not label-free selection (issue 4 measures that). Also reported, from the random-search
evaluations: how well each label-free criterion ranks checkpoints by oracle target accuracy (Spearman) and its
regret when used to pick the model.

`--overhead`: the same TPE + ASHA sweep twice, side by side, with a fresh worker process per trial
(`resources.reuse_workers: false`, the old path) and with reused workers (the default). Overhead: sweep wall time
over the summed trial times per concurrent slot, with trial time both as Tune counts it and without the trial's
own start-up inside the trainable (data, MLflow run, model: its first evaluation interval less a later one).

Each finished sweep's evaluations are kept under --out/records/ and reused when the command is run again, so an
interrupted run continues where it stopped. Last line: JSON; --publish merges it into
bench/results/search_efficiency.json (key "search" or "overhead").

    .venv/bin/python bench/search_efficiency.py [--trials 48] [--seeds 0 1 2] [--steps 120] [--publish]
    .venv/bin/python bench/search_efficiency.py --overhead --width 16 --steps 180 --evals 6 [--trials 16] [--publish]
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
BEST = f"best/{ORACLE}"  # the objective so far, what ASHA compares and Optuna is told
CRITERIA = {"source_val/acc": 1, "label_free/snd": 1, "label_free/entropy": -1, "label_free/im": 1}
KEEP = ["trial", "step", "timestamp", "time_total_s", "time_this_iter_s", ORACLE, BEST, *CRITERIA]
CONCURRENCY = 2


def sweep_file(folder: Path, name: str, args, algorithm: str, seed: int, grace: int | None,
               reuse_workers: bool = True) -> Path:
    every = args.steps // args.evals
    raw = {
        "name": name,
        "run": {"data": {"size": args.size, "root": str(args.data_root)},
                "model": {"width": args.width, "depth": 4, "feature_dim": 64, "domain_bn": True},
                "method": {"name": "dance"}, "optim": {"batch_size": 32},
                "train": {"steps": args.steps, "eval_every": every, "seed": 0, "precision": "fp32"},
                "eval": {"snd_max_samples": 200, "max_source_features": 200}},
        "search": {"num_trials": args.trials, "seed": seed, "algorithm": algorithm, "seed_with_defaults": False,
                   "overrides": {"model.width": args.width, "optim.batch_size": 32, "optim.optimizer": "adamw"}},
        "objective": {"metric": ORACLE, "min_source_val_acc": 0.0},
        "scheduler": ({"type": "asha", "grace_period": grace, "reduction_factor": args.reduction_factor}
                      if grace else {"type": "none"}),
        "resources": {"cpus_per_trial": 1, "concurrency": CONCURRENCY, "reuse_workers": reuse_workers},
        "tracking": {"embedding": "none", "finalists": 0},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def evaluations(summary) -> pd.DataFrame:
    """Every evaluation of every trial, with its wall-clock time, in time order."""
    from ray.tune import ExperimentAnalysis

    frames = [df.assign(trial=tid) for tid, df in ExperimentAnalysis(str(summary.path)).trial_dataframes.items()
              if "step" in df]
    ev = pd.concat(frames, ignore_index=True)
    return ev[[c for c in KEEP if c in ev]].sort_values(["timestamp", "step"], kind="stable", ignore_index=True)


def run_once(label: str, args, **sweep) -> dict:
    """One sweep, or its record from an earlier run of this command."""
    record = args.out / "records" / f"{label}.json"
    if record.exists():
        print(f"{label}: from {record}", flush=True)
        data = json.loads(record.read_text())
        return {**data, "ev": pd.DataFrame(data["ev"])}
    from sweeps.run import run_sweep

    path = sweep_file(args.out, f"eff-{label}-{int(time.time())}", args, **sweep)
    t0 = time.perf_counter()
    summary = run_sweep(path, workdir=args.out, progress=False)
    wall = time.perf_counter() - t0
    ev = evaluations(summary)
    data = {"label": label, "wall": wall, "ev": ev.to_dict(orient="list")}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(data))
    return {**data, "ev": ev}


def progress(ev: pd.DataFrame, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative trial-steps and best objective so far, evaluation by evaluation in time order."""
    steps = np.cumsum(np.full(len(ev), every))
    best = np.maximum.accumulate(ev[ORACLE].fillna(-np.inf).to_numpy())
    return steps, best


def rank_correlation(ev: pd.DataFrame) -> pd.Series:
    """Per evaluation step: Spearman between the trials' objective so far and their final objective."""
    table = ev.pivot_table(index="trial", columns="step", values=BEST, aggfunc="last")
    final = table[table.columns.max()]
    return pd.Series({int(s): spearmanr(table[s], final, nan_policy="omit").statistic for s in table.columns})


def choose_grace(rho: pd.Series, threshold: float) -> int:
    """The first evaluation step whose ranking agrees with the final one, before the last step."""
    early = rho[rho.index < rho.index.max()]
    ok = early[early >= threshold]
    return int(ok.index.min() if len(ok) else early.index.max())


def trial_times(ev: pd.DataFrame) -> tuple[float, float]:
    """Summed trial time as Tune counts it, and the same without each trial's start-up inside the trainable
    (its first evaluation interval less its median later one: data, MLflow run and model built before step 1)."""
    total, setup = 0.0, 0.0
    for _, t in ev.groupby("trial"):
        iters = t.sort_values("step")["time_this_iter_s"].to_numpy()
        total += float(t["time_total_s"].max())
        if len(iters) > 1:
            setup += max(0.0, float(iters[0] - np.median(iters[1:])))
    return total, total - setup


def criteria(ev: pd.DataFrame) -> dict:
    out = {}
    oracle = ev[ORACLE].to_numpy(dtype=float)
    for name, sign in CRITERIA.items():
        score = sign * ev[name].to_numpy(dtype=float)
        ok = np.isfinite(score) & np.isfinite(oracle)
        rho = spearmanr(score[ok], oracle[ok]).statistic if ok.sum() > 2 else math.nan
        picked = oracle[ok][np.argmax(score[ok])] if ok.any() else math.nan
        out[name] = {"spearman": float(rho), "regret": float(np.nanmax(oracle) - picked)}
    return out


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)), float(np.nanstd(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def steps_to(steps: np.ndarray, best: np.ndarray, target: float) -> float:
    """Trial-steps spent when the best so far first reached `target` (inf: never)."""
    reached = np.nonzero(best >= target - 1e-9)[0]
    return float(steps[reached[0]]) if len(reached) else math.inf


def run_tpe_asha(args, grace: int, seed: int) -> dict:
    return run_once(f"tpe-asha-g{grace}-rf{args.reduction_factor:g}-s{seed}", args, algorithm="tpe", seed=seed,
                    grace=grace)


def search(args) -> dict:
    every = args.steps // args.evals
    if "random" not in args.arms:  # the TPE arm alone, e.g. in a second process beside the random one
        if not args.grace_period:
            raise SystemExit("--arms tpe needs --grace-period (chosen from the random arm's rank correlation)")
        for s in args.seeds:
            run_tpe_asha(args, args.grace_period, s)
        return {"arms": args.arms, "grace_period": args.grace_period}
    random = {s: run_once(f"random-s{s}", args, algorithm="random", seed=s, grace=None) for s in args.seeds}
    rho = pd.concat([rank_correlation(r["ev"]) for r in random.values()], axis=1).mean(axis=1)
    print("rank correlation of the objective so far with the final objective (random search, mean over seeds):",
          ", ".join(f"step {s}: {v:+.2f}" for s, v in rho.items()), flush=True)
    grace = args.grace_period or choose_grace(rho, args.min_rank_corr)
    print(f"ASHA grace period: {grace} steps, reduction factor {args.reduction_factor}", flush=True)
    if "tpe" not in args.arms:
        return {"arms": args.arms, "rank_correlation_by_step": {str(k): float(v) for k, v in rho.items()},
                "grace_period": grace}
    rows = []
    for s in args.seeds:
        tpe = run_tpe_asha(args, grace, s)
        r_steps, r_best = progress(random[s]["ev"], every)
        t_steps, t_best = progress(tpe["ev"], every)
        needed, near = (steps_to(t_steps, t_best, r_best[-1] - tol) for tol in (0.0, args.tolerance))
        rows.append({"seed": s, "random_best": float(r_best[-1]), "random_steps": int(r_steps[-1]),
                     "tpe_asha_best": float(t_best[-1]), "tpe_asha_steps": int(t_steps[-1]),
                     "tpe_asha_steps_to_random_best": needed,
                     "fraction_of_random_steps": needed / r_steps[-1],
                     # secondary: within --tolerance of random's best (its best is the luckiest of many noisy draws)
                     "fraction_to_within_tolerance": near / r_steps[-1],
                     "tpe_asha_total_fraction": t_steps[-1] / r_steps[-1],
                     "random_wall_s": random[s]["wall"], "tpe_asha_wall_s": tpe["wall"]})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    crit = [criteria(r["ev"]) for r in random.values()]
    crit_out = {}
    for k in CRITERIA:
        (rm, rse), (gm, gse) = (mean_se([c[k][m] for c in crit]) for m in ("spearman", "regret"))
        crit_out[k] = {"spearman": rm, "spearman_se": rse, "regret": gm, "regret_se": gse}
        print(f"criterion {k}: spearman with {ORACLE} across random-search checkpoints {rm:+.2f} +- {rse:.2f}, "
              f"regret {gm:.3f} +- {gse:.3f}")
    frac = df["fraction_of_random_steps"]
    return {
        "trials": args.trials, "seeds": args.seeds, "size": args.size, "steps": args.steps, "width": args.width,
        "eval_every": every,
        "grace_period": grace, "reduction_factor": args.reduction_factor, "min_rank_corr": args.min_rank_corr,
        "rank_correlation_by_step": {str(k): float(v) for k, v in rho.items()},
        "per_seed": rows,
        "fraction_of_random_steps_mean": float(frac.replace(math.inf, np.nan).mean()),
        "fraction_of_random_steps_max": float(frac.max()),
        "tpe_asha_total_fraction_mean": float(df["tpe_asha_total_fraction"].mean()),
        "seeds_reaching_random_best": int(np.isfinite(frac).sum()),
        "tolerance": args.tolerance,
        "fraction_to_within_tolerance_mean": float(df["fraction_to_within_tolerance"].replace(math.inf, np.nan).mean()),
        "seeds_within_tolerance": int(np.isfinite(df["fraction_to_within_tolerance"]).sum()),
        "goal_fraction": 0.4, "goal_met": bool((frac <= 0.4).all()),
        "random_best_mean": float(df["random_best"].mean()), "tpe_asha_best_mean": float(df["tpe_asha_best"].mean()),
        "criteria": crit_out,
    }


def overhead(args) -> dict:
    grace = args.grace_period or 2 * (args.steps // args.evals)
    out = {"trials": args.trials, "seed": args.seeds[0], "size": args.size, "steps": args.steps, "width": args.width,
           "grace_period": grace, "reduction_factor": args.reduction_factor, "concurrency": CONCURRENCY}
    for reuse in (False, True):  # the old path first: a warm page cache then favours it, not the new one
        key = "reuse" if reuse else "fresh"
        label = f"overhead-{key}-w{args.width}-steps{args.steps}-t{args.trials}"
        r = run_once(label, args, algorithm="tpe", seed=args.seeds[0], grace=grace, reuse_workers=reuse)
        tune_time, train_time = trial_times(r["ev"])
        # From the first trial's start to the last one's end: without the sweep's own start (Ray, MLflow, data check)
        # and end (summary, plots), which do not grow with the number of trials.
        starts = r["ev"]["timestamp"] - r["ev"]["time_this_iter_s"]
        span = float(r["ev"]["timestamp"].max() - starts.min())
        full = r["ev"].groupby("trial")["step"].max() == args.steps
        full_s = r["ev"].groupby("trial")["time_total_s"].max()[full]
        out[key] = {"wall_s": r["wall"], "trial_s": tune_time, "training_s": train_time,
                    "overhead": r["wall"] / (tune_time / CONCURRENCY),
                    "overhead_vs_training": r["wall"] / (train_time / CONCURRENCY),
                    "span_s": span, "overhead_in_span_vs_training": span / (train_time / CONCURRENCY),
                    "full_trial_s_median": float(full_s.median()) if len(full_s) else math.nan,
                    "trials": int(r["ev"]["trial"].nunique())}
        print(f"{key}: wall {r['wall']:.0f}s, trial time {tune_time:.0f}s (training {train_time:.0f}s) over "
              f"{CONCURRENCY} slots: overhead {out[key]['overhead']:.2f} ({out[key]['overhead_vs_training']:.2f} "
              f"against training time; {out[key]['overhead_in_span_vs_training']:.2f} from the first trial's start to "
              f"the last one's end); a full trial {out[key]['full_trial_s_median']:.1f}s", flush=True)
    out["goal"] = 1.10
    out["goal_met"] = bool(out["reuse"]["overhead_vs_training"] <= 1.10)
    out["wall_ratio_reuse_over_fresh"] = out["reuse"]["wall_s"] / out["fresh"]["wall_s"]
    return out


def plain(value):
    """Strict JSON: inf (never reached) and nan (not measured) become null."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--overhead", action="store_true", help="reused against fresh worker processes (section above)")
    p.add_argument("--trials", type=int, default=None, help="per sweep (default 48; 16 with --overhead)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=120, help="per full trial")
    p.add_argument("--width", type=int, default=8,
                   help="model width (8: a 120-step trial in about 6 s here; 16 with 180 steps: 20 s)")
    p.add_argument("--evals", type=int, default=4, help="evaluations per full trial")
    p.add_argument("--grace-period", type=int, default=None, help="ASHA's first rung (default: chosen, see above)")
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--min-rank-corr", type=float, default=0.8)
    p.add_argument("--tolerance", type=float, default=0.01, help="secondary figure: reaching random's best less this")
    p.add_argument("--arms", nargs="+", choices=("random", "tpe"), default=["random", "tpe"],
                   help="run only one arm (records are shared: a later run with both arms reports)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "search_efficiency")
    p.add_argument("--publish", action="store_true", help="merge the JSON into bench/results/search_efficiency.json")
    args = p.parse_args()
    args.trials = args.trials or (16 if args.overhead else 48)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_root = args.out / "data"
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray

    ray.init(address="local", num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # a Ray of its own, never a cluster left on this machine
    t0 = time.perf_counter()
    result = overhead(args) if args.overhead else search(args)
    result["bench_wall_s"] = time.perf_counter() - t0
    result = plain(result)
    key = "overhead" if args.overhead else "search"
    if len(args.arms) < 2 and not args.overhead:
        print(json.dumps(result))
        return  # one arm: records only, nothing to publish
    (args.out / f"result_{key}.json").write_text(json.dumps(result, indent=1))
    if args.publish:
        published = ROOT / "bench" / "results" / "search_efficiency.json"
        merged = json.loads(published.read_text()) if published.exists() else {}
        published.write_text(json.dumps({**merged, key: result}, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
