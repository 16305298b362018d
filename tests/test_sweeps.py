"""Sweeps end to end with real Ray (local, 2 CPUs), real Optuna and a real MLflow store (sqlite + artifacts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

import sweep_helpers
from sweep_helpers import STEPS, EVERY, write_sweep
from sweeps.cli import main
from sweeps.run import resume_sweep, run_sweep, study_storage
from sweeps.tracking import child_runs

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root, tiny_folder):
    work = tmp_path_factory.mktemp("sweep")
    # Searches two methods at once (search_spaces/joint.py): each trial chooses DANCE or AdaBN, then its settings.
    path = write_sweep(work, data_root, "nest", search={"space": ["dance", "adabn"]})
    summary = run_sweep(path, workdir=work, progress=False)
    return summary, work, path


def test_sweep_nests_trial_runs_under_one_parent(finished):
    summary, work, _ = finished
    assert summary.finished
    client = MlflowClient(summary.tracking_uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.fingerprint"] != "unknown"
    assert "git.revision" in parent.data.params and "version.ray" in parent.data.params
    children = child_runs(summary.tracking_uri, summary.experiment_id, summary.parent_run_id)
    assert len(children) == 4  # 3 searched + 1 baseline, each exactly once
    assert {c.data.tags["trial_id"] for c in children} == {r["trial_id"] for r in summary.trials}
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["kind"] for c in children) == ["baseline", "search", "search", "search"]
    parent_files = {a.path for a in client.list_artifacts(summary.parent_run_id)}
    assert {"sweep.yaml", "trials.json", "trials.csv", "search_space.json", "optuna"} <= parent_files
    plots = {a.path for a in client.list_artifacts(summary.parent_run_id, "optuna")}
    assert "optuna/optimization_history.png" in plots
    # ORACLE selection analysis of the sweep's own checkpoints (the pair is simulated, so target labels exist)
    assert "selection/criteria_vs_oracle_ORACLE.png" in {a.path for a in client.list_artifacts(summary.parent_run_id,
                                                                                               "selection")}
    regrets = {k: v for k, v in parent.data.metrics.items() if k.startswith("oracle/selection/regret_h/")}
    assert "oracle/selection/regret_h/label_free/dev" in regrets and all(0 <= v <= 1 for v in regrets.values())


def test_every_evaluation_has_metrics_and_confusion_matrices(finished):
    summary, _, _ = finished
    client = MlflowClient(summary.tracking_uri)
    for child in child_runs(summary.tracking_uri, summary.experiment_id, summary.parent_run_id):
        history = client.get_metric_history(child.info.run_id, "source_val/acc")
        steps = [m.step for m in history]
        assert steps == sorted(set(steps)) and steps[0] == EVERY  # each evaluation once, as a step
        assert "label_free/snd" in child.data.metrics and "oracle/target_test/h_score" in child.data.metrics
        for step in steps:
            folder = f"evaluations/step_{step:07d}/confusion"
            files = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(child.info.run_id, folder)}
            assert files == {"source_test.json", "source_test.png", "oracle_target_test.json", "oracle_target_test.png"}
        local = client.download_artifacts(child.info.run_id,
                                          f"evaluations/step_{steps[-1]:07d}/confusion/source_test.json")
        conf = json.loads(Path(local).read_text())
        assert sum(map(sum, conf["matrix"])) > 0
        best = {a.path for a in client.list_artifacts(child.info.run_id, "best")}
        assert "best/embedding.png" in best and "best/evaluation.json" in best


def test_study_seeded_with_defaults_and_persisted(finished):
    summary, work, _ = finished
    storage = study_storage(summary.path)
    (study_summary,) = optuna.get_all_study_summaries(storage)
    assert study_summary.study_name == "nest"  # the sweep's name: one study per sweep folder
    study = optuna.load_study(study_name=study_summary.study_name, storage=storage)
    assert len(study.trials) == 3  # the baseline never reached Optuna
    first = min(study.trials, key=lambda t: t.number)
    assert first.params["method.name"] == "dance"  # the run's method, with its settings, comes first
    assert first.params["method.params.eta_nc"] == 0.05 and first.params["optim.lr"] == 0.002


def test_mlflow_and_optuna_show_the_same_trials_linked_and_named(finished):
    """What the two UIs display, read back through their own client APIs."""
    summary, _, _ = finished
    client = MlflowClient(summary.tracking_uri)
    runs = {c.data.tags["trial_id"]: c for c in child_runs(summary.tracking_uri, summary.experiment_id,
                                                           summary.parent_run_id)}
    study = optuna.load_study(study_name="nest", storage=study_storage(summary.path))
    assert study.metric_names == ["best/label_free/im"]  # not "Objective 0"
    assert study.user_attrs["mlflow_parent_run_id"] == summary.parent_run_id
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray_id) == {r["trial_id"] for r in summary.trials if r["kind"] == "search"}
    for row in summary.trials:
        run = runs[row["trial_id"]]
        # one objective name for baselines and search trials: they share the runs table's column
        assert "best/label_free/im" in run.data.metrics and not any(k.startswith("baseline_") for k in run.data.metrics)
        assert row["mlflow_run_id"] == run.info.run_id and row["mlflow_run_name"] == run.info.run_name
        if row["kind"] == "baseline":
            assert run.info.run_name == f"baseline · {row['method']}" and "optuna_trial" not in run.data.tags
            continue
        trial = by_ray_id[row["trial_id"]]
        method = trial.params["method.name"]  # the method this trial chose; only its own parameters were searched
        assert run.info.run_name == f"trial {trial.number} · {method}" == trial.user_attrs["mlflow_run_name"]
        assert run.data.tags["method"] == run.data.params["method.name"] == row["method"] == method
        assert ("method.params.eta_nc" in trial.params) == (method == "dance")
        assert run.data.tags["optuna_trial"] == str(trial.number) == str(row["optuna_trial"])
        assert "optuna_trial" not in run.data.params  # the number is a link, not a searched parameter
        # Optuna's steps are training steps, the last report included; ASHA's early stops are PRUNED
        assert (set(trial.intermediate_values) <= {EVERY, 2 * EVERY, STEPS}
                and max(trial.intermediate_values) == row["step"])
        stopped = row["step"] < STEPS
        assert trial.state == (optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.COMPLETE)
        assert (run.data.tags.get("stopped_early") == "true") == stopped
    assert {r["method"] for r in summary.trials if r["kind"] == "search"} == {"dance", "adabn"}
    exp = client.get_experiment(summary.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # lands on runs, not GenAI traces
    note = client.get_run(summary.parent_run_id).data.tags["mlflow.note.content"]
    best = summary.best
    assert (f"runs/{best['mlflow_run_id']}" in note and best["mlflow_run_name"] in note
            and "baseline · source_only" in note and "Methods **dance, adabn**" in note)
    csv = client.download_artifacts(summary.parent_run_id, "trials.csv")
    assert {"optuna_trial", "mlflow_run_id", "mlflow_run_name"} <= set(Path(csv).read_text().splitlines()[0].split(","))


def test_best_trial_and_finalist_model(finished):
    summary, work, _ = finished
    best = summary.best
    assert best is not None and best["kind"] == "search"
    scores = [r["best/label_free/im"] for r in summary.trials
              if r["kind"] == "search" and r["best/label_free/im"] is not None]
    assert best["best/label_free/im"] == max(scores)
    client = MlflowClient(summary.tracking_uri)
    (run,) = client.search_runs([summary.experiment_id], filter_string=f"tags.trial_id = '{best['trial_id']}'")
    assert run.data.tags.get("finalist") == "true"
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(summary.tracking_uri)
    model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
    meta = model.metadata.signature.inputs.to_dict()
    out = model.predict(np.zeros((3, 3, 32, 32), np.float32))
    assert len(out) == 3 and "predicted_class" in out and meta
    # Promoted with the method it chose; re-evaluated by that method (not the run's), it scores what it did in the sweep
    from sweeps.registry import promote

    promoted = promote("nest", workdir=work)
    # The registry by its URI: an earlier test module may have left MLflow's global registry URI elsewhere.
    registry = MlflowClient(summary.tracking_uri, registry_uri=summary.tracking_uri)
    (version,) = registry.search_model_versions("name = 'nest'")
    assert promoted.trial_id == best["trial_id"] and version.tags["method"] == best["method"]
    assert promoted.score == pytest.approx(best["best/label_free/im"], abs=1e-4)


def test_status_and_refusing_to_overwrite(finished, capsys, monkeypatch):
    summary, work, path = finished
    monkeypatch.chdir(work)
    assert main(["status", "nest"]) == 0
    out = capsys.readouterr().out
    assert "4/4 trials finished" in out and "source_only" in out and "oracle" in out
    assert main(["run", str(path)]) == 2  # same name again: refused, nothing touched
    assert "already exists" in capsys.readouterr().err
    assert main(["status", "nope"]) == 2


def test_one_driver_per_sweep_and_no_resume_from_a_moved_folder(finished):
    import fcntl

    from uda_core.errors import ConfigError

    summary, work, _ = finished
    with open(summary.path / "driver.lock", "w") as lock:  # another driver holds the sweep
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="already being run by another driver"):
            resume_sweep("nest", workdir=work, progress=False)
    state_file = summary.path / "sweep_state.json"
    original = state_file.read_text()
    try:
        state_file.write_text(json.dumps({**json.loads(original), "path": "/elsewhere/nest"}))
        with pytest.raises(ConfigError, match="has moved"):
            resume_sweep("nest", workdir=work, progress=False)
    finally:
        state_file.write_text(original)


def test_failing_and_diverging_trials_do_not_stop_the_sweep(tmp_path, data_root, tiny_folder):
    path = write_sweep(tmp_path, data_root, "flaky", tracking={"embedding": "none", "finalists": 0})
    summary = run_sweep(path, workdir=tmp_path, trainable=sweep_helpers.flaky_trial, progress=False)
    status = {r["trial_id"]: r["status"] for r in summary.trials}
    assert sorted(status.values()) == ["ERROR", "ERROR", "TERMINATED", "TERMINATED"]
    children = child_runs(summary.tracking_uri, summary.experiment_id, summary.parent_run_id)
    assert len(children) == 4  # a retried trial (max_retries 1) reuses its run instead of adding one
    runs = {c.data.tags["trial_id"]: c for c in children}
    failures = sorted(r.data.tags.get("failure", "") for r in runs.values() if r.info.status == "FAILED")
    assert failures == ["RuntimeError", "diverged"]
    assert all(runs[t].info.status == "FINISHED" for t, s in status.items() if s == "TERMINATED")
    storage = study_storage(summary.path)
    (s,) = optuna.get_all_study_summaries(storage)
    states = sorted(t.state.name for t in optuna.load_study(study_name=s.study_name, storage=storage).trials)
    # the diverged trial FAILs; of the other two, one may be stopped by ASHA (PRUNED) before the full budget
    assert states in (["COMPLETE", "COMPLETE", "FAIL"], ["COMPLETE", "FAIL", "PRUNED"])
    assert summary.best is not None and summary.best["status"] == "TERMINATED"


def test_resume_after_driver_sigkill(tmp_path, data_root, tiny_folder):
    """Kill the driver (and its local Ray) mid-sweep; resume finishes with every trial run once in MLflow."""
    path = write_sweep(tmp_path, data_root, "killed",
                       run={"train": {"steps": 40, "eval_every": 10, "precision": "fp32"}},
                       search={"num_trials": 4, "overrides": {"model.width": 8, "optim.batch_size": 16}},
                       scheduler={"type": "none"}, tracking={"embedding": "none", "finalists": 0})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}  # its own Ray
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", str(path)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait for one finished trial and one with a checkpoint still running
            time.sleep(2)
            exp_dir = tmp_path / "runs" / "sweeps" / "killed"
            done = list(exp_dir.glob("trial_*/checkpoint_000003"))
            # (a running trial's older checkpoints may already be deleted: storage.keep_checkpoints)
            partial = [d for d in exp_dir.glob("trial_*")
                       if any(d.glob("checkpoint_*")) and not (d / "checkpoint_000003").exists()]
            if done and partial:
                break
        else:
            pytest.fail("the driver never reached the middle of the sweep")
    finally:
        # The driver and the local Ray it started (its whole session), as a power cut would.
        subprocess.run(["pkill", "-KILL", "-s", str(driver.pid)], capture_output=True)
        driver.wait()
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "killed"]
    before = {r.data.tags.get("trial_id") for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags}

    summary = resume_sweep("killed", workdir=tmp_path, progress=False)
    assert summary.finished
    runs = child_runs(summary.tracking_uri, summary.experiment_id, summary.parent_run_id)
    # A trial started after Tune's last snapshot is unknown to the restored sweep: its run is closed as an orphan.
    orphans = [c for c in runs if c.data.tags.get("orphan") == "true"]
    assert all(c.info.status == "KILLED" for c in orphans)
    children = [c for c in runs if c not in orphans]
    ids = [c.data.tags["trial_id"] for c in children]
    assert len(ids) == len(set(ids)) == 5 and sorted(ids) == sorted(r["trial_id"] for r in summary.trials)
    assert before <= {c.data.tags["trial_id"] for c in runs}  # nothing lost, nothing duplicated
    assert all(c.info.status == "FINISHED" for c in children)
    assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "source_val/acc")]
        assert steps == [10, 20, 30, 40]  # a resumed trial continues; no step logged twice
    assert any(int(c.data.tags.get("restarts", "0")) >= 1 for c in children)  # some trial did continue
    table = json.loads(Path(client.download_artifacts(summary.parent_run_id, "trials.json")).read_text())
    assert sorted(r["trial_id"] for r in table) == sorted(ids)


def test_multi_objective_sweep_on_a_user_defined_survey(tmp_path, data_root, tiny_folder):
    # The target is a survey the user defined in a YAML file (SDSS-like, better seeing): trials get its definition.
    survey = {"name": "sdss_like", "pixel_arcsec": 0.396, "bands": ["g", "r", "z"], "fwhm_arcsec": [1.2, 1.1, 1.0],
              "m5": [22.2, 22.2, 20.5], "zeropoint_e_per_s": [26.3, 26.5, 24.7], "exposure_s": [53.9, 53.9, 53.9]}
    (tmp_path / "sdss_like.yaml").write_text(yaml.safe_dump(survey))
    data = {"size": "tiny", "root": str(data_root), "target": str(tmp_path / "sdss_like.yaml")}
    path = write_sweep(tmp_path, data_root, "multi", baselines=[], run={"data": data},
                       objective={"metric": ["label_free/entropy", "source_val/acc"], "min_source_val_acc": 0.0},
                       search={"num_trials": 2, "overrides": {"model.width": 8, "optim.batch_size": 16}},
                       tracking={"embedding": "none", "finalists": 0})
    summary = run_sweep(path, workdir=tmp_path, progress=False)
    assert summary.finished and len(summary.trials) == 2
    stored = yaml.safe_load((summary.path / "sweep.yaml").read_text())["run"]["data"]["target"]
    assert stored["name"] == "sdss_like" and stored["fwhm_arcsec"] == [1.2, 1.1, 1.0]
    assert any(p.name.startswith("universal-decals-sdss_like-tiny-") for p in data_root.iterdir())
    storage = study_storage(summary.path)
    (s,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=s.study_name, storage=storage)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert all(len(t.values) == 2 for t in study.trials)
    tags = MlflowClient(summary.tracking_uri).get_run(summary.parent_run_id).data.tags
    assert tags["pareto_trial_ids"] and set(tags["pareto_trial_ids"].split(",")) <= {r["trial_id"]
                                                                                     for r in summary.trials}
