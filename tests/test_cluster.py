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
    (lambda r: r["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "not of type 'integer'"),  # Ray's check
    (lambda r: r.update(workers=3), "Ray's launcher refuses it"),
    (lambda r: r["available_node_types"]["gpu_worker"]["resources"].pop("GPU"), "no worker type with GPU"),
    (lambda r: r["metadata"]["galaxy_uda_sweeps"].update(storage="runs/sweeps"), "local to one node"),
    (lambda r: r["metadata"]["galaxy_uda_sweeps"].update(storage="/home/ubuntu/sweeps"), "local to one node"),
    (lambda r: r.pop("metadata"), "storage: missing"),
    (_sub("head_start_ray_commands", "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"), "every interface"),
    (_sub("head_start_ray_commands", "--host $(hostname -I | awk '{print $1}')", "--host 0.0.0.0"), "mlflow server"),
    (_sub("worker_start_ray_commands", "RAY_AUTH_MODE=token ", ""), "worker_start_ray_commands: start Ray with RAY_AUTH_MODE=token"),
    (lambda r: r.pop("cluster_name"), "cluster_name: missing"),
])
def test_each_fault_is_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_cluster(_mutated(tmp_path, change))
    assert "cluster.yaml" in str(e.value)


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
    with pytest.raises(ConfigError, match=rf"run.data.path: .* another data set \(fingerprint {fingerprint}\) than the driver's \(xyz\)"):
        check_data_on_trial_node("run.data.path", tiny_folder, "xyz", {"cpu": 1})
