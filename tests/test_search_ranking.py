"""How TPE (the installed Optuna) ranks the trials ASHA stopped, as the sweep's searcher tells them: a partial value
from a low rung must not count as if it were a full trial's value (issue 17, "searches that save compute")."""

from __future__ import annotations

import optuna
from optuna.samplers._tpe.sampler import _split_trials  # what TPE calls "below" (good) and "above"

from sweeps.run import study_storage
from sweeps.searcher import SweepOptunaSearch


def _lr_space(trial):
    trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)


def test_tpe_ranks_asha_stops_by_budget_before_value(tmp_path):
    search = SweepOptunaSearch(space=_lr_space, metric="best/m", mode="max", storage=study_storage(tmp_path),
                               study_name="s", max_step=300, method="dance")
    for trial_id in ("full", "early_lucky", "late"):
        search.suggest(trial_id)
    reports = {"full": [(100, 0.40), (200, 0.50), (300, 0.55)],  # ran the whole budget
               "early_lucky": [(100, 0.70)],  # a noisy high value at the first rung, then stopped
               "late": [(100, 0.45), (200, 0.52)]}  # stopped at the second rung
    for trial_id, values in reports.items():
        for step, value in values:
            search.on_trial_result(trial_id, {"best/m": value, "step": step})
        search.on_trial_complete(trial_id, {"best/m": values[-1][1], "step": values[-1][0]})
    study = optuna.load_study(study_name="s", storage=study_storage(tmp_path))
    by_number = {t.number: name for t, name in zip(sorted(study.trials, key=lambda t: t.number), reports)}

    def below(n: int) -> list[str]:
        good, _ = _split_trials(study, study.trials, n)
        return sorted(by_number[t.number] for t in good)

    # The finished trial first, then stops by the rung they reached: the early stop's 0.70 ranks last.
    assert below(1) == ["full"]
    assert below(2) == ["full", "late"]
