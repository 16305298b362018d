"""Checkpoint retention during a sweep and `uda-sweep prune` after it, with real Ray, Optuna and MLflow."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweep_helpers import write_sweep
from sweeps.cli import main
from sweeps.finalists import checkpoint_at, checkpoint_step
from sweeps.prune import restart_points
from sweeps.run import resume_sweep, run_sweep
from sweeps.tracking import child_runs

pytestmark = pytest.mark.usefixtures("local_ray")

STEPS, EVERY = 8, 2  # four evaluations per trial, so retention has something to delete


def _listing(exp_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(exp_dir)) for p in exp_dir.rglob("*"))


def _steps(trial_dir: Path) -> list[int]:
    return sorted(checkpoint_step(c) for c in trial_dir.glob("checkpoint_*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root, tiny_folder):
    work = tmp_path_factory.mktemp("retention")
    path = write_sweep(work, data_root, "kept",
                       run={"train": {"steps": STEPS, "eval_every": EVERY, "precision": "fp32"}},
                       search={"num_trials": 2, "overrides": {"model.width": 8, "optim.batch_size": 16}},
                       scheduler={"type": "none"}, tracking={"embedding": "none", "finalists": 0})
    return run_sweep(path, workdir=work, progress=False), work


def test_a_sweep_keeps_each_trials_best_and_latest_checkpoint(finished):
    summary, _ = finished
    assert summary.finished and len(summary.trials) == 3  # two searched, one baseline
    for row in summary.trials:
        assert row["step"] == STEPS and row["best_step"] > 0
        # four evaluations were checkpointed; the best (what promote exports) and the last are left
        assert _steps(Path(row["path"])) == sorted({row["best_step"], STEPS})
        assert checkpoint_at(Path(row["path"]), row["best_step"]) is not None


def test_prune_refuses_a_running_sweep_then_keeps_only_what_promote_needs(finished, capsys, monkeypatch):
    summary, work = finished
    monkeypatch.chdir(work)
    before = _listing(summary.path)
    with open(summary.path / "driver.lock") as lock:  # a driver is running the sweep
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["prune", "kept"]) == 2
    err = capsys.readouterr().err
    assert "is running" in err and "driver.lock" in err and "nothing was deleted" in err and "Traceback" not in err
    assert main(["prune", "kept", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete" in out and "->" in out
    assert _listing(summary.path) == before  # neither changed anything

    assert main(["prune", "kept"]) == 0
    out = capsys.readouterr().out
    assert "deleted" in out and " -> " in out
    for row in summary.trials:
        assert _steps(Path(row["path"])) == [row["best_step"]]
    assert main(["promote", "kept", "--dry-run"]) == 0  # finds and re-evaluates the best trial's checkpoint
    assert main(["prune", "nope"]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


def test_resume_after_driver_sigkill_with_retention(tmp_path, data_root, tiny_folder, capsys, monkeypatch):
    """Kill the driver when its trial has checkpointed twice since Tune's last snapshot and retention has deleted
    older ones: the checkpoint that snapshot names must still be there, and resume must finish the sweep. The guard
    is out of reach, so no checkpoint is ever a trial's best and only the resume point protects it."""
    # Long enough that the wanted moment comes well before the trial ends (30 steps missed it once in CI): the
    # loop below stops the driver as soon as it does, so more steps cost nothing when it comes early.
    steps = 80
    path = write_sweep(tmp_path, data_root, "killed", baselines=[],
                       run={"train": {"steps": steps, "eval_every": EVERY, "precision": "fp32"}},
                       search={"num_trials": 1, "overrides": {"model.width": 8, "optim.batch_size": 16}},
                       objective={"metric": "label_free/im", "min_source_val_acc": 0.99},
                       scheduler={"type": "none"}, tracking={"embedding": "none", "finalists": 0})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "run", str(path)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp_dir = tmp_path / "runs" / "sweeps" / "killed"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            ready = [t for t, (name, _) in restart_points(exp_dir).items()
                     if name > "checkpoint_000000" and not (exp_dir / t / "checkpoint_000000").exists()
                     and len([c for c in (exp_dir / t).glob("checkpoint_*") if c.name > name]) >= 2]
            if ready:
                break
        else:
            pytest.fail("the trial never got two checkpoints ahead of a snapshot with older ones deleted")
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(driver.pid)], capture_output=True)  # the driver and its Ray
        driver.wait()
    named = restart_points(exp_dir)
    assert named and all((exp_dir / t / name).is_dir() for t, (name, _) in named.items())

    monkeypatch.chdir(tmp_path)
    before = _listing(exp_dir)
    assert main(["prune", "killed"]) == 2  # its checkpoints are what resume continues from
    err = capsys.readouterr().err
    assert "has not finished" in err and "uda-sweep resume killed" in err and "Traceback" not in err
    assert _listing(exp_dir) == before

    summary = resume_sweep("killed", workdir=tmp_path, progress=False)
    assert summary.finished and [r["status"] for r in summary.trials] == ["TERMINATED"]
    (run,) = [c for c in child_runs(summary.tracking_uri, summary.experiment_id, summary.parent_run_id)
              if not c.data.tags.get("orphan")]
    logged = [m.step for m in MlflowClient(summary.tracking_uri).get_metric_history(run.info.run_id, "source_val/acc")]
    assert logged == list(range(EVERY, steps + 1, EVERY))  # continued from the checkpoint; nothing lost or doubled
    row = summary.trials[0]
    assert _steps(Path(row["path"])) == sorted({row["best_step"], steps} - {-1})  # the best, if any, and the last


def test_an_unknown_retention_is_refused_before_anything_starts(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, data_root, "bad", storage={"keep_checkpoints": "best"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "storage.keep_checkpoints" in err and "'best_and_latest' or 'all'" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no runs/, no mlflow.db


def test_retention_keeps_what_the_snapshot_restores_when_its_result_is_a_report_ahead(tmp_path):
    """A snapshot can be written between a report and the registration of its checkpoint: its last result names
    checkpoint 3 (a new best) while Tune would restore from checkpoint 2 (its checkpoint manager's latest), whose own
    state says the best is checkpoint 1. A resume from 2 need not reach 3's best again: 1, 2 and 3 stay."""
    import json

    from ray import cloudpickle
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    from sweeps.finalists import OBJECTIVE_STATE
    from sweeps.prune import keep_best_and_latest

    trial = tmp_path / "trial_a"
    for i in range(4):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        best = {"step": 2 * (i + 1)} if i in (0, 1, 3) else {"step": 4}  # steps 2, 4, 6, 8; 6 was no new best
        (trial / f"checkpoint_00000{i}" / OBJECTIVE_STATE).write_text(json.dumps({"best": best, "step": 2 * (i + 1)}))
    manager = _CheckpointManager(CheckpointConfig())
    for i in range(3):  # checkpoints 0-2 registered; 3 not yet
        manager.register_checkpoint(_TrainingResult(Checkpoint(str(trial / f"checkpoint_00000{i}")), {"step": 2 * i}))
    metadata = {"last_result": {"checkpoint_dir_name": "checkpoint_000003", "best_step": 8},
                "checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": cloudpickle.dumps(manager).hex()}}
    snapshot = {"trial_data": [[json.dumps({"relative_logdir": "trial_a"}), json.dumps(metadata)]]}
    (tmp_path / "experiment_state-2026-12-03_00-00-00.json").write_text(json.dumps(snapshot))

    assert restart_points(tmp_path) == {"trial_a": ("checkpoint_000002", 8)}
    keep_best_and_latest(tmp_path)
    # kept: the best checkpoint 2 records (step 4 = checkpoint 1), what the snapshot restores (2) and what came after
    # it (3, the snapshot's best); deleted: checkpoint 0
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001", "checkpoint_000002", "checkpoint_000003"]
