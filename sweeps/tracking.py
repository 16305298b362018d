"""Everything the sweep writes to MLflow: one experiment per sweep, a parent run, one child run per trial.

The trial owns its child run (not Ray's MLflowLoggerCallback): the run is found again by its `trial_id` tag when a
trial restarts or a sweep resumes, so no run is duplicated, and artifacts are logged from the node the trial ran
on, before each `tune.report` (code after a trial's last report does not run when ASHA stops it). The driver
closes whatever was left RUNNING when the sweep ends. This module and `registry` are the only ones importing mlflow.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from uda_core.errors import ConfigError

from .tracking_uri import default_tracking_uri, existing_store, missing_store  # noqa: F401 (light, re-exported)

__all__ = ["default_tracking_uri", "existing_store", "read_client", "check_access", "check_sweep_run",
           "open_experiment", "SweepRun", "TrialRun", "child_runs", "close_stale_runs", "TUNE_TO_MLFLOW"]

log = logging.getLogger(__name__)

NOTE = "mlflow.note.content"  # the markdown description MLflow shows on a run's or experiment's page
MAX_NOTE = 5000  # MLflow's tag value limit on some stores
# MLflow 3 opens an experiment in its GenAI view (traces) unless the experiment says it is model training.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"

# Ray Tune trial status -> MLflow run status, for runs a killed process left RUNNING.
TUNE_TO_MLFLOW = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """All metrics of one step in as few calls as MLflow allows (log_batch takes up to 1000 entries)."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i : i + 500])


def _end_quietly(client: MlflowClient, run_id: str, status: str) -> None:
    """set_terminated without the two "View run/experiment at <url>" lines MLflow prints for each run it ends on a
    server: from a 1,000-trial sweep they would flood the driver's log. The parent run's link is still printed."""
    var = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    before = os.environ.get(var)
    os.environ[var] = "true"
    try:
        client.set_terminated(run_id, status)
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


def open_experiment(uri: str, name: str, artifact_root: Path | None) -> str:
    """Get or create the sweep's experiment on the driver (trials must not race to create it); returns its id.

    A local store gets an absolute artifact root; through a server the server decides (proxied artifacts).
    """
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore`) "
                               "or give the sweep another tracking.experiment")
        if EXPERIMENT_KIND not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return exp.experiment_id
    location = None
    if artifact_root is not None and not uri.startswith(("http://", "https://")):
        location = Path(artifact_root).resolve().as_uri()
    note = {NOTE: "Hyperparameter sweeps of `uda-sweep`: each parent run `sweep <name>` is one sweep; its child runs "
                  "are the trials (`trial N · method` is Optuna's trial N) and the baselines (`baseline · method`). "
                  "The parent run's description names the best trial and the pictures to look at."}
    return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING, **note})


def check_access(uri: str, where: str) -> None:
    """Stops a sweep before it creates anything when the tracking server `uri` (given at `where`) has a password in it
    (ConfigError: the URI is stored with the sweep), does not answer (ConfigError after one try, not
    MLflow's minutes of retries), or refuses this process's credentials (MlflowException 401/403, which `uda-sweep`
    names, see sweeps/auth.py)."""
    from .auth import password_in_uri

    if problem := password_in_uri(uri, where):
        raise ConfigError(problem)
    if problem := store_problem(uri):
        raise ConfigError(f"{where}: {problem}; start it, or give the address of one that runs")
    MlflowClient(uri).search_experiments(max_results=1)


def store_problem(uri: str) -> str | None:
    """Why the store `uri` cannot be used now, each caller adding its own fix: a local store that does not exist, or
    a server that does not answer one quick try (MLflow's own client retries for minutes). None if it can."""
    if problem := missing_store(uri):
        return problem
    if uri.startswith(("http://", "https://")) and (why := _unreachable(uri)) is not None:
        return f"the MLflow server {uri} does not answer ({why})"
    return None


def _unreachable(uri: str) -> str | None:
    """Why the server at `uri` does not answer one quick try of /health (MLflow's own client retries for minutes),
    or None if it answers. TLS errors are left to MLflow's client, which has its own CA and certificate settings."""
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10)
    except urllib.error.HTTPError:
        return None  # it answers (the auth app or a proxy may guard /health)
    except urllib.error.URLError as e:
        return None if isinstance(e.reason, ssl.SSLError) else str(e)
    except ssl.SSLError:
        return None
    except OSError as e:
        return str(e)
    return None


def check_sweep_run(uri: str, run_id: str, sweep: str) -> None:
    """ConfigError unless the store at `uri` answers and holds the sweep's parent run. A resume against a server that
    is down (or serves another database) would otherwise fail every trial, each after minutes of HTTP retries."""
    from mlflow.exceptions import MlflowException

    fix = ("if the head was replaced, resume on the new head, whose MLflow server must serve the sweep's backend "
           "store (on the shared mount) and whose MLFLOW_TRACKING_URI names that server")
    if problem := store_problem(uri):
        raise ConfigError(f"sweep {sweep!r}: {problem}; if its server is down, start it; {fix}")
    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        from .auth import refusal

        if refused := refusal(e):  # not a missing run: this process's credentials
            raise ConfigError(refused) from None
        raise ConfigError(f"sweep {sweep!r}: the MLflow store {uri} has no parent run {run_id} of this sweep "
                          f"({e.message}); {fix}") from None


def read_client(uri: str) -> MlflowClient:
    """A client of the existing store `uri`, for commands that only read it (and move an alias): a local store
    must exist (else MLflow creates an empty one), a server must answer (else MLflow retries for minutes), and
    a URI MLflow cannot use is one error, not a traceback."""
    from mlflow.exceptions import MlflowException

    existing_store(uri)  # a missing local store, with the advice for commands that only read one
    if problem := store_problem(uri):
        raise ConfigError(f"{problem}; start it (`mlflow server ...`) or check --tracking-uri / MLFLOW_TRACKING_URI")
    try:
        return MlflowClient(uri, registry_uri=uri)
    except MlflowException as e:
        raise ConfigError(f"tracking URI {uri!r}: {e.message.strip().splitlines()[0]} Give --tracking-uri "
                          "sqlite:////abs/path/mlflow.db or http://host:5000") from None


class SweepRun:
    """The parent run: the sweep file, the search space, provenance; at the end the best trial and summaries."""

    def __init__(self, uri: str, experiment_id: str, run_id: str | None = None, name: str = "",
                 tags: dict | None = None):
        self.client = MlflowClient(uri)
        self.uri, self.experiment_id = uri, experiment_id
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=name, tags=tags or {}).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_start(self, params: dict[str, Any], texts: dict[str, str], dicts: dict[str, dict]) -> None:
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        for name, text in texts.items():
            self.client.log_text(self.run_id, text, name)
        for name, d in dicts.items():
            self.client.log_dict(self.run_id, d, name)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        _log_metrics(self.client, self.run_id,
                     {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}, 0)

    def log_figure(self, fig, name: str) -> None:
        self.client.log_figure(self.run_id, fig, name, save_kwargs={"bbox_inches": "tight"})  # no label cut off

    def log_table(self, df, name: str) -> None:
        # Written as text, not mlflow.log_table: that appends to an existing table, so a resumed sweep's
        # summary would list every trial twice.
        self.client.log_text(self.run_id, df.to_json(orient="records", indent=1), name)
        self.client.log_text(self.run_id, df.to_csv(index=False), name.rsplit(".", 1)[0] + ".csv")

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def set_note(self, markdown: str) -> None:
        """The run's description: the first thing the MLflow UI shows on its page."""
        self.client.set_tag(self.run_id, NOTE, markdown[:MAX_NOTE])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def child_runs(uri: str, experiment_id: str, parent_run_id: str, status: str | None = None) -> list:
    """The sweep's trial runs, or only those with MLflow `status`: the server's cost grows with the runs returned
    (bench/driver_scale: all of 1,000 runs take seconds)."""
    client = MlflowClient(uri)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([experiment_id], filter_string=query, max_results=50_000)


def close_stale_runs(uri: str, experiment_id: str, parent_run_id: str, tune_status: dict[str, str]) -> dict[str, str]:
    """End the children a killed trial or driver left RUNNING, with the status Ray Tune recorded for the trial."""
    client = MlflowClient(uri)
    closed = {}
    for run in child_runs(uri, experiment_id, parent_run_id, status="RUNNING"):
        trial_id = run.data.tags.get("trial_id", "")
        status = TUNE_TO_MLFLOW.get(tune_status.get(trial_id, ""), "KILLED")
        if tune_status and trial_id not in tune_status:
            # Started just before a driver died, after Tune's last snapshot: Tune re-ran it under a new id.
            client.set_tag(run.info.run_id, "orphan", "true")
        _end_quietly(client, run.info.run_id, status)
        closed[run.info.run_id] = status
    return closed


@functools.cache
def _worker_client(uri: str) -> MlflowClient:
    """One client per worker process: a reused worker (resources.reuse_workers) opens its store once, not per trial.
    Only the client is shared; runs are always addressed by id, never through MLflow's per-process active run."""
    return MlflowClient(uri)


class TrialRun:
    """A trial's child run, reopened (same run id) if the trial restarts from a checkpoint."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
                 params: dict[str, Any], tags: dict[str, str]):
        self.client = _worker_client(uri)
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.trial_id = '{trial_id}' and tags.mlflow.parentRunId = '{parent_run_id}'"
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "source_val/acc")
            self.logged_step = max((m.step for m in history), default=-1)
            self.restarts = int(found[0].data.tags.get("restarts", "0")) + 1
            self.previous_failure = found[0].data.tags.get("failure")
            self.client.set_tag(self.run_id, "restarts", str(self.restarts))
        else:
            all_tags = {"mlflow.parentRunId": parent_run_id, "trial_id": trial_id, **tags}
            self.run_id = self.client.create_run(experiment_id, run_name=trial_name, tags=all_tags).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
            self.logged_step, self.restarts, self.previous_failure = -1, 0, None

    def log_evaluation(self, step: int, metrics: dict[str, float], files: dict[str, Any],
                       best_files: dict[str, Any]) -> None:
        """Metrics as step `step`; `files` under evaluations/step_N/ and `best_files` under best/.

        File values are dicts (written as JSON) or callables `fn(path)` that draw a picture. A step already logged
        before a restart is skipped, so a resumed trial's metric history has no duplicates.
        """
        if step <= self.logged_step:
            return
        _log_metrics(self.client, self.run_id, metrics, step)
        for folder, content in ((f"evaluations/step_{step:07d}", files), ("best", best_files)):
            if not content:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                for name, item in content.items():
                    path = Path(tmp) / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if callable(item):
                        item(path)
                    else:
                        path.write_text(json.dumps(item, indent=1))
                self.client.log_artifacts(self.run_id, tmp, folder)
        self.logged_step = step

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def clear_tags(self, keys) -> None:
        for k in keys:
            try:
                self.client.delete_tag(self.run_id, k)
            except Exception:  # the tag was never set
                pass

    def close(self, status: str) -> None:
        try:
            _end_quietly(self.client, self.run_id, status)
        except Exception as e:  # the driver closes stale runs after the sweep; never mask the trial's own error
            log.warning("could not close MLflow run %s: %s", self.run_id, e)
