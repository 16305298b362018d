"""Checks for running on a cluster: the launcher file before `ray up`, and the sweep's data as trial nodes see it.

Ray's half is what `ray up` runs before touching a cloud (`prepare_config` then `validate_config`; a private API,
hence Ray's pinned minor version). The project's half: a GPU worker type exists (cloud providers; on-prem Ray
detects GPUs), sweep storage is a shared mount rather than a head-local folder, the dashboard and MLflow never
listen on every interface, every node starts Ray with token authentication, MLflow runs its basic-auth app, and
MLflow's credentials come from a secret store into the environment of the command that starts Ray (or the server)
on each node: no password is written in the cluster file, nor copied or written to a node's disk, nor echoed.

Before a cluster sweep starts, `check_data_on_trial_node` asks a node that can run a trial whether it sees the data
the driver prepared: data left on the head's disk would otherwise fail (or be regenerated) in every trial.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

from uda_core.config import read_yaml
from uda_core.errors import ConfigError

from .auth import PASSWORD

__all__ = ["check_cluster", "check_data_on_trial_node"]

log = logging.getLogger(__name__)

_HEAD_LOCAL = ("~", "/home", "/root", "/tmp", "/var", "runs", ".")
# A password given in the file itself (`VAR=literal`; `VAR=$(...)` or `VAR=$OTHER` read it from elsewhere).
_LITERAL_PASSWORD = re.compile(r"\b(\w*password)\s*=\s*(?![\"']?\$)(?=\S)", re.IGNORECASE)
# MLflow's client credentials file (~/.mlflow/credentials), or a command writing its password key.
_CREDENTIALS_FILE = re.compile(r"\.mlflow/credentials|\bmlflow_tracking_password\s*=")
# Shell tracing prints every expanded command, passwords included, into Ray's logs.
_TRACING = re.compile(r"\bset\s+(-\w*x|-o\s+xtrace)|\b(ba)?sh\s+-\w*x")


def check_cluster(path: str | Path) -> dict:
    """The prepared cluster config; ConfigError naming the file and every problem found."""
    path = Path(path)
    raw = read_yaml(path, "cluster file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a cluster file is a mapping (cluster_name, provider, ...)")
    import jsonschema  # Ray only for a real cluster file: a wrong path fails in a second
    from ray.autoscaler._private.util import prepare_config, validate_config
    problems = []
    if "cluster_name" not in raw:  # Ray fills in "default", which would collide with other clusters
        problems.append("cluster_name: missing")
    try:
        full = prepare_config(copy.deepcopy(raw))
        validate_config(full)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"{path}: Ray's launcher refuses it: {where}: {e.message}") from None
    except Exception as e:  # ValueError, RuntimeError, click.ClickException: Ray's own words
        raise ConfigError(f"{path}: Ray's launcher refuses it: {getattr(e, 'message', None) or e}") from None
    problems += _project_problems(raw, full) + _credentials_problems(raw)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return full


def _project_problems(raw: dict, full: dict) -> list[str]:
    problems = []
    if raw["provider"]["type"] != "local":
        head = full.get("head_node_type")
        gpu_types = [n for n, t in full.get("available_node_types", {}).items()
                     if n != head and t.get("resources", {}).get("GPU", 0) >= 1 and t.get("max_workers", 0) >= 1]
        if not gpu_types:
            problems.append("available_node_types: no worker type with GPU >= 1 and max_workers >= 1; trials need GPUs")
    meta = (raw.get("metadata") or {}).get("galaxy_uda_sweeps") or {}
    storage = str(meta.get("storage", ""))
    if not storage:
        problems.append("metadata.galaxy_uda_sweeps.storage: missing; set the shared mount every node sees "
                        "(e.g. /mnt/shared/sweeps)")
    elif not storage.startswith("/") or storage.startswith(_HEAD_LOCAL):
        problems.append(f"metadata.galaxy_uda_sweeps.storage: {storage!r} is local to one node; multi-node Tune needs "
                        "a mount shared by every node (NFS/EFS, e.g. /mnt/shared/sweeps)")
    head_cmds = [str(c) for c in raw.get("head_start_ray_commands", [])]
    worker_cmds = [str(c) for c in raw.get("worker_start_ray_commands", [])]
    for key, cmds in (("head_start_ray_commands", head_cmds), ("worker_start_ray_commands", worker_cmds)):
        starts = [c for c in cmds if re.search(r"\bray start\b", c)]
        if not starts:
            problems.append(f"{key}: no `ray start` command")
        elif not all("RAY_AUTH_MODE=token" in c for c in starts):
            problems.append(f"{key}: start Ray with RAY_AUTH_MODE=token so only holders of the cluster token can "
                            "submit work")
    setup_cmds = [str(c) for k in ("setup_commands", "head_setup_commands") for c in raw.get(k, [])]
    everything = " ".join(head_cmds + setup_cmds)
    if re.search(r"--dashboard-host[= ]+0\.0\.0\.0", everything):
        problems.append("head_start_ray_commands: --dashboard-host 0.0.0.0 exposes the dashboard (and job submission) "
                        "on every interface; use 127.0.0.1 and `ray dashboard cluster.yaml`")
    elif head_cmds and not re.search(r"--dashboard-host[= ]+127\.0\.0\.1", everything):
        problems.append("head_start_ray_commands: pass --dashboard-host=127.0.0.1 (Ray's default listens on localhost, "
                        "but say it so a changed default cannot expose it)")
    for cmd in re.findall(r"mlflow server[^\n;&]*", everything):
        if re.search(r"--host[= ]+0\.0\.0\.0", cmd) or "--host" not in cmd:
            problems.append("mlflow server: give --host the head's private address (not 0.0.0.0, not omitted)")
        if not re.search(r"--app-name[= ]+basic-auth\b", cmd):
            problems.append("mlflow server: runs without authentication, so anyone on the network can delete runs or "
                            "move the champion alias; start it with --app-name basic-auth and its admin from "
                            "your secret store, as the shipped cluster.yaml does")
    return problems


def _credentials_problems(raw: dict) -> list[str]:
    """MLflow's credentials reach each node's processes from a secret store, through the environment only."""
    problems = [f"file_mounts: {target}: {source} copies MLflow's credentials file, a password on every node's disk; "
                f"remove it and {_from_store(PASSWORD)}"
                for target, source in (raw.get("file_mounts") or {}).items()
                if _CREDENTIALS_FILE.search(f"{target} {source}")]
    for key, cmds in raw.items():
        if key.endswith("_commands"):
            for cmd in map(str, cmds or []):
                problems += _command_problems(key, cmd)
    return problems


def _command_problems(key: str, cmd: str) -> list[str]:
    shown = f"`{cmd[:60]}...`"
    literal = {m.group(1) for m in _LITERAL_PASSWORD.finditer(cmd)} - {"mlflow_tracking_password"}
    problems = [f"{key}: {var}=... writes a password into the cluster file; {_from_store(var)}, and change the "
                "password: it may have been shared" for var in sorted(literal)]
    if _CREDENTIALS_FILE.search(cmd):
        problems.append(f"{key}: {shown} writes MLflow's credentials file, a password on the node's disk; remove it "
                        f"and {_from_store(PASSWORD)}")
    if _TRACING.search(cmd):
        problems.append(f"{key}: {shown} traces the shell, printing the password into Ray's logs; remove set -x")
    if re.search(r"\bray start\b", cmd) and not _sets_from_store(PASSWORD, cmd) and PASSWORD not in literal:
        problems.append(f"{key}: `ray start` does not set {PASSWORD}, so trials on this node get 401 from MLflow; "
                        f"{_from_store(PASSWORD)}")
    admin = "MLFLOW_AUTH_ADMIN_PASSWORD"
    if re.search(r"\bmlflow server\b", cmd) and not _sets_from_store(admin, cmd) and admin not in literal:
        problems.append(f"{key}: `mlflow server` does not set {admin}, so its admin keeps MLflow's published default "
                        f"password; {_from_store(admin)}")
    return problems


def _sets_from_store(var: str, cmd: str) -> bool:
    return re.search(rf"\b{var}=[\"']?\$\(", cmd) is not None


def _from_store(var: str) -> str:
    return (f"read it from your secret store in the same shell command, `{var}=$(...) && export {var}`, as the "
            "shipped cluster files do (README \"Run on a cluster\")")


def _look(path: str) -> dict:
    """Runs on a trial node: does `path` exist there, and which data set (manifest fingerprint) is it?"""
    import ray

    from uda_core.data.store import read_manifest
    from uda_core.errors import UdaError

    try:
        fingerprint = read_manifest(Path(path))["fingerprint"]
    except (UdaError, OSError):  # no (valid) manifest: real data given by run.data.path, or a broken copy
        fingerprint = None
    return {"node": ray.util.get_node_ip_address(), "exists": Path(path).exists(), "fingerprint": fingerprint}


def check_data_on_trial_node(key: str, path: Path, fingerprint: str | None, resources: dict,
                             note_every_s: float = 60.0) -> None:
    """ConfigError unless a node with a trial's `resources` sees `path` (the `key` of the sweep file) holding the data
    set the driver prepared (`fingerprint`, None for data without a manifest). Waits, saying so, while the
    autoscaler starts such a node."""
    import ray

    look = ray.remote(_look).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0))
    ref = look.remote(str(path))
    waited = 0.0
    while not ray.wait([ref], timeout=note_every_s)[0]:
        waited += note_every_s
        log.warning("waited %.0f s for a Ray node with %s to check the data on (is the autoscaler starting one? "
                    "`ray status` tells)", waited, resources)
    there = ray.get(ref)
    fix = ("on a cluster, keep data on the mount every node shares (cluster.yaml mounts it at /mnt/shared; "
           "e.g. run.data.root: /mnt/shared/data)")
    if not there["exists"]:
        raise ConfigError(f"{key}: {path} is not there on trial node {there['node']}, although the driver prepared "
                          f"it; {fix}")
    if there["fingerprint"] != fingerprint:
        raise ConfigError(f"{key}: {path} on trial node {there['node']} holds another data set (fingerprint "
                          f"{there['fingerprint']}) than the driver's ({fingerprint}); {fix}")
