"""A real two-node sweep on one machine: a Ray head and a second Ray node started as separate processes (`ray start`),
a real `mlflow server` on loopback with a database backend and proxied artifacts, and the sweep driven through
`--address`. The head offers no CPUs (as in cluster.yaml), so every trial must run on the second node."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from sweep_helpers import write_sweep

BIN = Path(sys.executable).parent
# As cluster.yaml starts the server: without MLflow's job runners (8 processes, over 1 GiB, a CPU-busy start).
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            stdout=open(self.folder / "mlflow.log", "a"), stderr=subprocess.STDOUT, env={**self.env, **SERVER_ENV},
            start_new_session=True)
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


class RayHead:
    """A Ray head without CPUs (as in cluster.yaml) in a process session of its own, so that it can be killed whole
    (and only it: `ray stop` would also stop every other Ray on the machine, a user's running sweep included)."""

    def __init__(self, port: int, env: dict, log: Path):
        self.address = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", "--block"],
            stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:  # the GCS listens: nodes and drivers can join
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.5)
        pytest.fail(f"Ray head did not start: {log.read_text()[-2000:]}")


def kill_sessions(*leaders: subprocess.Popen) -> None:
    """SIGKILL every process in the sessions these processes lead, all at once, as a machine failure would."""
    pids = {p.pid for p in leaders}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(p.pid) in pids:
                p.kill()
    for leader in leaders:
        leader.wait(30)


class RayNode:
    """A Ray worker node in a process session of its own (`ray start --block`), so that a test can take this node
    away, and only this one, as a machine failure would: raylet, its agents and its trial workers all at once."""

    def __init__(self, address: str, env: dict, cpus: int, log: Path):
        known = set(alive_nodes(address, env))
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", f"--address={address}", f"--num-cpus={cpus}",
             "--node-ip-address=127.0.0.1", "--block"],
            stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            new = [n for n in alive_nodes(address, env) if n not in known]
            if new:
                self.node_id = new[0]
                return
            time.sleep(1)
        pytest.fail(f"Ray node did not join: {log.read_text()[-2000:]}")

    def kill(self) -> None:
        kill_sessions(self.proc)


def alive_nodes(address: str, env: dict) -> list[str]:
    """Alive node ids, the CPU-less head first."""
    done = subprocess.run([sys.executable, "-c", NODES, address], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


NODES = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
alive = [n for n in ray.nodes() if n["Alive"]]
print(*[n["NodeID"] for n in sorted(alive, key=lambda n: n["Resources"].get("CPU", 0))])
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    # Token authentication on every node and for every client, as cluster.yaml sets it up.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    server = MlflowServer(tmp, env)
    head = RayHead(_free_port(), env, tmp / "head.log")
    nodes: list[RayNode] = []

    def add_node() -> RayNode:
        nodes.append(RayNode(head.address, env, 2, tmp / "nodes.log"))
        return nodes[-1]

    try:
        info = {"address": head.address, "uri": server.uri, "server": server, "tmp": tmp, "env": env,
                "add_node": add_node}
        info["worker"] = add_node()
        server.start()
        yield info
    finally:
        server.stop()
        kill_sessions(head.proc, *[n.proc for n in nodes])  # this cluster only, never other Rays on the machine


def test_sweep_runs_on_the_second_node_and_logs_to_the_server(cluster, data_root, tiny_folder):
    from mlflow import MlflowClient

    from sweeps.run import open_sweep
    from sweeps.tracking import child_runs

    tmp, env = cluster["tmp"], cluster["env"]
    storage = tmp / "shared" / "sweeps"
    sweep = write_sweep(tmp, data_root, "multinode", search={"num_trials": 2}, baselines=[],
                        tracking={"uri": cluster["uri"], "embedding": "pca", "finalists": 0},
                        storage={"path": str(storage)})
    # The driver is a separate process, as under `ray job submit`: Ray reads the token settings when it starts.
    done = subprocess.run([str(BIN / "uda-sweep"), "run", str(sweep), "--address", cluster["address"]], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "View run trial_" not in done.stdout  # trials keep MLflow's per-run links out of the driver's log
    head, worker = alive_nodes(cluster["address"], env)  # the node without CPUs, then the one with 2

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
                        tracking={"uri": cluster["uri"], "embedding": "none", "finalists": 0},
                        storage={"path": str(storage)})
    driver = subprocess.Popen([str(BIN / "uda-sweep"), "run", str(sweep), "--address", cluster["address"]], cwd=tmp,
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "restart.log", "w"))
    client = MlflowClient(cluster["uri"])
    wait_for_evaluation(client, "restart", step=EVERY)  # a trial has logged its first evaluation: take the server away
    server.stop()
    down = time.time()
    time.sleep(8)  # trials keep training and retry their logging meanwhile (MLflow's HTTP retries)
    up = time.time()
    server.start()
    assert driver.wait(600) == 0, (tmp / "restart.log").read_text()[-3000:]

    _, _, state = open_sweep("restart", storage)
    runs = child_runs(cluster["uri"], state["experiment_id"], state["parent_run_id"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    expected = list(range(EVERY, 20 * EVERY + 1, EVERY))
    overlapped = False
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "source_val/acc")
        # every evaluation logged exactly once: nothing lost or doubled
        assert sorted(m.step for m in history) == expected
        # A trial evaluates every ~2 s, so the outage met one of its calls: either a metric stamped while the server
        # was down, or two evaluations stamped either side of it (the uploads between them waited it out).
        stamps = sorted(m.timestamp / 1000 for m in history)
        overlapped |= any(down <= t <= up for t in stamps) or any(a < down and b > up
                                                                  for a, b in zip(stamps, stamps[1:]))
    assert overlapped, "no trial was logging while the server was down: the retry path was not exercised"


def wait_for_evaluation(client, experiment: str, step: int, timeout: float = 300) -> None:
    """Until some trial of the experiment has logged the evaluation at `step` (polling the MLflow server)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        exps = client.search_experiments(filter_string=f"name = '{experiment}'")
        runs = client.search_runs(exps[0].experiment_id, "tags.trial_id != ''") if exps else []
        if any(m.step >= step for r in runs for m in client.get_metric_history(r.info.run_id, "source_val/acc")):
            return
        time.sleep(1)
    pytest.fail(f"no trial of {experiment!r} logged step {step} within {timeout} s")


def test_node_lost_mid_trial_resumes_from_checkpoint_on_new_capacity(cluster, data_root, tiny_folder):
    """The node running a trial dies; the head has no CPUs, so the trial waits until a new node joins, then resumes
    from its last checkpoint there. Its MLflow run is the same one, with every evaluation exactly once."""
    from mlflow import MlflowClient

    from sweep_helpers import EVERY
    from sweeps.run import open_sweep
    from sweeps.tracking import child_runs

    tmp, env = cluster["tmp"], cluster["env"]
    storage = tmp / "shared" / "nodeloss"
    steps = 12 * EVERY
    sweep = write_sweep(tmp, data_root, "nodeloss", search={"num_trials": 1}, baselines=[],
                        run={"train": {"steps": steps, "eval_every": EVERY, "precision": "fp32"}},
                        scheduler={"type": "none"}, failure={"max_retries": 2},
                        tracking={"uri": cluster["uri"], "embedding": "none", "finalists": 0},
                        storage={"path": str(storage)})
    driver = subprocess.Popen([str(BIN / "uda-sweep"), "run", str(sweep), "--address", cluster["address"]], cwd=tmp,
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "nodeloss.log", "w"))
    client = MlflowClient(cluster["uri"])
    wait_for_evaluation(client, "nodeloss", step=2 * EVERY)  # so the checkpoint of step EVERY is on shared storage
    lost = cluster["worker"]
    lost.kill()
    time.sleep(20)  # Ray notices the dead node (health checks) and fails the trial; no capacity is left for the retry
    assert driver.poll() is None, "the sweep must wait for capacity, not give up"
    cluster["worker"] = replacement = cluster["add_node"]()
    assert driver.wait(600) == 0, (tmp / "nodeloss.log").read_text()[-3000:]

    _, _, state = open_sweep("nodeloss", storage)
    [run] = child_runs(cluster["uri"], state["experiment_id"], state["parent_run_id"])  # one run: reopened, not doubled
    tags = run.data.tags
    assert run.info.status == "FINISHED" and "failure" not in tags
    assert tags["ray.node_id"] == replacement.node_id != lost.node_id
    assert tags["restarts"] == "1"
    assert EVERY <= int(tags["resumed_from_step"]) < steps  # from a checkpoint, not from scratch
    history = client.get_metric_history(run.info.run_id, "source_val/acc")
    assert sorted(m.step for m in history) == list(range(EVERY, steps + 1, EVERY))  # nothing lost, nothing doubled
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
