"""The shipped cluster files pass Ray's launcher validation and the project's checks; each check catches its fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.cli import main
from sweeps.cluster import check_cluster
from uda_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_shipped_cluster_files_pass(name, capsys):
    full = check_cluster(ROOT / name)
    assert full["cluster_name"].startswith("galaxy-uda-sweeps")
    assert main(["cluster-check", str(ROOT / name)]) == 0 and "passes" in capsys.readouterr().out


def _mutated(tmp_path, change, name="cluster.yaml") -> Path:
    raw = yaml.safe_load((ROOT / name).read_text())
    change(raw)
    out = tmp_path / name
    out.write_text(yaml.safe_dump(raw))
    return out


def _sub(key, old, new):
    def change(raw):
        raw[key] = [c.replace(old, new) for c in raw[key]]
    return change


@pytest.mark.parametrize("change, message", [
    (lambda r: r["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
     "not of type 'integer'"),  # Ray's check
    (lambda r: r.update(workers=3), "Ray's launcher refuses it"),
    (lambda r: r["available_node_types"]["gpu_worker"]["resources"].pop("GPU"), "no worker type with GPU"),
    (lambda r: r["metadata"]["galaxy_uda_sweeps"].update(storage="runs/sweeps"), "local to one node"),
    (lambda r: r["metadata"]["galaxy_uda_sweeps"].update(storage="/home/ubuntu/sweeps"), "local to one node"),
    (lambda r: r.pop("metadata"), "storage: missing"),
    (_sub("head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"), "every interface"),
    (_sub("head_start_ray_commands", "--host $(hostname -I | awk '{print $1}')", "--host 0.0.0.0"), "mlflow server"),
    (_sub("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""),
     "worker_start_ray_commands: start Ray with RAY_AUTH_MODE=token"),
    (lambda r: r.pop("cluster_name"), "cluster_name: missing"),
    (_sub("head_start_ray_commands", "--app-name basic-auth ", ""),
     "mlflow server: runs without authentication.* --app-name basic-auth"),
    (_sub("head_start_ray_commands", "MLFLOW_AUTH_ADMIN_PASSWORD=$(", "MLFLOW_AUTH_ADMIN_PASSWORD=hunter2 X=$("),
     "head_start_ray_commands: MLFLOW_AUTH_ADMIN_PASSWORD=... writes a password into the cluster file"),
    (lambda r: r["setup_commands"].append("export MLFLOW_TRACKING_PASSWORD='hunter2'"),
     "setup_commands: MLFLOW_TRACKING_PASSWORD=... writes a password"),
    (_sub("worker_start_ray_commands", "MLFLOW_TRACKING_PASSWORD=$(~/mlflow-secret password)",
          "MLFLOW_TRACKING_PASSWORD=$MLFLOW_PW"),
     "worker_start_ray_commands: `ray start` does not set MLFLOW_TRACKING_PASSWORD, so trials on this node get 401"),
    (_sub("head_start_ray_commands", "MLFLOW_AUTH_ADMIN_PASSWORD=$(~/mlflow-secret password) &&", ""),
     "head_start_ray_commands: `mlflow server` does not set MLFLOW_AUTH_ADMIN_PASSWORD"),
    (lambda r: r["file_mounts"].update({"~/.mlflow/credentials": "~/.mlflow/credentials"}),
     "file_mounts: ~/.mlflow/credentials: ~/.mlflow/credentials copies MLflow's credentials file"),
    (lambda r: r["setup_commands"].append(
        "printf '[mlflow]\\nmlflow_tracking_password = %s\\n' \"$(~/mlflow-secret password)\" > ~/.mlflow/credentials"),
     "setup_commands: `printf .* writes MLflow's credentials file"),
    (lambda r: r["worker_start_ray_commands"].insert(0, "set -x"), "worker_start_ray_commands: `set -x...` traces"),
])
def test_each_fault_is_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_cluster(_mutated(tmp_path, change))
    assert "cluster.yaml" in str(e.value)
    if "credentials" in message or "does not set" in message:  # the fix: the secret store, in the start command
        assert "from your secret store in the same shell command" in str(e.value)


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_cluster_check_refuses_credentials_on_disk(tmp_path, capsys, name):
    """The former design: MLflow's credentials file copied to every node, the server's admin read from it."""
    def on_disk(raw):
        raw["file_mounts"]["~/.mlflow/credentials"] = "~/.mlflow/credentials"
        raw["head_start_ray_commands"] = [c.replace("$(~/mlflow-secret ", "$(read_from_file ")
                                          for c in raw["head_start_ray_commands"]]
        raw["worker_start_ray_commands"] = [c.replace("MLFLOW_TRACKING_PASSWORD=$(~/mlflow-secret password) && ", "")
                                            for c in raw["worker_start_ray_commands"]]

    assert main(["cluster-check", str(_mutated(tmp_path, on_disk, name))]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (Ray's autoscaler logs to a stream of an earlier test)
    assert last.startswith(f"error: {tmp_path / name}: file_mounts: ~/.mlflow/credentials: ")
    assert [line for line in err.splitlines() if line.startswith("error:")] == [last]
    assert "worker_start_ray_commands: `ray start` does not set MLFLOW_TRACKING_PASSWORD" in last
    assert "head_start_ray_commands" not in last  # a command substitution is the store's business
    assert "README \"Run on a cluster\"" in last


def test_on_prem_file_refuses_node_types(tmp_path):
    bad = _mutated(tmp_path, lambda r: r.update(available_node_types={"w": {"resources": {}, "node_config": {}}}),
                   "cluster.local.yaml")
    with pytest.raises(ConfigError, match="not supported for on-premise"):
        check_cluster(bad)


def test_data_check_refuses_data_a_trial_node_cannot_see(local_ray, tiny_folder, tmp_path):
    """The local Ray's trial worker is another process on this machine: this tests the check, not the network."""
    from sweeps.cluster import check_data_on_trial_node
    from uda_core.data.store import read_manifest

    fingerprint = read_manifest(tiny_folder)["fingerprint"]
    check_data_on_trial_node("run.data.root", tiny_folder, fingerprint, {"cpu": 1})  # there, the same data set: silent

    with pytest.raises(ConfigError, match=r"run.data.root: .*nowhere is not there on trial node .*/mnt/shared"):
        check_data_on_trial_node("run.data.root", tmp_path / "nowhere", fingerprint, {"cpu": 1})
    another = rf"run.data.path: .* another data set \(fingerprint {fingerprint}\) than the driver's \(xyz\)"
    with pytest.raises(ConfigError, match=another):
        check_data_on_trial_node("run.data.path", tiny_folder, "xyz", {"cpu": 1})
