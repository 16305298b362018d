"""The sweep's searchers: Optuna as its users see it in optuna-dashboard, and the baselines handed out first.

`SweepOptunaSearch` is Ray's OptunaSearch with the study told what the sweep knows: intermediate values at
training steps (Ray's own counter is the report number), the last report included, trials that ASHA stopped
before the full budget marked PRUNED (their value is their last report, and TPE ranks them below finished trials,
later stops above earlier ones), the objective's name, and on each trial the Ray trial id and MLflow run name.

`BaselinesFirst` hands out the baseline trials (source_only, AdaBN with their defaults) first, then delegates:
they run in the same sweep, on the same data and budget, so the result can be read against them; they are never
shown to Optuna, so they cannot bias the search.
"""

from __future__ import annotations

import math
import warnings

from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import METHOD_KEY

from .names import OPTUNA_TRIAL, search_run_name

__all__ = ["BaselinesFirst", "SweepOptunaSearch"]


class SweepOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_step: int, method: str, study_attrs: dict | None = None, **kwargs):
        self._max_step, self._method, self._study_attrs = max_step, method, dict(study_attrs or {})
        self._reported_step: dict[str, int] = {}
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._ot_study.set_metric_names(self.metric if isinstance(self.metric, list) else [self.metric])
        for key, value in self._study_attrs.items():
            self._ot_study.set_user_attr(key, value)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if config is None:
            return None
        trial = self._ot_trials[trial_id]
        trial.set_user_attr("ray_trial_id", trial_id)
        # A joint space's trial chose its method (search_spaces/joint.py); otherwise it is the sweep's.
        trial.set_user_attr("mlflow_run_name", search_run_name(trial.number, config.get(METHOD_KEY, self._method)))
        return {**config, OPTUNA_TRIAL: trial.number}

    def _multi_objective(self) -> bool:
        return isinstance(self.metric, list)

    def _already_told(self, trial_id: str) -> bool:
        """Whether the study holds this trial as finished. After a driver SIGKILL the restored searcher (saved
        with Tune's last snapshot) can miss a tell the journal already has; telling it again would be an error,
        and Tune would then fail and retry a finished trial."""
        if trial_id in self._completed_trials:
            return True
        if self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._multi_objective() or trial_id not in self._ot_trials:
            return  # Optuna keeps no intermediate values for several objectives
        value, step = result.get(self.metric), result.get("step")
        if value is None or step is None or not math.isfinite(value):
            return  # -inf: no checkpoint has passed the source-accuracy guard yet
        if trial_id in self._completed_trials or step <= self._reported_step.get(trial_id, -1):
            return  # already reported (Tune repeats the last result in on_trial_complete)
        try:
            self._ot_trials[trial_id].report(float(value), int(step))
        except UpdateFinishedTrialError:  # told before a driver SIGKILL (see _already_told); no storage read per report
            self._completed_trials.add(trial_id)
            return
        self._reported_step[trial_id] = int(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._ot_trials or self._already_told(trial_id):
            return
        if result and not error:
            self.on_trial_result(trial_id, result)  # Tune gives the last report only here
        step = (result or {}).get("step")
        stopped_early = bool(result) and not error and step is not None and step < self._max_step
        if not stopped_early:
            return super().on_trial_complete(trial_id, result=result, error=error)
        trial = self._ot_trials[trial_id]
        trial.set_user_attr("stopped_at_step", int(step))
        if self._multi_objective():  # a PRUNED trial holds no values: keep the partial ones, marked above
            return super().on_trial_complete(trial_id, result=result, error=error)
        self._ot_study.tell(trial, state=TrialState.PRUNED)  # its value: the last intermediate one
        self._completed_trials.add(trial_id)


class BaselinesFirst(Searcher):
    def __init__(self, searcher: Searcher, baselines: list[str]):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.pending = list(baselines)
        self.baseline_trials: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self.pending:
            name = self.pending.pop(0)
            self.baseline_trials[trial_id] = name
            return {"baseline": name}
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.baseline_trials:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.baseline_trials:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves wrapper searchers (those with a `.searcher`) by get_state/set_state and the innermost one by
    # save/restore, as it does for its own ConcurrencyLimiter.
    def get_state(self) -> dict:
        return {"pending": list(self.pending), "baseline_trials": dict(self.baseline_trials)}

    def set_state(self, state: dict) -> None:
        self.pending, self.baseline_trials = list(state["pending"]), dict(state["baseline_trials"])

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
