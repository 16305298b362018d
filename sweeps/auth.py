"""Credentials for an MLflow tracking server behind MLflow's basic-auth app (`mlflow server --app-name basic-auth`).

They come from the environment, never from a file: MLflow's client sends MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD, which the user exports from a secret store (e.g. AWS Secrets Manager) and each cluster
node sets from its own in the command that starts Ray, so the raylet and every trial worker inherit them and no
secret travels through Ray, where Tune could log it. Nothing here imports MLflow: `refusal` runs on any error.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

__all__ = ["USERNAME", "PASSWORD", "HOW", "refusal", "password_in_uri"]

USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
HOW = (f"export {USERNAME} and {PASSWORD} from your secret store, e.g. {PASSWORD}=$(aws secretsmanager "
       "get-secret-value --secret-id galaxy-uda-sweeps/mlflow --query SecretString --output text | jq -r .password) "
       "(README \"Run on a cluster\"); never write the password in a file")


def _given() -> str:
    """Which credentials this process sends (never the password)."""
    if os.environ.get(USERNAME):
        return f"user {os.environ[USERNAME]!r} from {USERNAME}" + ("" if os.environ.get(PASSWORD) else
                                                                   f", {PASSWORD} unset")
    return f"no credentials ({USERNAME} unset)"


def refusal(error: BaseException) -> str | None:
    """The one-line message for a tracking server refusing this process (MLflow's 401/403), None for other errors."""
    code = getattr(error, "error_code", None)  # MlflowException's, without importing MLflow
    request = str(error).split(". Response body")[0]  # MLflow's "API request to endpoint ... failed with ... 401"
    if code == "UNAUTHENTICATED":
        return f"the MLflow tracking server refused the credentials ({request}; sent: {_given()}); {HOW}"
    if code == "PERMISSION_DENIED":
        return (f"the MLflow tracking server denied this to {_given()} ({request}); ask its admin for EDIT or MANAGE "
                "permission on the experiment or registered model, or use the sweep's own credentials")
    return None


def password_in_uri(uri: str, where: str) -> str | None:
    """Why `uri` (given at `where`) must not carry a password (`user:password@host`), None if it carries none.
    The tracking URI is stored in the sweep's state, its MLflow runs, Tune's trial configs and catalogues."""
    try:
        parts = urlsplit(uri)
        has_password = parts.password is not None
    except ValueError:  # not a URL at all: other checks say so
        return None
    if not has_password:
        return None
    shown = uri.replace(f":{parts.password}@", ":***@", 1)
    database = "give the database's password through its client's variable (e.g. PGPASSWORD) from your secret store"
    fix = HOW if parts.scheme in ("http", "https") else database
    return (f"{where}: {shown} has a password in it, which would be stored in the sweep's files, MLflow and logs; "
            f"drop `user:password@` from the URI and {fix}")
