"""The one bridge between Ray Tune and the training core: a Tune function trainable around `uda_core.train`.

A trial's config holds only its suggested parameters (dotted run-config keys) or, for a baseline trial,
`{"baseline": <method>}`; everything shared arrives once in a `TrialContext` through `tune.with_parameters`.
At each evaluation the trial logs to its MLflow child run first (metrics, confusion matrices, vote tables with a
vote head, and at a new best the embedding and vote pictures), then reports to Tune with the checkpoint: nothing
may follow the last report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from search_spaces import apply_params
from uda_core.config import build_config
from uda_core.evaluate import Evaluation
from uda_core.evaluation import names as N
from uda_core.methods import get_method
from uda_core.train import TrainingDiverged, train

from .finalists import OBJECTIVE_STATE  # written into each checkpoint, so a restarted trial keeps its best
from .objective import ObjectiveTracker
from .names import OPTUNA_TRIAL, baseline_run_name, search_run_name, trial_params
from .tracking import TrialRun

__all__ = ["TrialContext", "run_trial", "trial_run_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    sweep_name: str
    base: dict  # the sweep's run config as a plain dict
    objective_metrics: tuple[str, ...]
    objective_modes: tuple[str, ...]
    min_source_val_acc: float
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int
    embedding: str  # "tsne", "pca" or "none"
    study_name: str = ""


def trial_run_config(base: dict, config: dict):
    """The validated run config of a trial: the sweep's base with the trial's parameters (or a baseline method)."""
    if "baseline" in config:
        name = config["baseline"]
        raw = apply_params(base, {"method.name": name, "method.params": {},
                                  "model.domain_bn": get_method(name).needs_domain_bn})
    else:
        raw = apply_params(base, trial_params(config))
    return build_config(raw, source="trial config")


def _finite(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def run_trial(config: dict, ctx: TrialContext) -> None:
    # A reused worker (resources.reuse_workers) gets its next trial once this one's thread has ended, and Tune waits
    # TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s) for that before failing the NEXT trial. After an ASHA stop this
    # thread still closes its MLflow run, which can take longer on a busy server. Read by this process at its reset.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    ctx_tune = tune.get_context()
    trial_id, trial_name = ctx_tune.get_trial_id(), ctx_tune.get_trial_name()
    baseline = config.get("baseline")
    cfg = trial_run_config(ctx.base, config)
    cfg.train.threads, cfg.train.progress = ctx.threads, False
    if not baseline:
        cfg.eval.select_by, cfg.eval.select_mode = _core_selection(ctx)
    tags = {"sweep": ctx.sweep_name, "method": cfg.method.name, "kind": "baseline" if baseline else "search",
            "objective": ",".join(ctx.objective_metrics),
            "objective_is_oracle": str(any(N.is_oracle(m) for m in ctx.objective_metrics)).lower()}
    if OPTUNA_TRIAL in config:  # the links optuna-dashboard's "Trial N" and this run share (tag values: strings)
        tags.update({"optuna_trial": str(config[OPTUNA_TRIAL]), "optuna_study": ctx.study_name})
    if baseline:
        run_name = baseline_run_name(baseline)
    elif OPTUNA_TRIAL in config:
        run_name = search_run_name(config[OPTUNA_TRIAL], cfg.method.name)
    else:  # a sweep started before trials carried their Optuna number
        run_name = f"{trial_name} · {cfg.method.name}"
    run = TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_id, run_name,
                   config if baseline else trial_params(config), tags)
    run.set_tags({"ray.node_id": ray.get_runtime_context().get_node_id()})  # where this attempt runs

    checkpoint = tune.get_checkpoint()
    status = "FAILED"
    last_step = [0]
    try:
        if run.previous_failure == "diverged":  # deterministic: a retry from the checkpoint would diverge again
            raise TrainingDiverged("this trial's loss diverged in an earlier attempt; not retried")
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_dir:
            state = json.loads((Path(resume_dir) / OBJECTIVE_STATE).read_text()) if resume_dir else None
            if state:  # a retry (failed trial or lost node) or a resumed sweep: say where this attempt starts
                run.set_tags({"resumed_from_step": state.get("step", "unknown")})
            tracker = ObjectiveTracker(list(ctx.objective_metrics), list(ctx.objective_modes), ctx.min_source_val_acc,
                                       state)
            with tempfile.TemporaryDirectory(prefix=f"{trial_name}-") as workdir:

                def report(ev: Evaluation, checkpoint_dir: Path) -> None:
                    last_step[0] = ev.step
                    values, is_best = tracker.update(ev.step, ev.metrics)
                    (checkpoint_dir / OBJECTIVE_STATE).write_text(json.dumps({**tracker.state(), "step": ev.step}))
                    # MLflow: one objective name for baselines and search trials, so they share a column.
                    run.log_evaluation(ev.step, {**ev.metrics, **_finite(values)}, _evaluation_files(ev),
                                       _best_files(ev, ctx.embedding) if is_best else {})
                    if baseline:  # Tune: baselines are compared, never searched; keep them out of the searcher's metric
                        values = {f"baseline_{k}": v for k, v in values.items()}
                    tune.report({**_finite(ev.metrics), **values, "step": ev.step},
                                checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

                train(cfg, report, Path(workdir), resume_from=Path(resume_dir) if resume_dir else None)
        status = "FINISHED"
    except SystemExit:  # Tune stops a trial (ASHA, also at the full budget) by exiting it inside `tune.report`
        status = "FINISHED"
        if last_step[0] < cfg.train.steps:
            run.set_tags({"stopped_early": "true", "stopped_at_step": last_step[0]})
        raise
    except TrainingDiverged as e:
        run.set_tags({"failure": "diverged", "error": str(e)[:5000]})
        raise
    except BaseException as e:
        run.set_tags({"failure": type(e).__name__, "error": str(e)[:5000]})
        raise
    finally:
        if status == "FINISHED" and run.previous_failure:
            run.clear_tags(("failure", "error"))  # an earlier attempt failed, this retry succeeded
        run.close(status)


def _core_selection(ctx: TrialContext) -> tuple[str, str]:
    """The core keeps its own best checkpoint by a label-free metric; use the objective's when it is one."""
    m, mode = ctx.objective_metrics[0], ctx.objective_modes[0]
    if m.startswith(N.SELECTABLE_PREFIXES):
        return m, mode
    return N.SOURCE_VAL_ACC, "max"


def _evaluation_files(ev: Evaluation) -> dict:
    from uda_core.evaluation.plots import plot_confusion

    files: dict = {}
    for split, conf in ev.confusion.items():
        files[f"confusion/{split}.json"] = conf
        files[f"confusion/{split}.png"] = lambda p, c=conf, s=split: plot_confusion(c, p, title=f"{s}, step {ev.step}")
    # Vote head only: the per-question tables and confusion matrices as JSON at every step; their pictures
    # (a few seconds of matplotlib per split) only at a new best, in _best_files.
    for split, votes in ev.votes.items():
        files[f"votes/{split}.json"] = votes
    return files


def _best_files(ev: Evaluation, embedding: str) -> dict:
    from uda_core.evaluation.plots import (
        plot_accuracy_by_bin,
        plot_confusion,
        plot_embedding,
        plot_vote_confusions,
        plot_vote_table,
    )

    files: dict = {"evaluation.json": ev.to_json()}
    for split, conf in ev.confusion.items():
        files[f"confusion_{split}.png"] = lambda p, c=conf, s=split: plot_confusion(
            c, p, title=f"{s}, best step {ev.step}")
    for split, votes in ev.votes.items():  # vote head only; the target's split is named oracle_target_test
        files[f"votes_confusion_{split}.png"] = lambda p, v=votes, s=split: plot_vote_confusions(
            v, p, title=f"{s} votes, best step {ev.step}")
        files[f"votes_table_{split}.png"] = lambda p, v=votes, s=split: plot_vote_table(
            v, p, title=f"{s} votes, best step {ev.step}")
    if embedding != "none" and ev.embedding:
        e = ev.embedding
        unknown = e.get(N.EMBEDDING_ORACLE_UNKNOWN)  # absent when the target has no labels: colour by domain only
        note = "the target has no labels" if unknown is None else "oracle: unknowns marked by true label"
        files["embedding.png"] = lambda p: plot_embedding(
            e["source"], e["target"], unknown, p, method=embedding,
            title=f"source vs target features, step {ev.step} ({embedding}; {note})")
    if ev.acc_by_mag:  # oracle: empty when the target has no labels
        files["oracle_accuracy_vs_r_mag.png"] = lambda p: plot_accuracy_by_bin(
            ev.acc_by_mag, p, "r magnitude (target test, shared classes)", title="oracle: target accuracy vs magnitude")
    return files
