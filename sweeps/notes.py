"""The parent run's description (markdown): what a user reads first when opening a sweep in the MLflow UI.

It says what was searched and how, which trial is best with a link to its run, the baselines beside it on the
same numbers, where the Optuna study is and which pictures to open.
"""

from __future__ import annotations

from pathlib import Path

from uda_core.evaluation import names as N

from .config import SweepConfig
from .names import run_url

__all__ = ["sweep_note"]

TITLES = {N.SOURCE_VAL_ACC: "source val acc", N.ORACLE_ACC: "oracle target acc", N.ORACLE_H: "oracle H-score"}


def _pictures(sweep: SweepConfig, labelled: bool, finished: bool) -> list[str]:
    """The pictures this sweep logs (some need target labels, a chosen embedding, or the sweep's end)."""
    out = []
    if finished:
        out += ["`optuna/optimization_history.png`: each trial's objective, ASHA's stops marked",
                "`optuna/param_importances.png`: which parameters mattered (from two scored trials on)"]
        if labelled:
            out.append("`selection/criteria_vs_oracle_ORACLE.png`: how each label-free criterion ranks checkpoints "
                       "(oracle: uses target labels)")
    trial = "in each trial's run, `best/confusion_*.png`"
    if sweep.tracking.embedding != "none":
        trial += " and `best/embedding.png`"
    return out + [trial + ": at its best checkpoint"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _link(row: dict, state: dict) -> str:
    name = row.get("mlflow_run_name") or row["trial_id"]
    run_id = row.get("mlflow_run_id")
    return f"[{name}]({run_url(state['experiment_id'], run_id)})" if run_id else name


def _methods(sweep: SweepConfig) -> str:
    if len(sweep.methods) == 1:
        return f"Method **{sweep.methods[0]}**"
    return f"Methods **{', '.join(sweep.methods)}** (each trial chooses one, then its settings)"


def sweep_note(sweep: SweepConfig, state: dict, rows: list[dict] | None = None, best: dict | None = None,
               labelled: bool = True) -> str:
    obj = sweep.objective
    metric, mode = obj.metrics[0], obj.modes[0]
    stopping = " + ASHA" if sweep.scheduler.type == "asha" else ""
    lines = [f"### Sweep `{sweep.name}`" + (" (ORACLE objective)" if obj.oracle else ""),
             (sweep.description + "\n") if sweep.description else "",
             f"{_methods(sweep)}, {sweep.search.num_trials} trials by "
             f"{sweep.search.algorithm.upper()}{stopping}; objective `best/{metric}` "
             f"({mode}) at each trial's best checkpoint. Baselines: {', '.join(sweep.baselines) or 'none'}.", ""]
    if rows is None:
        lines.append("The sweep is running: this description is rewritten when it ends.")
    else:
        shown = ([best] if best else []) + [r for r in rows if r["kind"] == "baseline"]
        cols = [m for m in (N.SOURCE_VAL_ACC, N.ORACLE_ACC, N.ORACLE_H) if labelled or not N.is_oracle(m)]
        lines += [f"| | run | best/{metric} | " + " | ".join(TITLES[c] for c in cols) + " |",
                  "|---" * (3 + len(cols)) + "|"]
        for r in shown:
            role = "**best**" if r is best else "baseline"
            lines.append(f"| {role} | {_link(r, state)} | {_fmt(r.get(f'best/{metric}'))} | "
                         + " | ".join(_fmt(r.get(f"at_best/{c}")) for c in cols) + " |")
        if not best:
            lines.append("\nNo search trial has a finite objective: none passed the source-accuracy guard "
                         f"({N.SOURCE_VAL_ACC} >= {obj.min_source_val_acc}) at any evaluation.")
        if labelled:
            lines.append("\nOracle columns use target labels: for reporting, never for selection.")
    from .run import STUDY_FILE

    journal = Path(state["path"]) / STUDY_FILE
    lines += ["", f"Runs named `trial N · method` are Optuna's trial N of study `{state['study_name']}` "
                  f"(`optuna-dashboard {journal}`); each run's tags `optuna_trial` and `trial_id` (Ray) link them.",
              "", "Pictures (Artifacts tab):"] + [f"- {p}" for p in _pictures(sweep, labelled, rows is not None)]
    return "\n".join(lines)
