"""Names a user sees in MLflow, optuna-dashboard and Ray for one trial, and the links between them.

Kept free of heavy imports: trials (on any node) and the driver both use it.
"""

from __future__ import annotations

__all__ = ["OPTUNA_TRIAL", "search_run_name", "baseline_run_name", "trial_params", "runs_url", "run_url"]

# Config key the searcher adds to a search trial's config: its Optuna trial number (never a run-config key:
# those are dotted).
OPTUNA_TRIAL = "optuna_trial"


def search_run_name(number: int | str, method: str) -> str:
    return f"trial {number} · {method}"  # optuna-dashboard shows the same trial as "Trial <number>"


def baseline_run_name(method: str) -> str:
    return f"baseline · {method}"


def trial_params(config: dict) -> dict:
    """A search trial's parameters: its Tune config less the baseline marker and the Optuna trial number."""
    return {k: v for k, v in config.items() if k not in ("baseline", OPTUNA_TRIAL)}


def _ui_root(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"  # where `mlflow ui --backend-store-uri <sqlite uri>` serves a local store


def runs_url(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI page that lists the sweep's runs. MLflow 3 opens experiments in its GenAI view (traces)
    unless the workflow type says otherwise; this link lands on the runs table."""
    return f"{_ui_root(tracking_uri)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(experiment_id: str, run_id: str) -> str:
    """A link to one run, relative to the MLflow UI (hash-routed): usable in run and model descriptions."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"
