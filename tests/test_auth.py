"""A real `mlflow server --app-name basic-auth`, set up as the cluster files set it up (its admin from environment
variables, a CSRF key of its own, users in a database beside the tracking store): nobody without the password gets
in, a refused sweep stops before it creates anything, the sweep with the password (from the environment only) logs
as usual, and the password (or the user name) shows up in nothing the sweep stored."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sweep_helpers import write_sweep
from test_multinode import SERVER_ENV, _free_port

BIN = Path(sys.executable).parent
USER, PASSWORD = f"uda-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "auth.ini").write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp / 'users.db'}\n")
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(tmp / "auth.ini"), MLFLOW_AUTH_ADMIN_USERNAME=USER,
               MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32), **SERVER_ENV)
    uri = f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", uri.rsplit(":", 1)[1],
         "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts"),
         "--workers", "1"],
        stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        for _ in range(240):  # a cold start takes seconds to a minute on a busy 2-core machine
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)  # the one unprotected route
                break
            except OSError:
                assert proc.poll() is None, (tmp / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
        yield {"uri": uri, "tmp": tmp}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """This process sends no credentials: none in the environment, and a home without MLflow's credentials file
    (which MLflow's client would read, and this machine's user may have)."""
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    # Ray keeps its cluster token under the home too, and caches it in this process: it must stay the real one, or
    # every later Ray in the test session fails with InvalidAuthToken. On a fresh machine no Ray has written it yet
    # (the first `ray.init` would, under the fake home), so it is made here, where Ray makes it.
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token.exists():
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, capture_output=True)
        assert token.exists(), f"`ray get-auth-token --generate` wrote ~/.ray/auth_token, not {token}"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _raw(uri: str, endpoint: str, body: dict, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of a bare REST call, as any process on the network could make it."""
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code


def _send(monkeypatch, user: str | None, password: str | None) -> None:
    """What MLflow's client in this process sends from now on: it reads the variables at every request."""
    for var, value in zip(CREDENTIAL_VARS, (user, password)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


def test_nobody_without_the_password_gets_in(server, no_credentials, data_root, tiny_folder, tmp_path, monkeypatch,
                                             capsys):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sweeps.cli import main

    uri = server["uri"]
    _send(monkeypatch, USER, PASSWORD)
    admin = MlflowClient(uri)
    run = admin.create_run(admin.create_experiment(f"guarded-{secrets.token_hex(3)}"))
    admin.create_registered_model("guarded")
    version = admin.create_model_version("guarded", f"runs:/{run.info.run_id}/model", run.info.run_id)
    admin.set_registered_model_alias("guarded", "champion", version.version)

    for user, password in ((None, None), (USER, "not-the-password")):
        _send(monkeypatch, user, password)
        with pytest.raises(MlflowException) as refused:
            MlflowClient(uri).search_experiments()
        assert refused.value.get_http_status_code() == 401
        auth = (user, password) if user else None  # the same, as any process on the network could send it
        assert _raw(uri, "runs/delete", {"run_id": run.info.run_id}, auth) == 401
        move_champion = {"name": "guarded", "alias": "champion", "version": "2"}
        assert _raw(uri, "registered-models/alias", move_champion, auth) == 401
    _send(monkeypatch, USER, PASSWORD)
    assert admin.get_run(run.info.run_id).info.lifecycle_stage == "active"  # nothing was changed
    assert admin.get_model_version_by_alias("guarded", "champion").version == version.version

    # A sweep sent off with a wrong password, or none, stops at once, naming the refusal and the fix in one line:
    # what it sent included, the password never.
    # Nothing is left behind: no data set generated (a data root of its own), no sweep folder, no local store.
    sweep = write_sweep(tmp_path, tmp_path / "data", "refused", tracking={"uri": uri},
                        storage={"path": str(tmp_path / "sweeps")})
    monkeypatch.chdir(tmp_path)
    for password, sent in (("not-the-password", f"user '{USER}' from MLFLOW_TRACKING_USERNAME"),
                           (None, "no credentials (MLFLOW_TRACKING_USERNAME unset)")):
        _send(monkeypatch, password and USER, password)
        capsys.readouterr()
        started = time.time()
        assert main(["run", str(sweep)]) == 2
        err = capsys.readouterr().err
        assert time.time() - started < 30
        assert err.startswith("error: the MLflow tracking server refused the credentials (API request to endpoint ")
        assert f"sent: {sent}); export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from your secret " in err
        assert "Traceback" not in err and "not-the-password" not in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["refused.yaml"]

    # Rolling the champion back needs the password too, and says so rather than "no such model".
    _send(monkeypatch, USER, "not-the-password")
    assert main(["rollback", "guarded", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the MLflow tracking server refused the credentials") and "Traceback" not in err
    _send(monkeypatch, USER, PASSWORD)
    assert admin.get_model_version_by_alias("guarded", "champion").version == version.version


def test_sweep_with_the_password_logs_and_stores_it_nowhere(server, data_root, tiny_folder, tmp_path, monkeypatch,
                                                            no_credentials, capsys):
    """The credentials reach the trials through the environment of the Ray the driver starts (as through `ray start`
    on a node): Tune's trial folders, MLflow's params, tags and artifacts must not record them."""
    import ray
    from mlflow import MlflowClient

    from sweeps.cli import main
    from sweeps.run import open_sweep
    from sweeps.tracking import child_runs

    uri, storage = server["uri"], tmp_path / "sweeps"
    sweep = write_sweep(tmp_path, data_root, "guarded", search={"num_trials": 1}, baselines=[],
                        tracking={"uri": uri, "embedding": "none", "finalists": 0}, storage={"path": str(storage)})
    _send(monkeypatch, USER, PASSWORD)
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["run", str(sweep)]) == 0
    finally:
        ray.shutdown()

    _, _, state = open_sweep("guarded", storage)
    client = MlflowClient(uri)
    [trial] = child_runs(uri, state["experiment_id"], state["parent_run_id"])
    assert trial.info.status == "FINISHED" and client.get_metric_history(trial.info.run_id, "source_val/acc")
    logged = []
    for run in (client.get_run(state["parent_run_id"]), client.get_run(trial.info.run_id)):
        logged += [*run.data.params.items(), *run.data.tags.items()]
    assert logged and not [kv for kv in logged if USER in "".join(kv) or PASSWORD in "".join(kv)]
    files = [p for folder in (server["tmp"] / "artifacts", storage) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "params.json" for p in files) and any(p.name == "evaluation.json" for p in files)
    leaks = [p for p in files if USER.encode() in p.read_bytes() or PASSWORD.encode() in p.read_bytes()]
    assert not leaks, f"a credential is stored in {leaks}"

    # A resume with a wrong password stops before any Ray work, saying so (not "no parent run").
    _send(monkeypatch, USER, "not-the-password")
    capsys.readouterr()
    assert main(["resume", "guarded", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the MLflow tracking server refused the credentials") and "Traceback" not in err


@pytest.mark.parametrize("flag", ["sweep file", "--tracking-uri", "MLFLOW_TRACKING_URI"])
def test_a_password_in_the_tracking_uri_is_refused(flag, data_root, tmp_path, monkeypatch, capsys):
    """Sweep state, MLflow runs and Tune's trial configs keep the tracking URI: a password in it would be stored."""
    from sweeps.cli import main

    leaky = "http://sweeps:hunter2@127.0.0.1:5000"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if flag == "sweep file":
        argv = ["run", str(write_sweep(tmp_path, tmp_path / "data", "leaky", tracking={"uri": leaky},
                                       storage={"path": str(tmp_path / "sweeps")}))]
        where = "leaky.yaml: tracking: uri"
    elif flag == "--tracking-uri":
        argv, where = ["rollback", "galaxy", "--tracking-uri", leaky], "--tracking-uri"
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", leaky)
        argv, where = ["rollback", "galaxy"], "MLFLOW_TRACKING_URI"
    before = sorted(tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{where}: http://sweeps:***@127.0.0.1:5000 has a password in it, which would be stored in the " in err
    assert "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD from your secret store" in err
    assert "hunter2" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before  # no data, sweep folder or mlflow.db


def test_an_unreachable_tracking_server_fails_at_once(tmp_path, monkeypatch, capsys):
    from sweeps.cli import main

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    sweep = write_sweep(tmp_path, tmp_path / "data", "lonely", tracking={"uri": uri},
                        storage={"path": str(tmp_path / "sweeps")})
    monkeypatch.chdir(tmp_path)
    started = time.time()
    assert main(["run", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert time.time() - started < 30  # not MLflow's minutes of retries
    assert err.startswith(f"error: {sweep}: tracking.uri: the MLflow server {uri} does not answer")
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lonely.yaml"]


def test_a_tls_problem_is_left_to_mlflows_own_client(tmp_path):
    """The quick /health probe only asks whether something answers: a TLS failure (here, https to a plain HTTP
    server; in practice a company CA that MLflow trusts through REQUESTS_CA_BUNDLE) is not "does not answer"."""
    import http.server
    import socket
    import threading

    from sweeps.tracking import _unreachable

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _unreachable(f"https://127.0.0.1:{server.server_port}") is None
        assert _unreachable(f"http://127.0.0.1:{server.server_port}") is None  # it answers (501), so it is up
    finally:
        server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert "refused" in (_unreachable(f"http://127.0.0.1:{free}") or "")
