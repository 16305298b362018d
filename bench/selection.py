"""Label-free model selection, measured: how well each criterion ranks trials and checkpoints by the ORACLE target
H-score and accuracy on labelled synthetic survey pairs, and the regret of promoting the model it picks.

For every pair x seed, a random-search sweep of `--trials` configurations (Optuna's RandomSampler: the population of
models a sweep explores, unbiased by any objective) is trained on the pair's data (data, search and training seeded
by the seed), and every evaluation's metrics are recorded. By default the sweep searches the joint space of every
method that trains without target labels (`--methods all`, as a sweep's `space: all`), so a criterion must choose
the method as well as its settings; `--methods adabn dance` instead runs one sweep per method. The analysis
(uda_core.evaluation.selection) then applies each criterion the way a sweep does: the checkpoint with the best
criterion among those whose source validation accuracy passes the sweep's guard (0.5).

Records are kept in git (`--records`, default bench/records/selection: one JSON line per evaluation, the selection
metrics only), appended trial by trial, so an interrupted benchmark, or the next working session, continues where
it stopped: the seeded sampler replays the recorded trials' draws and goes on. `--analyse-only` redraws the table and
plot from the records.

    OMP_NUM_THREADS=1 .venv/bin/python bench/selection.py [--pairs ...] [--seeds 0 1 2] [--trials 12] [--workers 2]

Cost on this 2-core CPU (`bench` size, 1,000 steps, 4 evaluations): about 2 minutes per trial and core on average
(a contrastive trial 4-5), so one seed (3 sweeps of 12 trials) takes about 50 minutes of both cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.publish import publish as publish_result  # noqa: E402

PAIRS = ("decals:sdss", "lsst_y10:lsst_y1", "decals:bass_mzls")
ALL = "all"  # the joint space of every method that trains without target labels
# Width and batch are fixed so every trial costs the same on this CPU; the rest of each method's space is searched.
OVERRIDES = {"model.width": 16, "optim.batch_size": 64}
# What a record keeps of an evaluation: what selection reads (criteria, guard, oracle scores) and the oracle
# unknown-detection figures, not the per-class and per-score detail.
KEPT_PREFIXES = ("label_free/", "source_val/")
KEPT_ORACLE = ("oracle/target_test/acc_shared", "oracle/target_test/h_score", "oracle/target_test/auroc",
               "oracle/target_test/known_rejected", "oracle/target_test/unknown_recall",
               "oracle/target_train/acc_shared", "oracle/target_train/h_score")


def sweep_methods(method: str) -> list[str]:
    from uda_core.methods.params import PARAMS, TRAINS_ON_TARGET_LABELS

    return [m for m in PARAMS if m not in TRAINS_ON_TARGET_LABELS] if method == ALL else [method]


def base_config(pair: str, method: str, seed: int, args) -> dict:
    source, target = pair.split(":")
    return {
        "data": {"source": source, "target": target, "size": args.size, "seed": seed, "root": str(args.data_root)},
        "model": {"width": 16, "depth": 4, "feature_dim": 64, "domain_bn": True},
        "method": {"name": sweep_methods(method)[0]},
        "optim": {"batch_size": 64},
        "train": {"steps": args.steps, "eval_every": args.steps // args.evals, "seed": seed, "threads": 1,
                  "precision": "auto", "progress": False, "keep_checkpoints": 1},
        "eval": {"snd_max_samples": 500, "max_source_features": 500, "dev_max_samples": 500},
    }


def records_file(records: Path, pair: str, method: str, seed: int) -> Path:
    return records / f"{pair.replace(':', '-')}_{method}_seed{seed}.jsonl"


class RecordsError(RuntimeError):
    """Records that cannot be continued: another setup, or draws that no longer replay (the search space changed)."""


def finished_trials(path: Path, setup: dict) -> list[dict]:
    """The closing lines (params included) of the trials the records file holds whole, in order. What follows the
    last closing line (a trial killed while its lines were written) does not count; a file of another setup is an
    error, not a silent mix."""
    done = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last line
        if r.get("setup", setup) != setup:
            raise RecordsError(f"{path}: recorded with {r['setup']}, not {setup}: use another --records folder")
        if r.get("done"):
            done.append(r)
    return done


def drop_torn_tail(path: Path) -> None:
    """Cut the file after its last closing line, so a continued sweep appends after whole trials only."""
    if path.exists():
        text = path.read_text()
        end = text.rfind('"done": true')
        path.write_text(text[: text.index("\n", end) + 1] if end >= 0 else "")


def setup_of(args) -> dict:
    return {"size": args.size, "steps": args.steps, "evals": args.evals, **OVERRIDES}


def kept(metrics: dict) -> dict:
    return {k: (round(v, 6) if v == v else None) for k, v in metrics.items()
            if k.startswith(KEPT_PREFIXES) or k in KEPT_ORACLE}


def run_job(job: tuple[str, int, str, argparse.Namespace]) -> str:
    """One random-search sweep, trial by trial into its records file (continuing a partial one)."""
    import optuna
    import torch

    from search_spaces import METHOD_KEY, apply_params, search_space
    from uda_core.config import build_config
    from uda_core.train import TrainingDiverged, load_data, train

    pair, seed, method, args = job
    out, setup = records_file(args.records, pair, method, seed), setup_of(args)
    recorded = finished_trials(out, setup)
    done = len(recorded)
    if done >= args.trials:
        return str(out)
    drop_torn_tail(out)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = base_config(pair, method, seed, args)
    space = search_space(sweep_methods(method)).with_overrides(OVERRIDES, base)
    data = load_data(build_config(base), progress=False)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    t0 = time.time()
    for i in range(args.trials):
        trial = study.ask()
        params = {**space(trial), **trial.params}
        study.tell(trial, 0.0)
        if i < done:  # recorded already: its draw is replayed so the next ones are the same as in one run
            if json.loads(json.dumps(params)) != recorded[i]["params"]:
                raise RecordsError(f"{out}: trial {i} no longer draws what it recorded (the search space changed): "
                                   "use another --records folder")
            continue
        cfg = build_config(apply_params(base, params))
        trained = params.get(METHOD_KEY, cfg.method.name)
        evals = []
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train(cfg, lambda ev, _ckpt: evals.append(ev.metrics), Path(tmp), data=data)
            except TrainingDiverged:
                pass  # its finished evaluations stay in the record, as in a sweep
        head = {"pair": pair, "seed": seed, "method": method, "trained": trained, "trial": i}
        lines = [json.dumps(head | {"step": k, "metrics": kept(m)}) for k, m in enumerate(evals)]
        lines.append(json.dumps(head | {"done": True, "setup": setup, "params": params}))
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:  # a trial's lines land together, after it finished
            f.write("\n".join(lines) + "\n")
        print(f"[{pair} {method} seed {seed}] trial {i + 1}/{args.trials} {trained} ({time.time() - t0:.0f} s)",
              flush=True)
    return str(out)


def _json_safe(v):
    """A figure for the published JSON: None for nan (strict JSON has no NaN), ints kept, floats to 5 places."""
    return None if v != v else v if isinstance(v, int) else round(float(v), 5)


def publish(summary, records, decision: dict, args) -> None:
    """The measured regrets, per criterion, as the package's record of this benchmark."""
    from sweeps.selection_benchmark import BENCHMARK_FILE
    from uda_core.evaluation.selection import NOISE_FLOOR, RANDOM

    both = summary[summary["method"] == "both"]
    pairs = both[both["pair"] != "all"]
    overall = both[both["pair"] == "all"].set_index("criterion")
    criteria = {}
    for crit, r in overall.drop([RANDOM, NOISE_FLOOR], errors="ignore").iterrows():
        per_pair = pairs[pairs["criterion"] == crit]
        criteria[crit] = {"sweeps": int(r.n), "regret": r.regret, "regret_acc": r.regret_acc,
                          "regret_acc_se": r.regret_acc_se, "regret_h": r.regret_h, "regret_h_se": r.regret_h_se,
                          "worst_pair_regret_acc": per_pair.regret_acc.max(),
                          "worst_pair_regret_h": per_pair.regret_h.max(),
                          "rho_trial_acc": r.rho_trial_acc, "rho_trial_h": r.rho_trial_h,
                          "rho_ckpt_acc": r.rho_ckpt_acc, "rho_ckpt_h": r.rho_ckpt_h}
    n_trials = records.groupby(["pair", "method", "seed"])["trial"].nunique()
    setup = (f"bench/selection.py: {records.pair.nunique()} pairs ({', '.join(sorted(records.pair.unique()))}) x "
             f"{records.method.nunique()} methods ({', '.join(sorted(records.method.unique()))}) "
             f"x {records.seed.nunique()} seeds, "
             f"{n_trials.min()} random-search trials each, size {args.size}, "
             f"{args.steps} steps, {args.evals} checkpoints per trial")
    clean = {c: {k: _json_safe(v) for k, v in d.items()} for c, d in criteria.items()}
    refs = {name: {"regret_acc": round(float(overall.loc[name].regret_acc), 5),
                   "regret_h": round(float(overall.loc[name].regret_h), 5)}
            for name in (RANDOM, NOISE_FLOOR) if name in overall.index}
    default = {k: decision[k] for k in ("criterion", "chosen", "chosen_on_seed")} | {
        "held_out": {k: _json_safe(v) for k, v in decision["held_out"].items()}}
    BENCHMARK_FILE.write_text(json.dumps({"setup": setup, "default_objective": default, "criteria": clean,
                                          "references": refs}, indent=1) + "\n")
    print(f"wrote {BENCHMARK_FILE}")


def choose_then_report(per_sweep, decision: dict) -> str:
    """The default's protocol (selection.choose_default: `decision`), and every criterion that selected in only
    some sweeps (one recorded only by later sweeps) against the default on those sweeps, paired. Empty until a
    second seed is recorded."""
    from sweeps.config import DEFAULT_OBJECTIVE
    from uda_core.evaluation.selection import CRITERIA, paired_regret

    h = decision["held_out"]
    if not h["n"]:
        return ""
    lines = [f"chosen on seed {decision['chosen_on_seed']}: {decision['chosen']}; on the other seeds ({h['n']} "
             f"sweeps), regret acc / H: {h['a_acc']:.3f} / {h['a_h']:.3f}, the default now ({DEFAULT_OBJECTIVE}) "
             f"{h['b_acc']:.3f} / {h['b_h']:.3f}; paired difference of the mean regret {h['diff']:+.3f} ± "
             f"{h['diff_se']:.3f}", f"default objective after the protocol: {decision['criterion']}"]
    everywhere = per_sweep.groupby("criterion")["regret"].apply(lambda v: v.notna().all())
    for crit in [c for c in CRITERIA if c in everywhere.index and not everywhere[c]]:
        p = paired_regret(per_sweep, crit, DEFAULT_OBJECTIVE)
        if p["n"]:
            lines.append(f"selected in {p['n']} sweeps only: {crit} {p['a_acc']:.3f} / {p['a_h']:.3f} against the "
                         f"default's {p['b_acc']:.3f} / {p['b_h']:.3f} there; paired difference "
                         f"{p['diff']:+.3f} ± {p['diff_se']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS))
    ap.add_argument("--methods", nargs="+", default=[ALL],
                    help=f"{ALL!r}: one sweep over every label-free method; else one sweep per named method")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--evals", type=int, default=4, help="evaluations (checkpoints) per trial")
    ap.add_argument("--size", default="bench", help="data.size preset (bench: 3,000 target/test stamps)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--records", type=Path, default=ROOT / "bench" / "records" / "selection",
                    help="the per-evaluation records (kept in git)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "selection", help="tables and picture")
    ap.add_argument("--data-root", type=Path, default=ROOT / "bench" / "out" / "adaptation_data",
                    help="data set cache (bench/product's)")
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--publish", action="store_true",
                    help="write the per-criterion regrets and the protocol's default objective to "
                         "sweeps/selection_benchmark.json (promote's tags; sweeps/config.py follows it), and the "
                         "summary to bench/results/selection.json")
    args = ap.parse_args()
    args.records.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    if not args.analyse_only:
        from uda_core.config import build_config
        from uda_core.train import load_data

        for pair in args.pairs:  # several sweeps on one data set: generate it once, before the workers race for it
            for seed in args.seeds if len(args.methods) > 1 else ():
                load_data(build_config(base_config(pair, args.methods[0], seed, args)), progress=False)
        jobs = [(p, s, m, args) for s in args.seeds for p in args.pairs for m in args.methods]
        try:  # every records file of another setup, before any work
            [finished_trials(records_file(args.records, p, m, s), setup_of(args)) for p, s, m, _ in jobs]
        except RecordsError as e:
            raise SystemExit(f"error: {e}") from None
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for path in pool.imap_unordered(run_job, jobs):
                print(f"done: {path} ({time.time() - t0:.0f} s)", flush=True)

    from uda_core.data.tasks import get_task
    from sweeps.config import DEFAULT_OBJECTIVE
    from uda_core.evaluation.selection import (NOISE_FLOOR, RANDOM, add_combinations, choose_default, load_records,
                                               per_sweep_selection, plot_h_against_rejection, plot_selection,
                                               selection_summary, summary_table)

    # Only finished sweeps, each cut to --trials whole trials: populations of other sizes do not compare.
    files, finished, partial = sorted(args.records.glob("*.jsonl")), set(), []
    for path in files:
        closing = finished_trials(path, setup_of(args))
        if len(closing) < args.trials:
            partial.append(path.stem)
        else:
            finished |= {(c["pair"], c["method"], c["seed"], c["trial"]) for c in closing[: args.trials]}
    if partial:
        print(f"left out, fewer than {args.trials} trials recorded: {', '.join(partial)}")
    if not finished:
        raise SystemExit(f"no finished sweep recorded in {args.records} yet: nothing to analyse")
    records = load_records(files)
    keep = [k in finished for k in records[["pair", "method", "seed", "trial"]].itertuples(index=False, name=None)]
    records = add_combinations(records[keep].reset_index(drop=True), get_task("universal").num_known)
    per_sweep = per_sweep_selection(records)
    summary = selection_summary(records, per_sweep)
    summary.to_csv(args.out / "selection.csv", index=False)
    table = summary_table(summary)
    (args.out / "selection.md").write_text(table + "\n")
    fig = plot_selection(summary)
    fig.savefig(args.out / "selection.png", dpi=120, bbox_inches="tight")
    plot_h_against_rejection(records).savefig(args.out / "h_against_rejection.png", dpi=110, bbox_inches="tight")
    print(table)
    overall = summary[summary["pair"] == "all"].set_index("criterion")
    decision = choose_default(per_sweep, DEFAULT_OBJECTIVE)
    # Among the criteria measured on every sweep: one recorded by later sweeps only is not comparable here.
    criteria_only = overall.loc[overall["n"] == overall["n"].max(), "regret"].drop([RANDOM, NOISE_FLOOR],
                                                                                   errors="ignore")
    held_out = choose_then_report(per_sweep, decision)
    if held_out:
        print(held_out)
    result = {"bench": "selection", "records": len(records),
              "sweeps": int(records.groupby(["pair", "method", "seed"]).ngroups), "wall_s": round(time.time() - t0, 1),
              "default_objective": decision["criterion"],
              "lowest_mean_regret_on_every_sweep": criteria_only.idxmin(),
              "regret_acc": {c: round(v, 4) for c, v in overall["regret_acc"].items()},
              "regret_h": {c: round(v, 4) for c, v in overall["regret_h"].items()}}
    if args.publish:
        publish(summary, records, decision, args)
        publish_result("selection", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
