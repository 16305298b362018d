"""Pictures of the Optuna study for the parent run: the optimisation history and the parameter importances.

Optuna's own plots draw only COMPLETE trials; a sweep marks the trials ASHA stopped PRUNED (their value is the
one at their last evaluation), which under ASHA is most of them. Both pictures here use every trial with a value
and say which ran the full budget.
"""

from __future__ import annotations

import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
from optuna.trial import TrialState

__all__ = ["scored_trials", "plot_history", "plot_importances"]


def scored_trials(study) -> list:
    """Finished and ASHA-stopped trials that have a (first) objective value, in trial order."""
    ok = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.trials if t.state in ok and t.values and np.isfinite(t.values[0])]


def plot_history(study, name: str, maximise: bool):
    """Each trial's objective against its number, hollow where ASHA stopped it (labelled with the step), and the
    best so far over all trials: what the sweep ranks by."""
    trials = scored_trials(study)
    fig, ax = plt.subplots(figsize=(9, 5))
    full = [t for t in trials if t.state == TrialState.COMPLETE]
    cut = [t for t in trials if t.state == TrialState.PRUNED]
    ax.scatter([t.number for t in full], [t.values[0] for t in full], s=40, color="C0", label="ran the full budget")
    ax.scatter([t.number for t in cut], [t.values[0] for t in cut], s=40, facecolors="none", edgecolors="C1",
               label="stopped by ASHA (value at its last step)")
    for t in cut:
        ax.annotate(f"step {t.last_step}", (t.number, t.values[0]),  # a PRUNED value is its last report
                    textcoords="offset points", xytext=(6, -3), fontsize=9, color="C1")
    if trials:
        values = np.array([t.values[0] for t in trials])
        best = np.maximum.accumulate(values) if maximise else np.minimum.accumulate(values)
        ax.step([t.number for t in trials], best, where="post", color="C3", label="best so far")
    ax.set_xlabel("Optuna trial number (MLflow run 'trial N · method')", fontsize=11)
    ax.set_ylabel(name, fontsize=11)
    ax.set_title(f"Optimisation history: {name} at each trial's best checkpoint", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig


def plot_importances(study, name: str):
    """Optuna's fANOVA importances over every scored trial (a copy of the study in which ASHA-stopped trials count
    with their partial value), or None with fewer than two such trials."""
    from optuna.visualization import matplotlib as ovm

    trials = scored_trials(study)
    if len(trials) < 2:
        return None
    quiet = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        copy = optuna.create_study(direction=study.directions[0])
    finally:
        optuna.logging.set_verbosity(quiet)
    copy.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.values[0])
                     for t in trials])
    # Optuna switches matplotlib's global style to ggplot: keep that to this picture
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_param_importances(copy, target_name=name)
    fig = ax.figure
    fig.set_size_inches(9, 5)
    ax.set_title(f"Parameter importances for {name} ({len(trials)} trials, ASHA-stopped ones at their last step)",
                 fontsize=11, loc="left")  # replaces Optuna's own title, which sits on the left
    fig.tight_layout()  # long parameter names would be cut off at the left edge
    return fig
