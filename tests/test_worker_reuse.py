"""Reused worker processes (resources.reuse_workers): real Ray, Optuna and MLflow. Trials run one after another in one
process, and each still logs to its own MLflow run, ASHA's stops included."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from ray.tune import ExperimentAnalysis

from sweep_helpers import EVERY, STEPS, write_sweep
from sweeps.run import run_sweep
from sweeps.tracking import child_runs

pytestmark = pytest.mark.usefixtures("local_ray")


def test_trials_share_one_worker_and_keep_their_own_runs(tmp_path, data_root, tiny_folder):
    path = write_sweep(tmp_path, data_root, "reuse", search={"num_trials": 3, "seed": 1},
                       scheduler={"type": "asha", "grace_period": EVERY, "reduction_factor": 2},
                       resources={"concurrency": 1}, tracking={"embedding": "none", "finalists": 0})
    summary = run_sweep(path, workdir=tmp_path, progress=False)
    assert summary.finished
    results = ExperimentAnalysis(str(summary.path)).trial_dataframes
    assert len(results) == 4  # the baseline and 3 searched trials
    assert len({int(pid) for df in results.values() for pid in df["pid"]}) == 1  # one worker process ran them all

    client = MlflowClient(summary.tracking_uri)
    runs = {c.data.tags["trial_id"]: c for c in child_runs(summary.tracking_uri, summary.experiment_id,
                                                           summary.parent_run_id)}
    assert sorted(runs) == sorted(results)  # one run per trial, none swallowed by another
    for trial_id, df in results.items():
        run = runs[trial_id]
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "source_val/acc")
        # exactly this trial's evaluations, with the values it reported to Tune
        assert {m.step: m.value for m in history} == pytest.approx(dict(zip(df["step"], df["source_val/acc"])))
        last = int(df["step"].max())
        assert (run.data.tags.get("stopped_early") == "true") == (last < STEPS)
