"""A Ray Tune searcher wrapper that hands out the baseline trials first, then delegates to the real searcher.

Baselines (source_only, AdaBN with their defaults) run in the same sweep, on the same data and budget, so the
sweep's result can be read against them; they are never shown to Optuna, so they cannot bias the search.
"""

from __future__ import annotations

from ray.tune.search import Searcher

__all__ = ["BaselinesFirst"]


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
