"""Sweep pieces without Ray: the guarded best-checkpoint objective and the baseline-first searcher."""

from __future__ import annotations

import math

import pytest

from ray.tune.search import Searcher

from sweeps.objective import ObjectiveTracker
from sweeps.searcher import BaselinesFirst, SweepOptunaSearch
from sweeps.trainable import trial_run_config
from uda_core.config import RunConfig


def test_objective_tracks_best_checkpoint_and_guard():
    t = ObjectiveTracker(["label_free/im"], ["max"], min_source_val_acc=0.5)
    r, best = t.update(100, {"label_free/im": 0.9, "source_val/acc": 0.3})  # collapsed source: never best
    assert not best and r["best/label_free/im"] == -math.inf and r["guard_ok"] == 0.0
    r, best = t.update(200, {"label_free/im": 0.4, "source_val/acc": 0.8})
    assert best and r["best/label_free/im"] == 0.4 and r["best_step"] == 200
    r, best = t.update(300, {"label_free/im": 0.2, "source_val/acc": 0.9})  # worse: best stays at step 200
    assert not best and r["best/label_free/im"] == 0.4 and r["objective/label_free/im"] == 0.2
    r, best = t.update(400, {"label_free/im": math.nan, "source_val/acc": 0.9})
    assert not best and r["best_step"] == 200
    resumed = ObjectiveTracker(["label_free/im"], ["max"], 0.5, state=t.state())
    assert resumed.update(500, {"label_free/im": 0.3, "source_val/acc": 0.9})[0]["best/label_free/im"] == 0.4


def test_objective_min_mode_and_secondary_metric_at_primary_best():
    t = ObjectiveTracker(["label_free/entropy", "source_val/acc"], ["min", "max"], 0.0)
    t.update(1, {"label_free/entropy": 1.0, "source_val/acc": 0.9})
    r, _ = t.update(2, {"label_free/entropy": 0.5, "source_val/acc": 0.7})
    assert r["best/label_free/entropy"] == 0.5 and r["best/source_val/acc"] == 0.7  # both from the same checkpoint


class _Recorder(Searcher):
    def __init__(self):
        super().__init__(metric="m", mode="max")
        self.seen, self.n = [], 0

    def suggest(self, trial_id):
        self.n += 1
        return {"x": self.n}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.seen.append(trial_id)


def test_baselines_first_then_searcher_and_kept_out_of_it():
    inner = _Recorder()
    s = BaselinesFirst(inner, ["source_only", "adabn"])
    assert s.suggest("a") == {"baseline": "source_only"}
    assert s.suggest("b") == {"baseline": "adabn"}
    assert s.suggest("c") == {"x": 1}
    for tid in "abc":
        s.on_trial_complete(tid, {"m": 1.0})
    assert inner.seen == ["c"]
    restored = BaselinesFirst(_Recorder(), ["source_only", "adabn"])
    restored.set_state(s.get_state())
    assert restored.suggest("d") == {"x": 1} and restored.baseline_trials == {"a": "source_only", "b": "adabn"}


def _lr_space(trial):  # module level: the searcher's state is pickled
    trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)


def test_optuna_study_speaks_in_training_steps_and_marks_asha_stops_pruned(tmp_path):
    import optuna

    from sweeps.run import study_storage

    def searcher():
        return SweepOptunaSearch(space=_lr_space, metric="best/m", mode="max", storage=study_storage(tmp_path),
                                 study_name="s", max_step=6, method="dance", study_attrs={"mlflow_experiment_id": "7"})

    search = searcher()
    full, stopped, broken = (search.suggest(t) for t in ("ray_a", "ray_b", "ray_c"))
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot, before any trial is told
    assert [c["optuna_trial"] for c in (full, stopped, broken)] == [0, 1, 2] and "optim.lr" in full
    # Ray's own counter (training_iteration) must not be the step; -inf (guard not passed yet) is no value
    search.on_trial_result("ray_a", {"best/m": -math.inf, "step": 2, "training_iteration": 1})
    search.on_trial_result("ray_a", {"best/m": 0.4, "step": 4, "training_iteration": 2})
    search.on_trial_complete("ray_a", {"best/m": 0.5, "step": 6, "training_iteration": 3})  # the last report
    search.on_trial_result("ray_b", {"best/m": 0.3, "step": 2, "training_iteration": 1})
    search.on_trial_complete("ray_b", {"best/m": 0.35, "step": 4, "training_iteration": 2})  # ASHA stopped it
    search.on_trial_complete("ray_c", None, error=True)
    study = optuna.load_study(study_name="s", storage=study_storage(tmp_path))
    a, b, c = sorted(study.trials, key=lambda t: t.number)
    assert a.state == optuna.trial.TrialState.COMPLETE and a.value == 0.5 and a.intermediate_values == {4: 0.4, 6: 0.5}
    assert b.state == optuna.trial.TrialState.PRUNED and b.value == 0.35 and b.intermediate_values == {2: 0.3, 4: 0.35}
    assert b.user_attrs["stopped_at_step"] == 4 and "stopped_at_step" not in a.user_attrs
    assert c.state == optuna.trial.TrialState.FAIL
    assert a.user_attrs == {"ray_trial_id": "ray_a", "mlflow_run_name": "trial 0 · dance"}
    assert study.metric_names == ["best/m"] and study.user_attrs == {"mlflow_experiment_id": "7"}
    # A driver SIGKILLed after those tells but before Tune's next snapshot: the restored searcher hears of the
    # same trials again (a resumed trial re-reports), and must not fail them for being finished.
    again = searcher()
    again.restore(str(tmp_path / "searcher.pkl"))
    again.on_trial_result("ray_b", {"best/m": 0.36, "step": 4})
    again.on_trial_complete("ray_b", {"best/m": 0.36, "step": 4})
    again.on_trial_complete("ray_a", {"best/m": 0.5, "step": 6})
    after = {t.number: (t.state, t.value)
             for t in optuna.load_study(study_name="s", storage=study_storage(tmp_path)).trials}
    assert after[1] == (optuna.trial.TrialState.PRUNED, 0.35) and after[0] == (optuna.trial.TrialState.COMPLETE, 0.5)


def test_study_pictures_count_the_trials_asha_stopped():
    import optuna
    from optuna.distributions import FloatDistribution

    from sweeps.study_plots import plot_history, plot_importances

    study = optuna.create_study(direction="maximize")
    dist = {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    for i, (state, value) in enumerate([("COMPLETE", 0.8), ("PRUNED", 0.5), ("PRUNED", 0.6), ("FAIL", None)]):
        t = study.ask(dist)
        if value is not None:  # a PRUNED trial's value is its last report
            t.report(value, 200 * (i + 1))
        study.tell(t, value if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    fig = plot_history(study, "best/m", maximise=True)
    full, stopped = fig.axes[0].collections[:2]
    assert len(full.get_offsets()) == 1 and len(stopped.get_offsets()) == 2  # Optuna's own plot would show 1
    assert "3 trials" in plot_importances(study, "best/m").axes[0].get_title(loc="left")


def test_trial_config_from_parameters_and_baselines():
    base = RunConfig(method={"name": "dance"}, model={"domain_bn": True}).model_dump()
    cfg = trial_run_config(base, {"optim.lr": 0.01, "method.params.eta_nc": 0.2})
    assert cfg.optim.lr == 0.01 and cfg.method.parsed().eta_nc == 0.2
    so = trial_run_config(base, {"baseline": "source_only"})
    assert so.method.name == "source_only" and so.method.params == {} and not so.model.domain_bn
    assert trial_run_config(base, {"baseline": "adabn"}).model.domain_bn
    assert trial_run_config(base, {"optim.lr": 0.01, "optuna_trial": 4}).optim.lr == 0.01  # the number is no parameter


def test_joint_space_trials_are_named_and_configured_by_their_method(tmp_path):
    """A sweep over several methods: each trial's run config, MLflow run name and `status` row say its method."""
    import optuna

    from search_spaces import search_space
    from sweeps.config import parse_sweep
    from sweeps.run import study_storage
    from sweeps.summary import format_table

    base = RunConfig(method={"name": "dance", "params": {"eta_nc": 0.2}}).model_dump()
    cfg = trial_run_config(base, {"method.name": "adabn", "optim.lr": 0.01})
    assert cfg.method.name == "adabn" and cfg.method.params == {}  # DANCE's settings stay with DANCE
    assert trial_run_config(base, {"method.name": "dance", "method.params.c_m": 0.3}).method.params == {
        "eta_nc": 0.2, "c_m": 0.3}
    search = SweepOptunaSearch(space=search_space(["adabn", "dance"]), metric="best/m", mode="max",
                               sampler=optuna.samplers.RandomSampler(seed=0), storage=study_storage(tmp_path),
                               study_name="s", max_step=6, method="dance")
    configs = [search.suggest(f"ray_{i}") for i in range(8)]
    study = optuna.load_study(study_name="s", storage=study_storage(tmp_path))
    names = {t.number: t.user_attrs["mlflow_run_name"] for t in study.trials}
    assert {names[c["optuna_trial"]] for c in configs} == {f"trial {c['optuna_trial']} · {c['method.name']}"
                                                          for c in configs}
    assert {c["method.name"] for c in configs} == {"adabn", "dance"}
    sweep = parse_sweep({"name": "s", "run": {"method": {"name": "dance"}}, "search": {"space": ["adabn", "dance"]}},
                        "s.yaml")
    rows = [{"trial_id": "t1", "status": "TERMINATED", "kind": "search", "method": "adabn", "step": 6, "best_step": 6,
             "params": {"method.name": "adabn", "optim.lr": 0.01}, "optuna_trial": 0}]
    table = format_table(rows, sweep)
    assert "search · adabn" in table and "name" not in table.splitlines()[0].split()  # not a parameter column


def test_tracking_uri_local_default_and_cluster_rule(tmp_path):
    import pytest

    from sweeps.config import parse_sweep
    from sweeps.run import _tracking_uri
    from uda_core.errors import ConfigError

    sweep = parse_sweep({"name": "s", "run": {}}, "s.yaml")
    # absolute: trials run elsewhere
    assert _tracking_uri(sweep, None, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match="tracking.uri.*MLflow server"):
        _tracking_uri(sweep, "ray://head:10001", tmp_path)  # a local sqlite file is unreachable from other nodes
    remote = parse_sweep({"name": "s", "run": {}, "tracking": {"uri": "http://10.0.0.1:5000"}}, "s.yaml")
    assert _tracking_uri(remote, "auto", tmp_path) == "http://10.0.0.1:5000"


def test_tracking_uri_falls_back_to_the_mlflow_environment(monkeypatch, tmp_path):
    from sweeps.config import parse_sweep
    from sweeps.run import _tracking_uri
    from uda_core.errors import ConfigError

    sweep = parse_sweep({"name": "t", "run": {"method": {"name": "source_only"}}}, "t.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _tracking_uri(sweep, None, tmp_path).startswith("sqlite:///")
    with pytest.raises(ConfigError, match="MLflow server"):
        _tracking_uri(sweep, "auto", tmp_path)  # a cluster sweep cannot log to a local file
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.10:5000")  # what the cluster head gives its jobs
    assert _tracking_uri(sweep, "auto", tmp_path) == "http://10.0.0.10:5000"
    # a local sweep keeps its own store: in-process MLflow calls (set_tracking_uri) also set this variable
    assert _tracking_uri(sweep, None, tmp_path).startswith("sqlite:///")


def test_close_stale_runs_closes_only_running_children_with_tunes_status(tmp_path):
    from mlflow import MlflowClient

    from sweeps.tracking import close_stale_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("stale", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp).info.run_id
    other_parent = client.create_run(exp).info.run_id

    def child(trial_id: str, parent_id: str = parent) -> str:
        return client.create_run(exp, tags={"mlflow.parentRunId": parent_id, "trial_id": trial_id}).info.run_id

    done, errored, unknown, elsewhere = child("a"), child("b"), child("c"), child("d", other_parent)
    client.set_terminated(done, "FINISHED")
    closed = close_stale_runs(uri, exp, parent, {"a": "TERMINATED", "b": "ERROR"})
    assert closed == {errored: "FAILED", unknown: "KILLED"}  # the finished run and the other sweep's are left alone
    assert client.get_run(unknown).data.tags["orphan"] == "true"  # Tune never knew trial c
    assert client.get_run(elsewhere).info.status == "RUNNING" and client.get_run(done).info.status == "FINISHED"
