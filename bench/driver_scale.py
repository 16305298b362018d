"""What the sweep's driver and tracking server spend per trial as a sweep grows: Optuna TPE suggest latency and
MLflow logging throughput after 100, 300 and 1,000 finished trials.

- Optuna: the sweep's own study setup (journal file storage, multivariate grouped TPE with constant liar, the DANCE
  define-by-run space). A study is filled to N finished trials with random points (fast), then timed: one `ask` plus
  the space's suggestions, as OptunaSearch does per trial. Baseline in the same study: the random sampler's ask,
  which pays the same storage and define-by-run costs, so the ratio is what TPE itself adds.
- MLflow: a real `mlflow server` on loopback (sqlite backend and proxied artifacts, as cluster.yaml runs it). The
  experiment is filled to N finished child runs, then whole trials are logged through the sweep's own `TrialRun`
  (find-or-create the run, params, each evaluation's metrics and JSON files, close), counting HTTP calls. The
  driver's queries are timed at each N too: all child runs, and the RUNNING ones it closes at the end of a sweep.
  Then `--parallel` trials log at once: the server's aggregate calls/s against one trial's.
  Baseline: the same trial in an empty experiment.

    .venv/bin/python bench/driver_scale.py [--counts 100 300 1000] [--probes 20] [--trials 5] [--parallel 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a "View run at" line per closed run

# One evaluation as a trial logs it (counted on a tiny test sweep's MLflow server): 44 metric values, two confusion
# matrices as JSON and as PNG (~65 KB each); at a new best also evaluation.json and three more pictures. Here every
# evaluation is a new best: the upper bound of a trial's calls.
EVALS_PER_TRIAL = 5
METRICS_PER_EVAL = 44
PNG_BYTES = {"confusion": 65_000, "embedding": 37_000, "accuracy_vs_mag": 26_000}


def _base_run() -> dict:
    from uda_core.config import read_yaml

    return read_yaml(ROOT / "sweeps" / "configs" / "quickstart.yaml")["run"]


# ---------------------------------------------------------------- Optuna
def optuna_latency(counts: list[int], probes: int, seed: int) -> list[dict]:
    import numpy as np
    import optuna

    from search_spaces import get_space
    from sweeps.run import study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space("dance").with_overrides({}, _base_run())
    rng = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(study_name="bench", storage=study_storage(Path(tmp)), direction="maximize")
        random = optuna.samplers.RandomSampler(seed=seed)
        tpe = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                         constant_liar=True, n_startup_trials=10)

        def one(sampler) -> float:
            study.sampler = sampler
            t = time.perf_counter()
            trial = study.ask()
            space(trial)
            elapsed = time.perf_counter() - t
            study.tell(trial, float(rng.random()))
            return elapsed

        for n in counts:
            t_fill = time.perf_counter()
            while len(study.get_trials(deepcopy=False)) < n:
                one(random)
            fill = time.perf_counter() - t_fill
            tpe_s = [one(tpe) for _ in range(probes)]
            rnd_s = [one(random) for _ in range(probes)]
            row = {"finished_trials": n, "tpe_ms": 1000 * statistics.median(tpe_s),
                   "tpe_p90_ms": 1000 * sorted(tpe_s)[int(0.9 * (probes - 1))],
                   "random_ms": 1000 * statistics.median(rnd_s)}
            row["tpe_over_random"] = row["tpe_ms"] / row["random_ms"]
            rows.append(row)
            print(f"  optuna  N={n:5d}: TPE suggest {row['tpe_ms']:7.1f} ms (p90 {row['tpe_p90_ms']:.1f}), "
                  f"random {row['random_ms']:.1f} ms, TPE/random {row['tpe_over_random']:.1f}x   (fill {fill:.0f} s)",
                  flush=True)
    return rows


# ---------------------------------------------------------------- MLflow
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")


class CountingRequests:
    """Counts the HTTP requests MLflow's client sends (every client call goes through requests.Session.request)."""

    def __init__(self):
        import requests

        self.n, self._orig, self._cls = 0, requests.Session.request, requests.Session

    def __enter__(self):
        orig = self._orig

        def request(session, *a, **k):
            self.n += 1
            return orig(session, *a, **k)

        self._cls.request = request
        return self

    def __exit__(self, *exc):
        self._cls.request = self._orig


def _metrics(step: int) -> dict[str, float]:
    return {f"m{i:03d}": (i * 7919 + step) % 1000 / 1000 for i in range(METRICS_PER_EVAL)}


def _fill_run(client, exp_id: str, parent: str, i: int) -> None:
    """A finished trial as cheaply as possible: the rows it leaves in the store (tags, params, metric history)."""
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, run_name=f"fill_{i}",
                            tags={"mlflow.parentRunId": parent, "trial_id": f"fill{i:05d}"})
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, s) for s in range(1, EVALS_PER_TRIAL + 1) for k, v in _metrics(s).items()]
    params = [Param(f"p{j}", str(j)) for j in range(12)]
    for j in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[j : j + 1000], params=params if j == 0 else [])
    client.set_terminated(run.info.run_id, "FINISHED")


def _picture(size: int):
    return lambda path: path.write_bytes(os.urandom(size))  # incompressible, like a PNG


def _one_trial(uri: str, exp_id: str, parent: str, trial_id: str) -> None:
    from sweeps.tracking import TrialRun

    run = TrialRun(uri, exp_id, parent, trial_id, f"trial_{trial_id}",
                   {f"p{j}": j for j in range(12)}, {"sweep": "bench"})
    run.set_tags({"ray.node_id": "0" * 56})
    for s in range(1, EVALS_PER_TRIAL + 1):
        conf = {"labels": list(range(10)), "matrix": [[s] * 7] * 10}
        files, best = {}, {"evaluation.json": {"step": s, "metrics": _metrics(s)}}
        for split in ("source_test", "oracle_target_test"):
            files[f"confusion/{split}.json"] = conf
            files[f"confusion/{split}.png"] = best[f"confusion_{split}.png"] = _picture(PNG_BYTES["confusion"])
        best["embedding.png"] = _picture(PNG_BYTES["embedding"])
        best["oracle_accuracy_vs_r_mag.png"] = _picture(PNG_BYTES["accuracy_vs_mag"])
        run.log_evaluation(s, _metrics(s), files, best)
    run.close("FINISHED")


def _parallel_trials(uri: str, exp_id: str, parent: str, tag: str, n: int) -> float:
    """n trials logging at once (threads: the calls wait on the server, not on Python); the wall time."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda k: _one_trial(uri, exp_id, parent, f"{tag}_par{k}"), range(n)))
    return time.perf_counter() - t


def mlflow_throughput(counts: list[int], trials: int, parallel: int) -> list[dict]:
    from mlflow import MlflowClient

    from sweeps.tracking import child_runs, close_stale_runs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = _start_server(Path(tmp))
        try:
            client = MlflowClient(uri)
            exp_id = client.create_experiment("bench")
            parent = client.create_run(exp_id, run_name="sweep bench").info.run_id
            _one_trial(uri, exp_id, parent, "warmup")  # the server's and client's first-call costs are not per trial
            filled = 1
            # The empty-experiment baseline comes last, in an experiment of its own: a new server spends its first
            # minute on background work, which made an N = 0 measured first look twice as slow.
            for n in [*counts, 0]:
                t_fill = time.perf_counter()
                if n == 0:
                    exp_id = client.create_experiment("bench-empty")
                    parent = client.create_run(exp_id, run_name="sweep bench-empty").info.run_id
                while filled < n:
                    _fill_run(client, exp_id, parent, filled)
                    filled += 1
                fill = time.perf_counter() - t_fill
                times, calls = [], []
                for k in range(trials):
                    with CountingRequests() as counter:
                        t = time.perf_counter()
                        _one_trial(uri, exp_id, parent, f"n{n}_{k}")
                        times.append(time.perf_counter() - t)
                    calls.append(counter.n)
                wall = _parallel_trials(uri, exp_id, parent, f"n{n}", parallel)
                t = time.perf_counter()
                found = len(child_runs(uri, exp_id, parent))
                query = time.perf_counter() - t
                t = time.perf_counter()
                close_stale_runs(uri, exp_id, parent, {})  # the driver's end-of-sweep call: RUNNING runs only
                close = time.perf_counter() - t
                per_trial = statistics.median(times)
                row = {"finished_trials": n, "trial_logging_s": per_trial, "calls_per_trial": statistics.median(calls),
                       "ms_per_call": 1000 * per_trial / statistics.median(calls),
                       "metric_values_per_s": EVALS_PER_TRIAL * METRICS_PER_EVAL / per_trial,
                       "parallel_calls_per_s": parallel * statistics.median(calls) / wall,
                       "serial_calls_per_s": statistics.median(calls) / per_trial,
                       "child_runs_query_s": query, "child_runs_found": found,
                       "close_stale_runs_s": close}
                rows.append(row)
                print(f"  mlflow  N={n:5d}: one trial's logging {per_trial:.2f} s in "
                      f"{row['calls_per_trial']:.0f} calls "
                      f"({row['ms_per_call']:.1f} ms/call); {parallel} at once: "
                      f"{row['parallel_calls_per_s']:.0f} calls/s "
                      f"(one: {row['serial_calls_per_s']:.0f}); "
                      f"query of all {found} runs {query:.2f} s, of RUNNING ones {close:.2f} s   (fill {fill:.0f} s)",
                      flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    rows.insert(0, rows.pop())
    base = rows[0]["trial_logging_s"]
    for r in rows:
        r["vs_empty"] = r["trial_logging_s"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--probes", type=int, default=20, help="timed suggestions per sampler and N")
    ap.add_argument("--trials", type=int, default=5, help="timed trials' logging per N")
    ap.add_argument("--parallel", type=int, default=4, help="trials logging at once, for the server's throughput")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = sorted(args.counts)

    print(f"Optuna: suggest latency after N finished trials (median of {args.probes})", flush=True)
    optuna_rows = optuna_latency(counts, args.probes, args.seed)
    print(f"MLflow: one trial = {EVALS_PER_TRIAL} evaluations, each {METRICS_PER_EVAL} metrics and 9 files; "
          f"median of {args.trials}, then {args.parallel} at once", flush=True)
    mlflow_rows = mlflow_throughput(counts, args.trials, args.parallel)
    last_o, last_m = optuna_rows[-1], mlflow_rows[-1]
    print(f"At {last_o['finished_trials']} finished trials the driver spends "
          f"{last_o['tpe_ms']:.0f} ms per TPE suggestion "
          f"and a trial {last_m['trial_logging_s']:.1f} s on {last_m['calls_per_trial']:.0f} MLflow calls "
          f"({last_m['vs_empty']:.2f}x an empty experiment).")

    def rounded(rows):
        return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]

    print(json.dumps({"benchmark": "driver_scale", "cpus": os.cpu_count(), "optuna": rounded(optuna_rows),
                      "mlflow": rounded(mlflow_rows)}))


if __name__ == "__main__":
    main()
