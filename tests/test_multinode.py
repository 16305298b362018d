"""A real two-node sweep on one machine: a Ray head and a second Ray node started as separate processes (`ray start`),
a real `mlflow server` on loopback with a database backend and proxied artifacts, and the sweep driven through
`--address`. The head offers no CPUs (as in cluster.yaml), so every trial must run on the second node."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sweep_helpers import write_sweep

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    done = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"


class MlflowServer:
    """A real `mlflow server` on loopback: sqlite backend, artifacts proxied into its own folder."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env, self.port, self.proc = folder, env, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=open(self.folder / "mlflow.log", "a"), stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server did not start: {(self.folder / 'mlflow.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers
            self.proc.wait(30)
            self.proc = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    # Token authentication on every node and for every client, as cluster.yaml sets it up.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    server = MlflowServer(tmp, env)
    _ray("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", "--node-ip-address=127.0.0.1", env=env)
    try:
        _ray("start", f"--address={address}", "--num-cpus=2", "--node-ip-address=127.0.0.1", env=env)
        server.start()
        yield {"address": address, "uri": server.uri, "server": server, "tmp": tmp, "env": env}
    finally:
        server.stop()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_sweep_runs_on_the_second_node_and_logs_to_the_server(cluster, data_root, tiny_folder):
    from mlflow import MlflowClient

    from sweeps.run import open_sweep
    from sweeps.tracking import child_runs

    tmp, env = cluster["tmp"], cluster["env"]
    storage = tmp / "shared" / "sweeps"
    sweep = write_sweep(tmp, data_root, "multinode", search={"num_trials": 2}, baselines=[],
                        tracking={"uri": cluster["uri"], "embedding": "pca", "finalists": 0}, storage={"path": str(storage)})
    # The driver is a separate process, as under `ray job submit`: Ray reads the token settings when it starts.
    done = subprocess.run([str(BIN / "uda-sweep"), "run", str(sweep), "--address", cluster["address"]], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = subprocess.run([sys.executable, "-c", NODES, cluster["address"]], env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.split()
    head, worker = nodes  # printed as: the node without CPUs, then the one with 2

    _, _, state = open_sweep("multinode", storage)
    client = MlflowClient(cluster["uri"])
    runs = child_runs(cluster["uri"], state["experiment_id"], state["parent_run_id"])
    assert len(runs) == 2 and client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    for run in runs:
        assert run.data.tags["ray.node_id"] == worker != head  # the head has no CPUs: every trial ran on node 2
        assert len(client.get_metric_history(run.info.run_id, "source_val/acc")) >= 1
        files = {a.path for a in client.list_artifacts(run.info.run_id, "best")}
        assert "best/evaluation.json" in files  # uploaded from the worker through the server's artifact proxy
    # the server stored the artifacts in its own destination; no client wrote a local artifact folder
    assert any((tmp / "artifacts").rglob("evaluation.json"))
    assert not (tmp / "mlartifacts").exists()


NODES = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
alive = [n for n in ray.nodes() if n["Alive"]]
print(*[n["NodeID"] for n in sorted(alive, key=lambda n: n["Resources"].get("CPU", 0))])
"""


def test_mlflow_server_restart_mid_sweep_loses_no_metrics(cluster, data_root, tiny_folder):
    from mlflow import MlflowClient

    from sweep_helpers import EVERY
    from sweeps.run import open_sweep
    from sweeps.tracking import child_runs

    tmp, env, server = cluster["tmp"], cluster["env"], cluster["server"]
    storage = tmp / "shared" / "restart"
    sweep = write_sweep(tmp, data_root, "restart", search={"num_trials": 2}, baselines=[],
                        run={"train": {"steps": 20 * EVERY, "eval_every": EVERY, "precision": "fp32"}},
                        scheduler={"type": "none"},
                        tracking={"uri": cluster["uri"], "embedding": "pca", "finalists": 0}, storage={"path": str(storage)})
    driver = subprocess.Popen([str(BIN / "uda-sweep"), "run", str(sweep), "--address", cluster["address"]], cwd=tmp,
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "restart.log", "w"))
    client = MlflowClient(cluster["uri"])
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until a trial has logged its first evaluation, then take the server away
        runs = [r for r in client.search_runs(client.search_experiments(filter_string="name = 'restart'")[0].experiment_id)
                if "trial_id" in r.data.tags] if client.search_experiments(filter_string="name = 'restart'") else []
        if any("source_val/acc" in r.data.metrics for r in runs):
            break
        time.sleep(1)
    server.stop()
    time.sleep(8)  # trials keep training and retry their logging meanwhile (MLflow's HTTP retries)
    server.start()
    assert driver.wait(600) == 0, (tmp / "restart.log").read_text()[-3000:]

    _, _, state = open_sweep("restart", storage)
    runs = child_runs(cluster["uri"], state["experiment_id"], state["parent_run_id"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    expected = list(range(EVERY, 20 * EVERY + 1, EVERY))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "source_val/acc")
        assert sorted(m.step for m in history) == expected  # every evaluation logged exactly once: nothing lost or doubled
