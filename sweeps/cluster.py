"""Checks for running on a cluster: the launcher file before `ray up`, and the sweep's data as trial nodes see it.

Ray's half is what `ray up` runs before touching a cloud (`prepare_config` then `validate_config`; a private API,
hence Ray's pinned minor version). The project's half: a GPU worker type exists (cloud providers; on-prem Ray
detects GPUs), sweep storage is a shared mount rather than a head-local folder, the dashboard and MLflow never
listen on every interface, and every node starts Ray with token authentication.

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

__all__ = ["check_cluster", "check_data_on_trial_node"]

log = logging.getLogger(__name__)

_HEAD_LOCAL = ("~", "/home", "/root", "/tmp", "/var", "runs", ".")


def check_cluster(path: str | Path) -> dict:
    """The prepared cluster config; ConfigError naming the file and every problem found."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    raw = read_yaml(path, "cluster file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a cluster file is a mapping (cluster_name, provider, ...)")
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
    problems += _project_problems(raw, full)
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
        problems.append("metadata.galaxy_uda_sweeps.storage: missing; set the shared mount every node sees (e.g. /mnt/shared/sweeps)")
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
            problems.append(f"{key}: start Ray with RAY_AUTH_MODE=token so only holders of the cluster token can submit work")
    everything = " ".join(head_cmds + [str(c) for k in ("setup_commands", "head_setup_commands") for c in raw.get(k, [])])
    if re.search(r"--dashboard-host[= ]+0\.0\.0\.0", everything):
        problems.append("head_start_ray_commands: --dashboard-host 0.0.0.0 exposes the dashboard (and job submission) "
                        "on every interface; use 127.0.0.1 and `ray dashboard cluster.yaml`")
    elif head_cmds and not re.search(r"--dashboard-host[= ]+127\.0\.0\.1", everything):
        problems.append("head_start_ray_commands: pass --dashboard-host=127.0.0.1 (Ray's default listens on localhost, "
                        "but say it so a changed default cannot expose it)")
    for cmd in re.findall(r"mlflow server[^\n;&]*", everything):
        if re.search(r"--host[= ]+0\.0\.0\.0", cmd) or "--host" not in cmd:
            problems.append("mlflow server: give --host the head's private address (not 0.0.0.0, not omitted)")
    return problems


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

    ref = ray.remote(_look).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0)).remote(str(path))
    waited = 0.0
    while not ray.wait([ref], timeout=note_every_s)[0]:
        waited += note_every_s
        log.warning("waited %.0f s for a Ray node with %s to check the data on (is the autoscaler starting one? "
                    "`ray status` tells)", waited, resources)
    there = ray.get(ref)
    fix = ("on a cluster, keep data on the mount every node shares (cluster.yaml mounts it at /mnt/shared; "
           "e.g. run.data.root: /mnt/shared/data)")
    if not there["exists"]:
        raise ConfigError(f"{key}: {path} is not there on trial node {there['node']}, although the driver prepared it; {fix}")
    if there["fingerprint"] != fingerprint:
        raise ConfigError(f"{key}: {path} on trial node {there['node']} holds another data set (fingerprint "
                          f"{there['fingerprint']}) than the driver's ({fingerprint}); {fix}")
