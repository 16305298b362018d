"""Launch, resume and summarise a sweep: OptunaSearch (TPE) proposes, ASHA stops, Ray Tune runs, MLflow records.

Layout under `<storage.path>/<name>/`: Ray Tune's experiment (trial folders, checkpoints, searcher state),
`sweep.yaml` (the validated sweep file, used by `resume`), `sweep_state.json` (MLflow ids, study name) and
`optuna.journal` (the Optuna study: `optuna-dashboard optuna.journal`).
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from uda_core.errors import ConfigError

from .config import SweepConfig, check_target_labels, load_sweep, parse_sweep

__all__ = ["run_sweep", "resume_sweep", "sweep_dir", "SweepSummary"]

log = logging.getLogger(__name__)
STATE_FILE, SWEEP_FILE, STUDY_FILE = "sweep_state.json", "sweep.yaml", "optuna.journal"


@dataclass
class SweepSummary:
    name: str
    path: Path
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    trials: list[dict]  # one row per trial: id, status, kind, params, objective at the best checkpoint, ...
    best: dict | None
    finished: bool


def sweep_dir(name: str, storage: str | Path = "runs/sweeps", workdir: Path | None = None) -> Path:
    return (Path(workdir or Path.cwd()) / storage).resolve() / name


def open_sweep(name: str, storage: str | Path = "runs/sweeps",
               workdir: Path | None = None) -> tuple[Path, SweepConfig, dict]:
    """An existing sweep's folder, its sweep file (data paths already absolute) and its state."""
    path = sweep_dir(name, storage, workdir)
    if not (path / STATE_FILE).exists():
        raise ConfigError(f"no sweep named {name!r} under {path.parent} (give --storage if it lives elsewhere)")
    sweep = parse_sweep(yaml.safe_load((path / SWEEP_FILE).read_text()), str(path / SWEEP_FILE))
    return path, sweep, json.loads((path / STATE_FILE).read_text())


def _tracking_uri(sweep: SweepConfig, address: str | None, workdir: Path) -> str:
    uri = sweep.tracking.uri
    if uri is None and address:  # on a cluster, the head gives its jobs its MLflow server's address (cluster.yaml)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
    if address and (uri is None or not uri.startswith(("http://", "https://"))):
        raise ConfigError(f"tracking.uri: a sweep on a cluster (--address {address}) needs the HTTP address of an "
                          f"MLflow server reachable from every node (got {uri!r}); a local sqlite file is not")
    if uri is None:
        from .tracking_uri import default_tracking_uri

        return default_tracking_uri(workdir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(workdir / uri.removeprefix('sqlite:///')).resolve()}"  # trials run in other folders
    return uri


def _provenance() -> dict[str, str]:
    out = {}
    for pkg in ("galaxy-uda-sweeps", "torch", "ray", "optuna", "mlflow", "numpy"):
        try:
            out[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[f"version.{pkg}"] = "absent"
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        out["git.revision"] = (rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
                               if rev.returncode == 0 else "unknown")
    except (OSError, subprocess.SubprocessError):
        out["git.revision"] = "unknown"
    return out


def study_storage(exp_dir: Path):
    """The sweep's Optuna storage: a journal file beside Tune's experiment (`optuna-dashboard` reads it)."""
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp_dir / STUDY_FILE)))


def load_study(exp_dir: Path, study_name: str):
    """The sweep's Optuna study, or None before its first trial was asked for."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=study_storage(exp_dir))
    except KeyError:
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_sweep(sweep_file: str | Path, *, address: str | None = None, workdir: Path | None = None,
              trainable=None, progress: bool = True) -> SweepSummary:
    """Validate everything, prepare data and MLflow, then run the sweep to the end (or until interrupted)."""
    workdir = Path(workdir or Path.cwd()).resolve()
    sweep = load_sweep(sweep_file)
    exp_dir = sweep_dir(sweep.name, sweep.storage.path, workdir)
    if (exp_dir / STATE_FILE).exists():
        raise ConfigError(f"{sweep_file}: a sweep named {sweep.name!r} already exists at {exp_dir}; continue it with "
                          f"`uda-sweep resume {sweep.name}`, or give this sweep another name (nothing was changed)")
    _check_storage(exp_dir, sweep_file)
    # Before any Ray or MLflow work: what needs target labels the data set lacks, then data errors, surface first.
    check_target_labels(sweep, str(sweep_file), workdir)
    uri = _tracking_uri(sweep, address, workdir)
    if uri.startswith(("http://", "https://")):  # a refused or unreachable server fails before data or folders
        from .tracking import check_access

        check_access(uri, f"{sweep_file}: tracking.uri" if sweep.tracking.uri else "MLFLOW_TRACKING_URI")
    _ensure_data(sweep, workdir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))

    from .tracking import SweepRun, open_experiment

    experiment_id = open_experiment(uri, sweep.tracking.experiment or sweep.name, workdir / sweep.tracking.artifacts)
    oracle = sweep.objective.oracle
    parent = SweepRun(uri, experiment_id, name=f"sweep {sweep.name}" + (" [ORACLE objective]" if oracle else ""),
                      tags={"sweep": sweep.name, "kind": "sweep", "method": ",".join(sweep.methods),
                            "objective": ",".join(sweep.objective.metrics), "objective_is_oracle": str(oracle).lower()})
    from search_spaces import search_space

    space = search_space(sweep.methods).with_overrides(sweep.search.overrides, sweep.run.model_dump())
    data_manifest = _data_manifest(sweep)
    parent.log_start(
        params={"search.space": space.name, "search.algorithm": sweep.search.algorithm,
                "search.num_trials": sweep.search.num_trials,
                "objective": ",".join(sweep.objective.metrics), "objective.mode": ",".join(sweep.objective.modes),
                "data.fingerprint": data_manifest.get("fingerprint", "unknown"),
                "data.target_labels": data_manifest.get("target_labels", "simulated"), **_provenance()},
        texts={"sweep.yaml": (exp_dir / SWEEP_FILE).read_text()},
        dicts={"search_space.json": space.describe(), "data_manifest.json": data_manifest},
    )
    state = {"name": sweep.name, "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent.run_id,
             "study_name": sweep.name, "address": address, "workdir": str(workdir),
             "path": str(exp_dir), "tune_loggers": "csv,json"}
    parent.set_tags({"optuna_study": state["study_name"], "optuna_journal": str(exp_dir / STUDY_FILE)})
    from .notes import sweep_note

    parent.set_note(sweep_note(sweep, state))
    _write_json(exp_dir / STATE_FILE, state)
    return _fit(sweep, exp_dir, state, address, trainable, progress, restore=False)


def resume_sweep(name: str, *, storage: str | Path = "runs/sweeps", address: str | None = None,
                 workdir: Path | None = None, trainable=None, progress: bool = True) -> SweepSummary:
    """Continue a sweep whose driver died: finished trials stay, unfinished ones restart from their checkpoint."""
    workdir = Path(workdir or Path.cwd()).resolve()
    exp_dir = sweep_dir(name, storage, workdir)
    if not (exp_dir / STATE_FILE).exists():
        raise ConfigError(f"no sweep named {name!r} under {exp_dir.parent} (give --storage if it lives elsewhere)")
    sweep = parse_sweep(yaml.safe_load((exp_dir / SWEEP_FILE).read_text()), str(exp_dir / SWEEP_FILE))
    state = json.loads((exp_dir / STATE_FILE).read_text())
    if state.get("path", str(exp_dir)) != str(exp_dir):
        # The Optuna searcher's checkpoint holds the journal's absolute path: a moved sweep would write elsewhere.
        raise ConfigError(f"sweep {name!r} was created at {state['path']} and has moved to {exp_dir}; "
                          "move it back (or link the old path to it) to resume")
    return _fit(sweep, exp_dir, state, address or state.get("address"), trainable, progress, restore=True)


def _reattach_tracking(sweep: SweepConfig, exp_dir: Path, state: dict, address: str | None) -> dict:
    """The sweep's state with the MLflow store as it is now, checked before any Ray work. A replaced head serves the
    same database (on the shared mount) at a new address, which the cluster gives its jobs as MLFLOW_TRACKING_URI, as
    at `run`; a sweep file's own tracking.uri is kept. Call it holding the driver lock."""
    from .tracking import check_sweep_run

    from .auth import password_in_uri

    uri = state["tracking_uri"]
    if address and sweep.tracking.uri is None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
        if problem := password_in_uri(uri, "MLFLOW_TRACKING_URI"):  # it would be stored in the state and the study
            raise ConfigError(problem)
    check_sweep_run(uri, state["parent_run_id"], sweep.name)
    if uri == state["tracking_uri"]:
        return state
    log.warning("sweep %s: its MLflow server moved from %s to %s", sweep.name, state["tracking_uri"], uri)
    state = {**state, "tracking_uri": uri}
    _write_json(exp_dir / STATE_FILE, state)  # for status, promote and later resumes
    study = load_study(exp_dir, state["study_name"])
    if study is not None:
        study.set_user_attr("mlflow_tracking_uri", uri)  # optuna-dashboard's pointer to the runs
    return state


def _ensure_data(sweep: SweepConfig, workdir: Path) -> None:
    from uda_core.config import build_config
    from uda_core.data.surveys import SURVEYS, get_survey

    raw = sweep.run.model_dump()
    raw["data"]["root"] = str((workdir / sweep.run.data.root).resolve())
    for key in ("source", "target"):  # a survey file becomes its definition: trials (on any node) need no copy
        if isinstance(raw["data"][key], str) and raw["data"][key] not in SURVEYS:
            raw["data"][key] = get_survey(workdir / raw["data"][key]).to_dict()
    if sweep.run.data.path:
        raw["data"]["path"] = str((workdir / sweep.run.data.path).resolve())
    cfg = build_config(raw)
    from uda_core.train import load_data  # torch: only once the sweep file and its surveys have passed

    load_data(cfg, progress=True)  # generates (once, under a lock) or verifies the data set
    sweep.run.data.root = raw["data"]["root"]
    sweep.run.data.path = raw["data"]["path"]
    sweep.run.data.source, sweep.run.data.target = raw["data"]["source"], raw["data"]["target"]


def _data_folder(sweep: SweepConfig) -> tuple[str, Path]:
    """The sweep file's data key and the folder (or file) it resolves to, once `_ensure_data` made it absolute."""
    from uda_core.data.store import DataSpec

    d = sweep.run.data
    if d.path:
        return "run.data.path", Path(d.path)
    return "run.data.root", Path(d.root) / DataSpec(d.task, d.source, d.target, d.size, d.seed,
                                                    d.label_noise).folder_name()


def _data_manifest(sweep: SweepConfig) -> dict:
    from uda_core.data.store import read_manifest

    _, folder = _data_folder(sweep)
    try:
        return read_manifest(folder)
    except Exception:  # the manifest is provenance only; a missing one was already reported by the loader
        return {}


def _study_links(sweep: SweepConfig, state: dict) -> dict:
    """What optuna-dashboard shows of the study: where its trials live in MLflow (each trial's run name and Ray
    id are user attributes of the trial)."""
    return {"sweep": sweep.name, "mlflow_tracking_uri": state["tracking_uri"],
            "mlflow_experiment_id": state["experiment_id"], "mlflow_parent_run_id": state["parent_run_id"],
            "objective_at": "each trial's best checkpoint (best/<metric>), steps are training steps"}


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"  # Tune's default folder name spells out every parameter


@contextmanager
def driver_lock(exp_dir: Path, busy: str):
    """Hold the sweep's driver lock: one driver (or `prune`) at a time. `busy`, with {lock} for the lock file's path,
    is the ConfigError when another process holds it."""
    path = exp_dir / "driver.lock"
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(busy.format(lock=path)) from None
        yield


def _fit(sweep: SweepConfig, exp_dir: Path, state: dict, address: str | None, trainable, progress: bool,
         restore: bool) -> SweepSummary:
    """Run the Tuner under a lock: two drivers on one sweep would run its trials twice."""
    with driver_lock(exp_dir, f"sweep {sweep.name!r} is already being run by another driver (lock {{lock}}); "
                              "wait for it, or stop it first"):
        if restore:  # under the lock: a refused second driver must not rewrite the running one's state
            state = _reattach_tracking(sweep, exp_dir, state, address)
        return _fit_locked(sweep, exp_dir, state, address, trainable, progress, restore)


def _fit_locked(sweep: SweepConfig, exp_dir: Path, state: dict, address: str | None, trainable, progress: bool,
                restore: bool) -> SweepSummary:
    import optuna
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from search_spaces import search_space

    from .prune import RetainBestAndLatest
    from .searcher import BaselinesFirst, SweepOptunaSearch
    from .trainable import TrialContext, run_trial

    # Baseline trials report no objective (the searcher must not see them), so Tune's check that every result
    # carries the searcher's metric is off; our own config validation already checks the metric names.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # MLflow holds the metrics: Tune's own CSV/JSON logs are kept (below) but not its TensorBoard one, which warned
    # on every NaN a diverging trial reported. A sweep started before (no "tune_loggers" in its state) restores a
    # run config without those two loggers: it keeps Tune's defaults, or its results would stop reaching result.json.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1" if state.get("tune_loggers") else "0"
    obj = sweep.objective
    metrics = [f"best/{m}" for m in obj.metrics]
    modes = obj.modes
    base = sweep.run.model_dump()
    space = search_space(sweep.methods).with_overrides(sweep.search.overrides, base)

    if not ray.is_initialized():
        _start_ray(address, progress)
    if address:  # before any trial: the data the driver prepared must be what trial nodes read
        from .cluster import check_data_on_trial_node

        key, folder = _data_folder(sweep)
        check_data_on_trial_node(key, folder, _data_manifest(sweep).get("fingerprint"),
                                 {"cpu": sweep.resources.cpus_per_trial, "gpu": sweep.resources.gpus_per_trial})
    ctx = TrialContext(
        sweep_name=sweep.name, base=base, objective_metrics=tuple(obj.metrics), objective_modes=tuple(modes),
        min_source_val_acc=obj.min_source_val_acc, tracking_uri=state["tracking_uri"],
        experiment_id=state["experiment_id"], parent_run_id=state["parent_run_id"],
        threads=sweep.resources.cpus_per_trial, embedding=sweep.tracking.embedding, study_name=state["study_name"],
    )
    fn = tune.with_resources(tune.with_parameters(trainable or run_trial, ctx=ctx),
                             {"cpu": sweep.resources.cpus_per_trial, "gpu": sweep.resources.gpus_per_trial})

    if restore and tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=fn, resume_unfinished=True, resume_errored=False)
    else:
        if sweep.search.algorithm == "tpe":
            # Multivariate TPE over grouped conditional sub-spaces; constant liar because parallel trials are
            # asked for before earlier ones are told (optuna 5 defaults, set explicitly for clarity).
            sampler = optuna.samplers.TPESampler(seed=sweep.search.seed, multivariate=True, group=True,
                                                 constant_liar=True,
                                                 n_startup_trials=sweep.search.n_startup)
        else:
            sampler = optuna.samplers.RandomSampler(seed=sweep.search.seed)
        points = [space.default_point(base)] if sweep.search.seed_with_defaults else None
        searcher = SweepOptunaSearch(
            space=space, metric=metrics if len(metrics) > 1 else metrics[0], mode=modes if len(modes) > 1 else modes[0],
            points_to_evaluate=points, sampler=sampler, study_name=state["study_name"], storage=study_storage(exp_dir),
            max_step=sweep.run.train.steps, method=sweep.run.method.name, study_attrs=_study_links(sweep, state))
        if sweep.scheduler.type == "asha":
            scheduler = ASHAScheduler(time_attr="step", metric=metrics[0], mode=modes[0], max_t=sweep.run.train.steps,
                                      grace_period=sweep.grace_period,
                                      reduction_factor=sweep.scheduler.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(search_alg=BaselinesFirst(searcher, sweep.baselines), scheduler=scheduler,
                                        num_samples=sweep.search.num_trials + len(sweep.baselines),
                                        max_concurrent_trials=sweep.resources.concurrency,
                                        reuse_actors=sweep.resources.reuse_workers,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=str(exp_dir.parent),
                failure_config=tune.FailureConfig(max_failures=sweep.failure.max_retries),
                # Not Tune's num_to_keep: it deleted a trial's latest checkpoint (low score) after the experiment
                # snapshot named it, and a resume after SIGKILL then failed ("does not exist on storage anymore").
                # RetainBestAndLatest deletes only what the snapshot on storage no longer needs (sweeps/prune.py).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                verbose=1 if progress else 0,
                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()]
                + ([RetainBestAndLatest(exp_dir)] if sweep.storage.keep_checkpoints == "best_and_latest" else []),
            ),
        )
    from .summary import summarise
    from .tracking import SweepRun

    parent = SweepRun(state["tracking_uri"], state["experiment_id"], run_id=state["parent_run_id"])
    try:
        tuner.fit()  # Ctrl-C: Tune saves the experiment and returns; `uda-sweep resume` continues it
        summary = summarise(sweep, exp_dir, state, parent)
        if summary.finished:  # only then: an interrupted sweep's RUNNING trials are still to be told their result
            _fail_orphan_study_trials(exp_dir, state)
        return summary
    except BaseException:
        from .tracking import close_stale_runs

        try:  # never leave the sweep's runs RUNNING; the original error is what the user needs to see
            close_stale_runs(state["tracking_uri"], state["experiment_id"], state["parent_run_id"], {})
            parent.finish("FAILED")
        except Exception as e:
            log.warning("could not close the sweep's MLflow runs: %s", e)
        raise


def _check_storage(exp_dir: Path, sweep_file) -> None:
    """The sweep's folder can be made: its nearest existing ancestor is a folder this user may write in."""
    existing = next(p for p in (exp_dir, *exp_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{sweep_file}: storage.path: {existing} is a file, not a folder; give a folder "
                          "(it is made if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{sweep_file}: storage.path: {existing} is not writable by this user; give a folder "
                          "you may write in")


def _start_ray(address: str | None, progress: bool) -> None:
    """Join the cluster at `address`, or start a private local Ray: "local", because Ray's default would join any
    cluster `ray start` (or a crashed one's leftover address file) left on this machine."""
    import ray

    try:
        if address:
            ray.init(address=address, log_to_driver=progress)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=progress)
    except ConnectionError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address or 'a new local Ray'}: {e}; start it "
                          "(`ray up cluster.yaml`, `ray start --head`), or drop --address and unset RAY_ADDRESS to "
                          "run on this machine alone") from None


def _fail_orphan_study_trials(exp_dir: Path, state: dict) -> None:
    """Optuna trials left RUNNING by a killed driver (asked for, never known to Tune's snapshot) are marked FAIL."""
    import optuna

    study = load_study(exp_dir, state["study_name"])
    if study is None:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
