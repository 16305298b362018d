"""Log the models of a sweep's trials to their MLflow child runs: the best few (finalists) after a sweep, and any
trial `uda-sweep promote` registers.

`log_model` costs seconds (environment capture), so only finalists get one. The model is an exported classifier
(uda_core.inference: safetensors weights + JSON config) served by `pyfunc_model.py` as code: loading never
unpickles anything.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uda_core.evaluation import names as N

from .config import SweepConfig

__all__ = ["log_finalists", "log_trial_model", "TrialModel", "model_metric_keys", "link_metrics_to_model",
           "model_signature", "checkpoint_at", "checkpoint_step", "trial_run"]

log = logging.getLogger(__name__)
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ["galaxy-uda-sweeps", "torch", "safetensors", "mlflow"]
OBJECTIVE_STATE = "objective.json"  # the trainable writes it into each checkpoint: the step and the trial's best


def checkpoint_step(ckpt: Path) -> int | None:
    """The training step a Tune checkpoint folder was saved at; None if it cannot be read (an incomplete folder)."""
    import json

    try:  # the trial's small objective file names the step; the model file is read only where it is missing
        return int(json.loads((ckpt / OBJECTIVE_STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    import torch  # here, not at the top: `promote` checks its arguments before torch loads

    from uda_core.train import CHECKPOINT_FILE

    try:
        return int(torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["step"])
    except Exception:  # missing, truncated or foreign: nobody can restart or promote from it
        return None


def checkpoint_at(trial_path: Path, step: int) -> Path | None:
    """The trial's Tune checkpoint folder saved at `step`, if it still exists."""
    for ckpt in sorted(Path(trial_path).glob("checkpoint_*")):
        if checkpoint_step(ckpt) == step:
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
    frame = to_frame(clf.predict(example, views=1), clf.class_names, clf.vote_tree)
    return infer_signature(example, frame, params={"views": 8}), example


@dataclass(frozen=True)
class TrialModel:
    """A trial's logged model: `uri` loads it, `model_id` links registry versions and metrics to it."""

    uri: str
    model_id: str


def model_metric_keys(sweep: SweepConfig, run) -> list[str]:
    """The run's metrics worth showing on its model's page: the objective, the source accuracy guard, the
    label-free scores and, when the target has labels, the oracle target accuracy and H-score."""
    wanted = {*sweep.objective.metrics, N.SOURCE_VAL_ACC, N.ORACLE_ACC, N.ORACLE_H}
    return sorted(k for k in run.data.metrics if k in wanted or k.startswith(N.LABEL_FREE_PREFIX))


def link_metrics_to_model(client, run_id: str, model_id: str, step: int, keys) -> None:
    """Attach the run's metrics at `step` to its logged model. Each is re-logged with the key,
    value, timestamp and step of the run's own entry, which the store already holds: the model gains the metric,
    the run's history gains no duplicate point (a new timestamp would add one). Safe to repeat."""
    from mlflow.entities import Metric

    linked = []
    for key in keys:
        at_step = [m for m in client.get_metric_history(run_id, key) if m.step == step]
        if at_step:
            m = at_step[-1]
            linked.append(Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id))
    if linked:
        client.log_batch(run_id, metrics=linked)


def _logged_before(run, step: int) -> TrialModel | None:
    """The model an earlier call logged at `step` (by the sweep's summary or an earlier promote), from run tags."""
    tags = run.data.tags
    uri = tags.get("model_uri")
    if tags.get("model_step") != str(step) or not uri:
        return None
    # Runs tagged before the model_id tag existed: an MLflow 3 model URI is models:/<model id>. Without an id
    # (a runs:/ URI) the model is logged again, so that versions and metrics can be linked to it.
    model_id = tags.get("model_id") or (uri.removeprefix("models:/") if uri.startswith("models:/m-") else None)
    return TrialModel(uri, model_id) if model_id else None


def log_trial_model(client, tracking_uri: str, run, checkpoint: Path, step: int, metric_keys=()) -> TrialModel:
    """Log the classifier at `checkpoint` as a pyfunc model of `run` and link the run's `metric_keys` at `step` to
    it. Idempotent per step. The run keeps its status and end time: logging a model does not lengthen a trial."""
    import mlflow
    from mlflow.entities import RunTag

    from uda_core.inference import export_classifier

    logged = _logged_before(run, step)
    if logged is None:
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
            finally:  # start_run's exit ends the run now (FINISHED, or FAILED on error): put back the trial's own
                client.set_terminated(run.info.run_id, run.info.status, end_time=run.info.end_time)
        logged = TrialModel(info.model_uri, info.model_id)
        client.log_batch(run.info.run_id, tags=[RunTag("model_step", str(step)), RunTag("model_uri", logged.uri),
                                                RunTag("model_id", logged.model_id)])
    link_metrics_to_model(client, run.info.run_id, logged.model_id, step, metric_keys)
    return logged


def log_finalists(sweep: SweepConfig, exp_dir: Path, state: dict, rows: list[dict]) -> list[str]:
    import mlflow

    from .summary import ranked_rows

    client = mlflow.MlflowClient(state["tracking_uri"])
    logged = []
    for r in [r for r in ranked_rows(rows, sweep) if r["path"]][: sweep.tracking.finalists]:
        ckpt = checkpoint_at(Path(r["path"]), r["best_step"])
        run = trial_run(client, state["experiment_id"], r["trial_id"])
        if ckpt is None or run is None:
            log.warning("trial %s: no checkpoint at its best step %s or no MLflow run; model not logged",
                        r["trial_id"], r["best_step"])
            continue
        model = log_trial_model(client, state["tracking_uri"], run, ckpt, r["best_step"], model_metric_keys(sweep, run))
        logged.append(model.uri)
        client.set_tag(run.info.run_id, "finalist", "true")
    return logged
