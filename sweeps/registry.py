"""`uda-sweep promote` and `uda-sweep rollback`: a sweep's best trial into the MLflow model registry.

Aliases, not stages (deprecated since MLflow 2.9): every promoted version gets `challenger`; `champion` moves to it
only when it beats the current champion on the sweep's objective, both re-evaluated now on the sweep's data with
the trials' own evaluation code (or with --force). A version remembers the champion it replaced
(tag `previous_champion`), so `rollback` is one alias move back.

Promoting is idempotent (one version per trial and step, found again by tag) and serialised by a lock file beside
the sweep folders, so two terminals promoting at once leave one version and a champion that was compared fairly.
Each alias move is one registry call: nobody ever sees a half-updated alias.

A version is created from the trial's logged model (whose page then lists the version and shows the trial's
metrics at its step) with a short markdown description: the objective, the oracle numbers when the target has
labels, the gain over the sweep's baselines, and a link to the trial's run.
"""

from __future__ import annotations

import fcntl
import logging
import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from uda_core.errors import ConfigError, UdaError
from uda_core.evaluation import names as N

from .auth import refusal
from .config import SweepConfig
from .names import run_url
from .selection_benchmark import selection_tags

__all__ = ["promote", "rollback", "check_model_uri", "registered_model", "MODEL_URIS", "Promotion", "PromotionRefused",
           "CHAMPION", "CHALLENGER"]

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"


class PromotionRefused(UdaError):
    """No trial of the sweep passes the guards (or the named one does not)."""


@dataclass
class Promotion:
    model_name: str
    trial_id: str
    step: int
    objective: str
    mode: str
    score: float  # the challenger's objective, re-evaluated
    version: str | None = None  # None on a dry run that would create a new version
    champion_before: str | None = None
    champion_score: float | None = None
    became_champion: bool = False
    reason: str = ""
    dry_run: bool = False
    tags: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        v = f"version {self.version}" if self.version else "a new version"
        if self.dry_run:
            moves, stays, gets = "would move to", "would stay at", "would get"
        else:
            moves, stays, gets = "moved to", "stays at", "has"
        champ = f"{moves} {v}" if self.became_champion else f"{stays} version {self.champion_before}"
        return (f"{self.model_name}: trial {self.trial_id} at step {self.step}, {self.objective} = {self.score:.4f} "
                f"(re-evaluated) -> {v} {gets} alias {CHALLENGER}\n{CHAMPION}: {champ} ({self.reason})")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _guard_failures(row: dict, metrics: dict, sweep: SweepConfig, floor: float, checkpoint) -> list[str]:
    problems = []
    acc = metrics.get(N.SOURCE_VAL_ACC)
    if not _finite(acc) or acc < floor:
        problems.append(f"{N.SOURCE_VAL_ACC} {acc} below the floor {floor}")
    label_free = [k for k in metrics if k.startswith(N.LABEL_FREE_PREFIX)]
    bad = [k for k in (*sweep.objective.metrics, N.SOURCE_VAL_ACC, *label_free) if not _finite(metrics.get(k))]
    if bad:
        problems.append(f"non-finite metrics at its best step: {sorted(set(bad))}")
    if checkpoint is None:
        problems.append(f"no checkpoint at its best step {row['best_step']} under {row['path']}")
    return problems


def _pick(exp_dir: Path, sweep: SweepConfig, trial_id: str | None, floor: float) -> tuple[dict, dict, Path, list[dict]]:
    """The best (or named) search trial that passes the guards, its metrics at its best step, its checkpoint, and
    all the sweep's trial rows (the baselines are compared with it)."""
    from .finalists import checkpoint_at
    from .summary import metrics_at, ranked_rows, trial_rows

    rows = trial_rows(exp_dir, sweep)
    ranked = ranked_rows(rows, sweep)
    if trial_id is not None:
        ranked = [r for r in rows if r["trial_id"] == trial_id]
        if not ranked:
            raise PromotionRefused(f"sweep {sweep.name}: no trial {trial_id!r}; "
                                   f"trials: {[r['trial_id'] for r in rows]}")
        if ranked[0]["best_step"] < 0:
            raise PromotionRefused(f"trial {trial_id} has no checkpoint that passed the objective's guard")
    refusals = []
    for row in ranked:
        metrics = metrics_at(exp_dir, row["trial_id"], row["best_step"])
        ckpt = checkpoint_at(Path(row["path"]), row["best_step"]) if row["path"] else None
        problems = _guard_failures(row, metrics, sweep, floor, ckpt)
        if not problems:
            return row, metrics, ckpt, rows
        refusals.append(f"trial {row['trial_id']}: " + "; ".join(problems))
    if not refusals:
        raise PromotionRefused(
            f"sweep {sweep.name}: nothing to promote: no search trial has a checkpoint that passed the guard "
            f"source_val/acc >= {floor} with a finite {sweep.objective.metrics[0]}; lower "
            "objective.min_source_val_acc (or --min-source-val-acc), or train longer")
    detail = "\n  ".join(refusals)
    raise PromotionRefused(f"sweep {sweep.name}: nothing to promote\n  {detail}")


@contextmanager
def _registry_lock(folder: Path, model_name: str):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".registry-{model_name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # waits for the other promoter: promotion is short
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _raise_if_refused(e: Exception) -> None:
    """A tracking server refusing our credentials (401/403) says so, rather than passing for a missing model or run."""
    if message := refusal(e):
        raise ConfigError(message) from None


def _version_of(client, model_name: str, trial_key: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException as e:
        _raise_if_refused(e)
        return None
    found = sorted((v for v in versions if v.tags.get("trial_key") == trial_key), key=lambda v: int(v.version))
    return found[0] if found else None


MODEL_URIS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model folder"


def _not_found(e) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _listed(items, none: str = "none") -> str:
    items = list(items)
    return ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "") if items else none


def _what_is_registered(client, name: str) -> str:
    """The versions and aliases of registered model `name`, for an error message."""
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    aliases = client.get_registered_model(name).aliases
    return (f"its versions: {_listed(map(str, versions))}; its aliases: "
            f"{_listed(f'{a} -> version {v}' for a, v in sorted(aliases.items()))}")


def registered_model(client, name: str, where: str, store: str):
    """The registered model `name`; else one error listing the models the store has."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        _raise_if_refused(e)
        if not _not_found(e):
            raise ConfigError(f"{where}: {e.message}") from None
    names = sorted(m.name for m in client.search_registered_models(max_results=1000))
    raise ConfigError(f"{where}: no registered model {name!r} in {store}; registered models there: {_listed(names)}. "
                      f"Use one of them, pass --tracking-uri of the store it was promoted to, or register it with "
                      f"`uda-sweep promote SWEEP --model-name {name}`")


def _version(client, name: str, version: str, where: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as e:
        if not _not_found(e) and version.isdigit():
            raise
    raise ConfigError(f"{where}: registered model {name!r} has no version {version!r}; "
                      f"{_what_is_registered(client, name)}")


def check_model_uri(client, uri: str, store: str):
    """Whether the registry or run a models:/ or runs:/ URI names exists, before MLflow downloads anything: the
    model version it resolves to (None for runs:/ and logged-model URIs); else one error saying what does exist."""
    from mlflow.exceptions import MlflowException

    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        try:
            client.get_run(run_id)
        except MlflowException as e:
            _raise_if_refused(e)
            raise ConfigError(f"{uri}: no run {run_id!r} in {store}; the run id is on the run's page in the MLflow "
                              f"UI, or give {MODEL_URIS}") from None
        return None
    ref = uri.removeprefix("models:/")
    if ref.startswith("m-"):  # a logged model's id
        try:
            client.get_logged_model(ref.split("/", 1)[0])
        except MlflowException as e:
            _raise_if_refused(e)
            raise ConfigError(f"{uri}: no logged model {ref!r} in {store}; give {MODEL_URIS}") from None
        return None
    name, sep, alias = ref.partition("@")
    if not sep:
        name, sep, version = ref.rpartition("/")
    if not name or not sep or not (alias or version):
        raise ConfigError(f"{uri}: not a model URI; give {MODEL_URIS}")
    registered = registered_model(client, name, uri, store)
    if alias:
        if alias not in registered.aliases:
            raise ConfigError(f"{uri}: registered model {name!r} has no alias {alias!r}; "
                              f"{_what_is_registered(client, name)}")
        return _version(client, name, str(registered.aliases[alias]), uri)
    return _version(client, name, version, uri) if version.isdigit() else None  # a stage: MLflow resolves it


def _champion(client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as e:  # no such model or no such alias
        _raise_if_refused(e)
        return None


def _score(classifier_dir: Path, data, sweep: SweepConfig, metric: str) -> float:
    from uda_core.inference import evaluate_classifier

    metrics = evaluate_classifier(classifier_dir, data, sweep.run).metrics
    if metric not in metrics:  # an oracle/ metric on a target without labels: nothing to compare on
        raise PromotionRefused(f"{metric} cannot be computed on {data.folder}: its target has no labels")
    return float(metrics[metric])


def _champion_score(client, model_name: str, champion, data, sweep: SweepConfig, metric: str) -> float | None:
    """The current champion re-evaluated on this sweep's data; None if it cannot be (other bands, classes)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{model_name}/{champion.version}", dst_path=tmp)
        try:
            return _score(Path(local) / "artifacts" / "classifier", data, sweep, metric)
        except UdaError as e:
            log.warning("the champion (version %s) cannot be scored on this sweep's data: %s", champion.version, e)
            return None


def _better(a: float, b: float | None, mode: str) -> bool:
    return b is None or not math.isfinite(b) or (a > b if mode == "max" else a < b)


# Tune's columns that repeat other tags: the trial's configuration (`param.*`), and the objective as the searcher
# saw it (at the best step `objective/<m>` and `best/<m>` equal `metric.<m>` and `objective_value_in_sweep`).
# Training-loop numbers (`train/`) say nothing about the model.
_NOT_METRIC_TAGS = ("config/", "objective/", "best/", "train/")


def _metric_tags(metrics: dict) -> dict[str, str]:
    """`metric.<name>` tags: the trial's evaluation at its best step, each number once."""
    return {f"metric.{k}": str(v) for k, v in metrics.items() if "/" in k and not k.startswith(_NOT_METRIC_TAGS)}


def _version_tags(sweep: SweepConfig, state: dict, row: dict, metrics: dict, parent_params: dict, score: float,
                  manifest: dict) -> dict:
    from uda_core.data.store import has_target_labels

    m = sweep.objective.metrics[0]
    tags = {
        "sweep": sweep.name, "sweep_path": state["path"], "trial_id": row["trial_id"],
        "trial_step": str(row["best_step"]),
        "trial_key": f"{state['experiment_id']}/{row['trial_id']}/{row['best_step']}", "method": row["method"],
        "selected_by": m, "objective_mode": sweep.objective.modes[0],
        "objective_value_in_sweep": str(row[f"best/{m}"]), "objective_value_reevaluated": str(score),
        "objective_is_oracle": str(N.is_oracle(m)).lower(),
        "data.target_labels": manifest.get("target_labels", "simulated"),
        # Metrics needing target labels keep their oracle/ prefix: on a real survey they do not exist, and the
        # version says why instead of silently lacking them.
        **_metric_tags(metrics),
        **({} if has_target_labels(manifest) else {"metric.oracle": "none: the target has no labels"}),
        "data.fingerprint": parent_params.get("data.fingerprint", "unknown"),
        **{k: v for k, v in parent_params.items() if k.startswith(("git.", "version."))},
        **{f"param.{k}": str(v) for k, v in row["params"].items()},
        **selection_tags(m),
    }
    return {k: v[:5000] for k, v in tags.items()}


def _num(v) -> str:
    return f"{v:.4f}" if _finite(v) else "n/a"


def _gain(trial_value, baseline_value) -> str:
    return f"{trial_value - baseline_value:+.4f}" if _finite(trial_value) and _finite(baseline_value) else "n/a"


def _description(sweep: SweepConfig, state: dict, row: dict, rows: list[dict], run, score: float,
                 labelled: bool) -> str:
    """The version's markdown description, the first thing the registry page shows: the objective, the oracle
    numbers when the target has labels, the difference to each of the sweep's baselines, and where the trial is."""
    m = sweep.objective.metrics[0]
    # (label, key of the value in a trial row): the objective at the trial's best checkpoint, oracle numbers there.
    lines = [(f"{k} ({'oracle, ' if N.is_oracle(k) else ''}{md})", f"best/{k}")
             for k, md in zip(sweep.objective.metrics, sweep.objective.modes)]
    if labelled:
        lines += [(f"{k} (oracle, max)", f"at_best/{k}")
                  for k in (N.ORACLE_H, N.ORACLE_ACC) if k not in sweep.objective.metrics]
    baselines = [r for r in rows if r["kind"] == "baseline"]
    # A difference, not a "gain": for a metric to minimise, negative is better (each row says its direction).
    table = ["| | this trial | " + " | ".join(f"this trial − {b['method']}" for b in baselines) + " |",
             "|---|---:|" + "---:|" * len(baselines)]
    for label, key in lines:
        table.append(f"| {label} | {_num(row.get(key))} | "
                     + " | ".join(_gain(row.get(key), b.get(key)) for b in baselines) + " |")
    link = f"[{run.info.run_name}]({run_url(state['experiment_id'], run.info.run_id)})"
    return "\n".join([
        f"**{m} = {_num(row.get(f'best/{m}'))}** in sweep `{sweep.name}` ({_num(score)} re-evaluated)", "",
        *table, "",
        f"From run {link} (Ray trial `{row['trial_id']}`, {row['method']}) at step {row['best_step']}.",
    ])


def _show_version_on_model(client, model_id: str, model_name: str, version: str) -> None:
    """List the version on its logged model's page (the MLflow UI reads the logged model's
    `mlflow.modelVersions` tag). A tracking server sets it in create_model_version; a database store does not."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if not any(v.get("name") == model_name and str(v.get("version")) == version for v in listed):
        listed.append({"name": model_name, "version": version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})


def _check_model_name(model_name: str, where: str) -> None:
    """MLflow's rule for registered model names (no / or :, not blank, no path tricks), plus ' (it breaks registry
    searches) and @ (it reads as an alias in models:/ URIs); checked here so a typo fails without importing MLflow."""
    if not model_name.strip() or any(c in model_name for c in "/:'@") or model_name.strip() in {".", ".."}:
        raise ConfigError(f"{where} {model_name!r}: a registered model name must not be blank or contain / : ' or @; "
                          "choose a name such as my_sweep_model")


def promote(name: str, *, storage: str = "runs/sweeps", workdir: Path | None = None, trial_id: str | None = None,
            model_name: str | None = None, force: bool = False, dry_run: bool = False,
            min_source_val_acc: float | None = None) -> Promotion:
    from .run import open_sweep

    if model_name is not None:  # before the sweep is even read
        _check_model_name(model_name, "--model-name")
    exp_dir, sweep, state = open_sweep(name, storage, workdir)
    # MLflow and torch only once the sweep exists: a mistyped name fails in a second.
    import mlflow
    from mlflow.exceptions import MlflowException

    from uda_core.data.store import has_target_labels
    from uda_core.inference import export_classifier
    from uda_core.train import load_data

    from .finalists import log_trial_model, model_metric_keys, trial_run

    floor = sweep.objective.min_source_val_acc if min_source_val_acc is None else min_source_val_acc
    row, metrics, ckpt, rows = _pick(exp_dir, sweep, trial_id, floor)
    if model_name is None:
        model_name = sweep.tracking.model_name or sweep.name
        _check_model_name(model_name, f"sweep {sweep.name}: tracking.model_name (or its name)")
    metric, mode = sweep.objective.metrics[0], sweep.objective.modes[0]
    uri = state["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    run = trial_run(client, state["experiment_id"], row["trial_id"])
    if run is None:
        raise PromotionRefused(f"trial {row['trial_id']} has no MLflow run in {uri}; was the store moved?")
    data = load_data(sweep.run, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        export_classifier(ckpt, Path(tmp) / "classifier", data)
        score = _score(Path(tmp) / "classifier", data, sweep, metric)
    if not math.isfinite(score):
        raise PromotionRefused(f"trial {row['trial_id']}: {metric} re-evaluated to {score}; not promoted")
    parent_params = client.get_run(state["parent_run_id"]).data.params
    tags = _version_tags(sweep, state, row, metrics, parent_params, score, data.manifest)
    description = _description(sweep, state, row, rows, run, score, has_target_labels(data.manifest))
    result = Promotion(model_name, row["trial_id"], row["best_step"], metric, mode, score, dry_run=dry_run, tags=tags)

    def decide(champion) -> None:
        # The sqlite store returns versions as int, the REST server as str: compare as str.
        result.champion_before = str(champion.version) if champion else None
        if champion is None:
            result.became_champion, result.reason = True, "there was no champion"
        elif result.version is not None and result.champion_before == str(result.version):
            result.became_champion, result.reason = True, "it already is the champion"
        else:
            result.champion_score = _champion_score(client, model_name, champion, data, sweep, metric)
            beats = result.champion_score is not None and _better(score, result.champion_score, mode)
            vs = f"{metric} {score:.4f} vs champion's {result.champion_score:.4f}" \
                if result.champion_score is not None else "the champion cannot be scored on this sweep's data"
            result.became_champion = beats or force
            result.reason = (f"{vs}, re-evaluated on {sweep.name}'s data" if not force or beats
                             else f"--force ({vs})")

    if dry_run:
        existing = _version_of(client, model_name, tags["trial_key"])
        result.version = existing.version if existing else None
        decide(_champion(client, model_name))
        return result

    with _registry_lock(exp_dir.parent, model_name):
        existing = _version_of(client, model_name, tags["trial_key"])
        if existing is None:
            model = log_trial_model(client, uri, run, ckpt, row["best_step"], model_metric_keys(sweep, run))
            try:
                client.create_registered_model(model_name,
                                               description="galaxy classifiers promoted from uda-sweep sweeps")
            except MlflowException as e:
                _raise_if_refused(e)  # else it exists
            existing = client.create_model_version(model_name, model.uri, run_id=run.info.run_id, tags=tags,
                                                   description=description, model_id=model.model_id)
        if existing.source.startswith("models:/m-"):  # also when found again: an earlier promote may have died here
            _show_version_on_model(client, existing.source.removeprefix("models:/"), model_name, str(existing.version))
        result.version = str(existing.version)
        client.set_registered_model_alias(model_name, CHALLENGER, result.version)
        decide(_champion(client, model_name))
        if result.became_champion and result.champion_before != result.version:
            if result.champion_before is not None:
                client.set_model_version_tag(model_name, result.version, "previous_champion",
                                             str(result.champion_before))
            client.set_model_version_tag(model_name, result.version, "champion_reason", result.reason[:5000])
            client.set_registered_model_alias(model_name, CHAMPION, result.version)  # the one atomic switch
    return result


def rollback(model_name: str, tracking_uri: str) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from_version, to_version)."""
    from .tracking_uri import existing_store

    store = existing_store(tracking_uri)  # before mlflow loads: a missing store fails in a second
    from .tracking import read_client

    client = read_client(store)
    registered_model(client, model_name, f"rollback {model_name}", tracking_uri)
    current = _champion(client, model_name)
    if current is None:
        raise ConfigError(f"model {model_name!r} in {tracking_uri} has no {CHAMPION} alias: nothing to roll back "
                          f"({_what_is_registered(client, model_name)})")
    previous = current.tags.get("previous_champion")
    if previous is None:
        raise ConfigError(f"{model_name} version {current.version} was the first {CHAMPION}: there is no earlier one")
    _version(client, model_name, previous, f"rollback {model_name}: the {CHAMPION} before version {current.version}")
    client.set_model_version_tag(model_name, str(current.version), "rolled_back", "true")
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    return str(current.version), str(previous)
