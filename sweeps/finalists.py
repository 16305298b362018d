"""Log the models of a sweep's trials to their MLflow child runs: the best few (finalists) after a sweep, and any
trial `uda-sweep promote` registers.

`log_model` costs seconds (environment capture), so only finalists get one. The model is an exported classifier
(uda_core.inference: safetensors weights + JSON config) served by `pyfunc_model.py` as code: loading never
unpickles anything.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .config import SweepConfig

__all__ = ["log_finalists", "log_trial_model", "model_signature", "checkpoint_at", "trial_run"]

log = logging.getLogger(__name__)
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ["galaxy-uda-sweeps", "torch", "safetensors", "mlflow"]


def checkpoint_at(trial_path: Path, step: int) -> Path | None:
    """The trial's Tune checkpoint folder saved at `step`, if it still exists."""
    from uda_core.train import CHECKPOINT_FILE

    for ckpt in sorted(Path(trial_path).glob("checkpoint_*")):
        f = ckpt / CHECKPOINT_FILE
        if f.exists() and int(torch.load(f, map_location="cpu", weights_only=True)["step"]) == step:
            return ckpt
    return None


def trial_run(client, experiment_id: str, trial_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.trial_id = '{trial_id}'")
    return runs[0] if runs else None


def model_signature(classifier_dir: Path):
    """(signature, input example) of an exported classifier's pyfunc model; `views` is a call-time parameter."""
    from mlflow.models import infer_signature

    from uda_core.inference import Classifier

    from .pyfunc_model import to_frame

    clf = Classifier.load(classifier_dir)
    m = clf.meta
    example = np.zeros((2, len(m["bands"]), m["stamp_px"], m["stamp_px"]), np.float32)
    return infer_signature(example, to_frame(clf.predict(example, views=1), clf.class_names, clf.vote_tree), params={"views": 8}), example


def log_trial_model(client, tracking_uri: str, run, checkpoint: Path, step: int) -> str:
    """Log the classifier at `checkpoint` as a pyfunc model of `run`; returns its model URI. Idempotent per step."""
    import mlflow

    from uda_core.inference import export_classifier

    if run.data.tags.get("model_step") == str(step) and run.data.tags.get("model_uri"):
        return run.data.tags["model_uri"]  # logged before (by the sweep's summary or an earlier promote)
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "classifier"
        export_classifier(checkpoint, folder)
        signature, example = model_signature(folder)
        try:
            with mlflow.start_run(run_id=run.info.run_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(PYFUNC_CODE), artifacts={"classifier": str(folder)},
                    signature=signature, input_example=example, pip_requirements=REQUIREMENTS)
        finally:  # start_run's exit marks the run FINISHED (or FAILED on error): put back the trial's own status
            client.set_terminated(run.info.run_id, run.info.status)
    client.set_tag(run.info.run_id, "model_step", str(step))
    client.set_tag(run.info.run_id, "model_uri", info.model_uri)
    return info.model_uri


def log_finalists(sweep: SweepConfig, exp_dir: Path, state: dict, rows: list[dict]) -> list[str]:
    import mlflow

    from .summary import ranked_rows

    client = mlflow.MlflowClient(state["tracking_uri"])
    logged = []
    for r in [r for r in ranked_rows(rows, sweep) if r["path"]][: sweep.tracking.finalists]:
        ckpt = checkpoint_at(Path(r["path"]), r["best_step"])
        run = trial_run(client, state["experiment_id"], r["trial_id"])
        if ckpt is None or run is None:
            log.warning("trial %s: no checkpoint at its best step %s or no MLflow run; model not logged", r["trial_id"], r["best_step"])
            continue
        logged.append(log_trial_model(client, state["tracking_uri"], run, ckpt, r["best_step"]))
        client.set_tag(run.info.run_id, "finalist", "true")
    return logged
