"""What a sweep produced, read back from Ray Tune's experiment folder: the trial table, the best trial, and the
end-of-sweep records in MLflow (closing stale runs, tables, Optuna plots, baseline comparison, finalist models)."""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

import pandas as pd

from search_spaces import METHOD_KEY
from uda_core.errors import UdaError
from uda_core.evaluation import names as N

from .config import SweepConfig, has_labelled_target
from .names import OPTUNA_TRIAL, trial_params

__all__ = ["trial_rows", "best_row", "summarise", "format_table", "REPORTED", "reported_metrics"]

log = logging.getLogger(__name__)

# Numbers shown beside every trial: source accuracy always; the oracle ones only when the target has labels
# (simulated pairs, imported surveys with evaluation labels; marked oracle everywhere).
ORACLE_REPORTED = (N.ORACLE_ACC, N.ORACLE_H)
REPORTED = (N.SOURCE_VAL_ACC, *ORACLE_REPORTED)


def _labelled(sweep: SweepConfig) -> bool:
    try:
        return has_labelled_target(sweep)
    except UdaError as e:  # the data set moved or was deleted: show the oracle columns, empty where unknown
        log.warning("cannot tell whether the target has labels: %s", e)
        return True


def reported_metrics(labelled: bool) -> tuple[str, ...]:
    return REPORTED if labelled else tuple(m for m in REPORTED if not N.is_oracle(m))


def _analysis(exp_dir: Path):
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(exp_dir))


def trial_rows(exp_dir: Path, sweep: SweepConfig, analysis=None) -> list[dict]:
    """One dict per trial: id, status, kind, parameters, budget used, the objective and oracle numbers at its best
    checkpoint. Works while the sweep runs (Tune snapshots its state every few seconds)."""
    analysis = analysis or _analysis(exp_dir)
    frames = analysis.trial_dataframes
    reported = reported_metrics(_labelled(sweep))
    rows = []
    for trial in analysis.trials:
        cfg = dict(trial.config)
        kind = "baseline" if "baseline" in cfg else "search"
        prefix = "baseline_" if kind == "baseline" else ""
        last = trial.last_result or {}
        # The method the trial trained: a baseline's, the one a joint space's trial chose, or the sweep's own.
        method = cfg.get("baseline") or cfg.get(METHOD_KEY, sweep.run.method.name)
        row = {"trial_id": trial.trial_id, "status": trial.status, "kind": kind,
               "method": method, "step": last.get("step", 0),
               "best_step": last.get(f"{prefix}best_step", -1), "params": trial_params(cfg),
               "optuna_trial": cfg.get(OPTUNA_TRIAL),
               "path": str(trial.path) if trial.path else None}
        for m in sweep.objective.metrics:
            v = last.get(f"{prefix}best/{m}")
            row[f"best/{m}"] = v if v is not None and math.isfinite(v) else None
        df = frames.get(trial.trial_id)
        at_best = None
        if df is not None and "step" in df and row["best_step"] >= 0:
            match = df[df["step"] == row["best_step"]]
            at_best = match.iloc[-1] if len(match) else None
        for m in reported:
            row[f"at_best/{m}"] = float(at_best[m]) if at_best is not None and m in at_best else None
        rows.append(row)
    return rows


def metrics_at(exp_dir: Path, trial_id: str, step: int) -> dict[str, float]:
    """Every metric a trial reported at `step` (from Tune's results, which the trial logged to MLflow too)."""
    df = _analysis(exp_dir).trial_dataframes.get(trial_id)
    if df is None or "step" not in df:
        return {}
    match = df[df["step"] == step]
    if not len(match):
        return {}
    row = match.iloc[-1]
    return {k: float(v) for k, v in row.items()
            if "/" in str(k) and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def ranked_rows(rows: list[dict], sweep: SweepConfig) -> list[dict]:
    """Search trials with an objective, best first, by their best checkpoint (first metric for multi-objective).

    Python's sort is stable, so ties keep trial order."""
    m, mode = sweep.objective.metrics[0], sweep.objective.modes[0]
    scored = [r for r in rows if r["kind"] == "search" and r.get(f"best/{m}") is not None]
    return sorted(scored, key=lambda r: -r[f"best/{m}"] if mode == "max" else r[f"best/{m}"])


def best_row(rows: list[dict], sweep: SweepConfig) -> dict | None:
    ranked = ranked_rows(rows, sweep)
    return ranked[0] if ranked else None


def pareto_rows(rows: list[dict], sweep: SweepConfig) -> list[dict]:
    metrics, modes = sweep.objective.metrics, sweep.objective.modes
    scored = [r for r in rows if r["kind"] == "search" and all(r.get(f"best/{m}") is not None for m in metrics)]
    sign = [1 if md == "max" else -1 for md in modes]

    def dominates(a, b):
        va = [s * a[f"best/{m}"] for s, m in zip(sign, metrics)]
        vb = [s * b[f"best/{m}"] for s, m in zip(sign, metrics)]
        return all(x >= y for x, y in zip(va, vb)) and any(x > y for x, y in zip(va, vb))

    return [r for r in scored if not any(dominates(o, r) for o in scored if o is not r)]


def format_table(rows: list[dict], sweep: SweepConfig, max_params: int = 4) -> str:
    metrics = sweep.objective.metrics
    oracle = "ORACLE " if sweep.objective.oracle else ""
    labelled = _labelled(sweep)
    reported = reported_metrics(labelled)
    titles = {N.SOURCE_VAL_ACC: "src val acc", N.ORACLE_ACC: "oracle tgt acc", N.ORACLE_H: "oracle H"}
    joint = len(sweep.methods) > 1  # the method is searched: shown in the kind column, not as a parameter
    keys = sorted({k for r in rows for k in r["params"] if k != METHOD_KEY})[:max_params]
    head = ["trial", "optuna #", "status", "kind", "steps"] + [f"{oracle}best {m}" for m in metrics] + \
           [titles[m] for m in reported] + [k.split(".")[-1] for k in keys]
    lines = []
    for r in rows:
        cells = [r["trial_id"], _fmt(r.get("optuna_trial")), r["status"],
                 r["method"] if r["kind"] == "baseline" else f"search · {r['method']}" if joint else "search",
                 f"{r['step']}/{sweep.run.train.steps}"]
        cells += [_fmt(r.get(f"best/{m}")) for m in metrics]
        cells += [_fmt(r.get(f"at_best/{m}")) for m in reported]
        cells += [_fmt(r["params"].get(k)) for k in keys]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    done = sum(r["status"] in ("TERMINATED", "ERROR") for r in rows)
    used = sum(r["step"] for r in rows)
    budget = (sweep.search.num_trials + len(sweep.baselines)) * sweep.run.train.steps
    out.append(f"{done}/{sweep.search.num_trials + len(sweep.baselines)} trials finished; "
               f"{used}/{budget} training steps used ({100 * used / max(budget, 1):.0f}%); "
               + ("oracle columns use target labels and are for reporting only" if labelled
                  else "the target has no labels: label-free numbers only"))
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summarise(sweep: SweepConfig, exp_dir: Path, state: dict, parent):
    """Close stale child runs and write the sweep's summary to the parent run; returns a SweepSummary."""
    from .run import SweepSummary
    from .tracking import child_runs, close_stale_runs

    analysis = _analysis(exp_dir)  # read once: the trial table and the selection analysis both use it
    labelled = _labelled(sweep)
    rows = trial_rows(exp_dir, sweep, analysis)
    closed = close_stale_runs(state["tracking_uri"], state["experiment_id"], state["parent_run_id"],
                              {r["trial_id"]: r["status"] for r in rows})
    if closed:
        log.info("closed %d stale MLflow runs: %s", len(closed), closed)
    runs = {c.data.tags.get("trial_id"): c for c in child_runs(state["tracking_uri"], state["experiment_id"],
                                                               state["parent_run_id"])
            if not c.data.tags.get("orphan")}
    for r in rows:  # the links between Ray's trial, Optuna's trial number and the MLflow run, also in trials.csv
        run = runs.get(r["trial_id"])
        r["mlflow_run_id"], r["mlflow_run_name"] = (run.info.run_id, run.info.run_name) if run else (None, None)
    finished = len(rows) == sweep.search.num_trials + len(sweep.baselines) and all(
        r["status"] in ("TERMINATED", "ERROR") for r in rows)
    best = best_row(rows, sweep)
    table = pd.DataFrame([{**{k: v for k, v in r.items() if k not in ("params", "path")},
                           **{f"param/{k}": v for k, v in r["params"].items()}} for r in rows])
    if "optuna_trial" in table:  # baselines have none: keep the numbers integers, not 0.0, 1.0
        table["optuna_trial"] = table["optuna_trial"].astype("Int64")
    parent.log_table(table, "trials.json")
    metrics = {"trials/finished": sum(r["status"] == "TERMINATED" for r in rows),
               "trials/failed": sum(r["status"] == "ERROR" for r in rows)}
    if best:
        metrics.update({f"best/{m}": best[f"best/{m}"] for m in sweep.objective.metrics})
        metrics.update({f"best_trial/{m}": best.get(f"at_best/{m}") for m in REPORTED})
        parent.set_tags({"best_trial_id": best["trial_id"], "best_trial_step": best["best_step"],
                         "best_trial_method": best["method"],
                         **{f"best_param/{k}": v for k, v in best["params"].items()}})
    for r in rows:
        if r["kind"] == "baseline":
            metrics.update({f"baseline/{r['method']}/{m}": r.get(f"at_best/{m}") for m in REPORTED})
    parent.log_metrics({k: v for k, v in metrics.items() if v is not None})
    if len(sweep.objective.metrics) > 1:
        front = pareto_rows(rows, sweep)
        parent.set_tags({"pareto_trial_ids": ",".join(r["trial_id"] for r in front)})
    _log_study_plots(sweep, exp_dir, state, parent)
    try:
        if labelled:  # the ORACLE selection analysis scores checkpoints by target labels
            _log_selection(sweep, analysis.trial_dataframes, rows, parent)
    except Exception as e:  # a picture is never worth failing a sweep
        log.warning("could not analyse the selection criteria: %s", e)
    if best and finished and sweep.tracking.finalists:  # an interrupted sweep's best trial may still be training
        from .finalists import log_finalists

        try:
            log_finalists(sweep, exp_dir, state, rows)
        except Exception as e:  # a failed model upload must not hide the sweep's results
            log.warning("logging finalist models failed: %s", e)
    from .notes import sweep_note

    parent.set_note(sweep_note(sweep, state, rows, best, labelled))
    parent.finish("FINISHED" if finished else "KILLED")
    return SweepSummary(sweep.name, exp_dir, state["parent_run_id"], state["experiment_id"], state["tracking_uri"],
                        rows, best, finished)


def _log_study_plots(sweep: SweepConfig, exp_dir: Path, state: dict, parent) -> None:
    """The study's optimisation history and parameter importances as PNG in the parent run."""
    import matplotlib

    matplotlib.use("Agg")  # the driver may run where no display is
    import matplotlib.pyplot as plt

    from .run import load_study
    from .study_plots import plot_history, plot_importances

    study = load_study(exp_dir, state["study_name"])
    if study is None:
        return
    name = "best/" + sweep.objective.metrics[0] + (" (ORACLE)" if sweep.objective.oracle else "")
    plots = {"optuna/optimization_history.png": lambda: plot_history(study, name, sweep.objective.modes[0] == "max"),
             "optuna/param_importances.png": lambda: plot_importances(study, name)}
    for file, make in plots.items():
        try:
            fig = make()
            if fig is not None:
                parent.log_figure(fig, file)
                plt.close(fig)
        except Exception as e:  # importance needs variance across trials; a plot is never worth failing a sweep
            log.warning("could not draw %s: %s", file, e)


def _log_selection(sweep: SweepConfig, frames: dict[str, pd.DataFrame], rows: list[dict], parent) -> None:
    """ORACLE, simulated pairs only: how each label-free criterion would have chosen among this sweep's checkpoints
    (regret and Spearman as metrics `oracle/selection/...`, and every checkpoint's criteria against the target
    H-score as a picture). Skipped when the target has no labels."""
    from uda_core.evaluation.selection import ORACLE, plot_criteria_vs_oracle, sweep_selection

    import matplotlib.pyplot as plt

    search = {r["trial_id"] for r in rows if r["kind"] == "search"}
    parts = [df.assign(trial=tid) for tid, df in frames.items()
             if tid in search and ORACLE["h"] in df and N.SOURCE_VAL_ACC in df]
    if not parts:
        return
    evals = pd.concat(parts, ignore_index=True)
    evals = evals[evals[ORACLE["h"]].notna() & evals[N.SOURCE_VAL_ACC].notna()].reset_index(drop=True)
    if evals.empty:
        return
    guard = (N.SOURCE_VAL_ACC, sweep.objective.min_source_val_acc)  # the sweep's own rule for a trial's best
    table = sweep_selection(evals, guard=guard)
    metrics = {f"oracle/selection/{stat}/{r['criterion']}": r[stat] for _, r in table.iterrows()
               for stat in ("regret_acc", "regret_h", "rho_trial_h", "rho_ckpt_h") if stat in r and pd.notna(r[stat])}
    parent.log_metrics(metrics)
    fig = plot_criteria_vs_oracle(evals, guard=guard)
    parent.log_figure(fig, "selection/criteria_vs_oracle_ORACLE.png")
    plt.close(fig)
