"""Which MLflow store a command uses, and the local file behind it, worked out without importing MLflow.

MLflow takes seconds to import; commands that only read a store (`predict`, `rollback`) check it here first, so a
wrong folder or URI fails at once. `sweeps.tracking` re-exports these functions.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from uda_core.errors import ConfigError

__all__ = ["default_tracking_uri", "local_store_path", "missing_store", "existing_store"]


def default_tracking_uri(workdir: Path | None = None) -> str:
    """The embedded store: sqlite in the working directory, as an absolute path (Ray trials run in other dirs)."""
    return f"sqlite:///{((workdir or Path.cwd()) / 'mlflow.db').resolve()}"


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local store (sqlite database, file: or plain path); None for a server."""
    scheme = urlparse(uri).scheme
    if scheme.split("+")[0] == "sqlite":  # sqlite:///rel.db, sqlite:////abs.db, sqlite+pysqlite:///...
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        return Path(database).resolve() if database and database != ":memory:" else None
    if scheme == "file":
        return Path(url2pathname(urlparse(uri).path)).resolve()
    return Path(url2pathname(uri)).resolve() if scheme == "" else None


def missing_store(uri: str) -> str | None:
    """Why `uri` names a local store that does not exist (MLflow would create an empty one on first use), or None."""
    path = local_store_path(uri)
    if path is not None and not path.exists():
        return f"no MLflow store at {path} (tracking URI {uri}); nothing was created there"
    return None


def existing_store(uri: str) -> str:
    """`uri` for a command that only reads it: MLflow creates a local store on first use, so a missing one
    would leave an empty mlflow.db behind and then say nothing is registered there."""
    if problem := missing_store(uri):
        raise ConfigError(f"{problem}. Pass --tracking-uri of the store the sweep wrote to (e.g. "
                          "sqlite:////abs/path/mlflow.db), set MLFLOW_TRACKING_URI, or run from the folder the sweep "
                          "ran in (it holds mlflow.db)")
    return uri
