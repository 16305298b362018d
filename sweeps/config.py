"""The sweep file: one YAML per sweep, validated whole before Ray, Optuna or MLflow start.

Sections follow Ray Tune's split by concern: what to train (`run`, the uda_core run config every trial starts
from), what to search (`search`), what to optimise (`objective`), how to schedule (`scheduler`, `resources`,
`failure`), where results go (`storage`, `tracking`). Unknown keys are errors that name the dotted key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uda_core.config import DIRECTIONS, RunConfig, _format, check_top_level, did_you_mean, read_yaml
from uda_core.errors import ConfigError
from uda_core.evaluation.names import OBJECTIVES, is_oracle

__all__ = ["SweepConfig", "load_sweep", "parse_sweep", "DEFAULT_OBJECTIVE", "ALL_METHODS",
           "check_target_labels", "has_labelled_target"]

# What a sweep optimises unless told otherwise. It moves only by the protocol bench/selection.py runs
# (selection.choose_default): chosen on the first seed's sweeps and confirmed on every held-out one. The decision
# and each criterion's measured regret are in sweeps/selection_benchmark.json (README, "Choosing the objective"),
# and a test keeps this constant in step with that file.
DEFAULT_OBJECTIVE = "label_free/combined"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


ALL_METHODS = "all"  # search.space: every method that trains without target labels


class SearchConfig(_Strict):
    # Default: the run's method. A list of methods, or "all", is one joint space: each trial chooses its method,
    # then that method's own parameters (search_spaces/joint.py).
    space: str | list[str] | None = None
    algorithm: Literal["tpe", "random"] = "tpe"  # random: the benchmark's baseline
    num_trials: int = Field(8, ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    seed_with_defaults: bool = True  # evaluate the run config's own values first
    # TPE samples at random until this many trials finished (Optuna's default 10 would make a sweep of 8 trials
    # pure random search). Default: a quarter of the trials, between 3 and 10.
    startup_trials: int | None = Field(None, ge=1)

    @field_validator("space", mode="before")
    @classmethod
    def _methods(cls, v):
        from uda_core.methods import PARAMS  # the method names, without torch

        if v is None or v == ALL_METHODS:
            return v
        names = v if isinstance(v, list) else [v]
        if not names or not all(isinstance(m, str) for m in names):
            raise ValueError(f"give a method, a list of methods or {ALL_METHODS!r}, got {v!r}")
        for m in names:
            if m not in PARAMS:
                raise ValueError(f"{m!r} is not a method{did_you_mean(m, PARAMS)}; choose from {sorted(PARAMS)}, "
                                 f"a list of them, or {ALL_METHODS!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"each method once, got {names}")
        return v

    @property
    def n_startup(self) -> int:
        return self.startup_trials or min(10, max(3, self.num_trials // 4))
    overrides: dict[str, Any] = Field(default_factory=dict)


class ObjectiveConfig(_Strict):
    metric: str | list[str] = DEFAULT_OBJECTIVE
    mode: Literal["max", "min"] | list[Literal["max", "min"]] | None = None  # default: the metric's own direction
    # Guard: a checkpoint whose source validation accuracy fell below this never counts as a trial's best
    # (adaptation losses can wreck the classifier while a label-free score still looks good).
    min_source_val_acc: float = Field(0.5, ge=0.0, le=1.0)

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        if self.mode is None:
            return [OBJECTIVES[m] for m in self.metrics]
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def oracle(self) -> bool:
        return any(is_oracle(m) for m in self.metrics)

    @model_validator(mode="after")
    def _known(self) -> "ObjectiveConfig":
        if not self.metrics:
            raise ValueError("metric: give at least one metric")
        for m in self.metrics:
            if m not in OBJECTIVES:
                raise ValueError(f"metric: {m!r} is not a metric a sweep can optimise{did_you_mean(m, OBJECTIVES)}; "
                                 f"choose from {sorted(OBJECTIVES)}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metric: each metric once, got {self.metrics}")
        if self.mode is not None and len(self.modes) != len(self.metrics):
            raise ValueError(f"mode: one mode per metric, got {len(self.modes)} modes for {len(self.metrics)} metrics")
        for i, (m, mode) in enumerate(zip(self.metrics, self.modes)):
            if mode != OBJECTIVES[m]:  # the search would hunt for the worst checkpoints
                key = "mode" if isinstance(self.mode, str) else f"mode[{i}]"
                raise ValueError(f"{key}: {mode!r} contradicts metric {m!r}, for which {DIRECTIONS[OBJECTIVES[m]]} is "
                                 f"better; set {key}: {OBJECTIVES[m]}, or leave mode out (each metric's own direction)")
        return self


class SchedulerConfig(_Strict):
    type: Literal["asha", "none"] = "asha"
    # Training steps before a trial can be stopped; default: the first evaluation from 3/4 of run.train.steps
    # (SweepConfig.grace_period). Earlier, ASHA stops trials on noise: bench/search_efficiency measured how well a
    # trial's objective so far ranks trials as their final one does (Spearman over 3 x 48 random-search trials,
    # `tiny` data): 0.40 at 1/4 of the budget, 0.63 at 1/2, 0.81 at 3/4. With a larger target test
    # set an earlier rung may do; that benchmark prints the same correlation for any data set.
    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0, le=10.0)  # at a rung, the best third goes on (the one measured)


class ResourcesConfig(_Strict):
    cpus_per_trial: int = Field(1, ge=1, le=256)
    gpus_per_trial: float = Field(0.0, ge=0.0, le=8.0)
    concurrency: int = Field(2, ge=1, le=10_000)  # trials running at once
    # A finished trial's worker process runs the next trial (Ray Tune's reuse_actors): torch, the mapped data and
    # the MLflow client stay loaded: the next trial starts within about a second, not after about 6 s. false: a
    # fresh process per trial, as before (what bench/search_efficiency.py --overhead compares against).
    reuse_workers: bool = True

    @field_validator("gpus_per_trial")
    @classmethod
    def _packs(cls, v):
        # Ray packs fractional GPUs per device without memory isolation: only fractions that divide 1 waste nothing.
        if 0 < v < 1 and not math.isclose(1 / v, round(1 / v), rel_tol=1e-6):
            raise ValueError("a fraction of a GPU must divide 1 (0.5, 0.25, ...)")
        if v > 1 and not float(v).is_integer():
            raise ValueError("more than one GPU must be a whole number")
        return v


class FailureConfig(_Strict):
    max_retries: int = Field(1, ge=0, le=100)  # per trial, each from its last checkpoint


class StorageConfig(_Strict):
    path: str = "runs/sweeps"  # Ray Tune results and checkpoints, the Optuna study, the sweep file copy
    # Per trial: its best checkpoint (what promote exports) and the one a resume restarts from (sweeps/prune.py),
    # or every evaluation's.
    keep_checkpoints: Literal["best_and_latest", "all"] = "best_and_latest"

    @field_validator("path")
    @classmethod
    def _filesystem(cls, v):
        if "://" in v:
            raise ValueError("a folder path is needed (on a cluster, a shared mount such as NFS); "
                             "object-store URIs are not supported yet")
        return v



class TrackingConfig(_Strict):
    uri: str | None = None  # default: sqlite:///mlflow.db in the working directory (HTTP on a cluster)

    @field_validator("uri")
    @classmethod
    def _store(cls, v):
        # Trials run in their own folders (and on other nodes): a relative file store would be a different store.
        if v is not None and not v.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql")):
            raise ValueError("use sqlite:///PATH, a database URL or an MLflow server's http(s):// address")
        return v

    @model_validator(mode="after")
    def _no_password(self):
        # Here rather than in `_store`: an error there would quote the URI, password and all.
        from .auth import password_in_uri

        if self.uri is not None and (problem := password_in_uri(self.uri, "uri")):
            raise ValueError(problem)
        return self

    experiment: str | None = None  # default: the sweep's name
    artifacts: str = "mlartifacts"  # artifact root for a local (sqlite) store; a server stores its own
    embedding: Literal["tsne", "pca", "none"] = "tsne"  # picture of source vs target features at each new best
    finalists: int = Field(1, ge=0, le=100)  # best trials whose model is logged at the end
    model_name: str | None = None  # registered model `uda-sweep promote` writes to; default: the sweep's name


class SweepConfig(_Strict):
    name: str
    description: str = ""
    run: RunConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    failure: FailureConfig = Field(default_factory=FailureConfig)
    baselines: list[str] = Field(default_factory=list)  # methods trained once with defaults, for comparison
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError(f"{v!r}: use letters, digits, '_', '-', '.' "
                             "(it names folders, the MLflow experiment and the study)")
        return v

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v):
        from uda_core.methods import PARAMS  # the method names, without torch

        for b in v:
            if b not in PARAMS:
                raise ValueError(f"{b!r} is not a method{did_you_mean(b, PARAMS)}; choose from {sorted(PARAMS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"each baseline once, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SweepConfig":
        steps, every = self.run.train.steps, self.run.train.eval_every
        g = self.scheduler.grace_period
        if g is not None and not every <= g <= steps:
            raise ValueError(f"scheduler.grace_period: must lie between run.train.eval_every={every} and "
                             f"run.train.steps={steps} (ASHA compares trials at evaluations), got {g}")
        if self.run.train.device == "cuda" and self.resources.gpus_per_trial == 0:
            raise ValueError("run.train.device: 'cuda' needs resources.gpus_per_trial > 0 (Ray hides GPUs from "
                             "trials that did not ask for one); or use device 'auto'")
        votes = [m for m in self.objective.metrics if "/votes/" in m]
        if votes and not self.run.model.vote_head:
            raise ValueError(f"objective.metric: {votes[0]!r} scores the vote head, which this sweep does not train; "
                             "set run.model.vote_head: true or choose another metric")
        self._check_methods()
        return self

    def _check_methods(self) -> None:
        from search_spaces import METHOD_KEY
        from uda_core.methods.params import TRAINS_ON_TARGET_LABELS

        space, run_method = self.search.space, self.run.method.name
        if isinstance(space, str) and space != ALL_METHODS and space != run_method:
            raise ValueError(f"search.space: {space!r} searches another method than run.method.name="
                             f"{run_method!r}; make them equal (or drop search.space)")
        if not isinstance(space, list) and space != ALL_METHODS:
            return
        if run_method not in self.methods:  # its values are the first trial (seed_with_defaults)
            raise ValueError(f"search.space: run.method.name={run_method!r} is not among the searched methods "
                             f"{self.methods}; set it to the one whose settings the sweep should try first")
        oracles = [m for m in self.methods if m in TRAINS_ON_TARGET_LABELS]
        if len(self.methods) > 1 and oracles:
            raise ValueError(f"search.space: {oracles[0]!r} trains on target labels: a ceiling to compare against, "
                             "never a method a sweep may choose; remove it (or sweep it on its own)")
        if METHOD_KEY in self.search.overrides:
            raise ValueError(f"search.overrides.{METHOD_KEY}: the methods a sweep searches are set by search.space; "
                             "list them there")

    @property
    def methods(self) -> list[str]:
        """The methods the sweep searches: the run's, or those of search.space (several: the method is searched)."""
        from uda_core.methods.params import PARAMS, TRAINS_ON_TARGET_LABELS

        space = self.search.space
        if space is None:
            return [self.run.method.name]
        if space == ALL_METHODS:
            return [m for m in PARAMS if m not in TRAINS_ON_TARGET_LABELS]
        return [space] if isinstance(space, str) else list(space)

    @property
    def grace_period(self) -> int:
        steps, every = self.run.train.steps, self.run.train.eval_every
        return self.scheduler.grace_period or min(steps, math.ceil(0.75 * steps / every) * every)


def parse_sweep(raw: Any, source: str) -> SweepConfig:
    """Validate a sweep dict: the schema, then the search space and its overrides against the run config."""
    from search_spaces import search_space

    raw = check_top_level(source, raw, "sweep", "uda-sweep run",
                          empty="a sweep file needs at least name and run (the run config every trial starts from), "
                                "usually also search and objective: start from an example in sweeps/configs/*.yaml, "
                                "e.g. sweeps/configs/quickstart.yaml",
                          mapping="keys name, run, search, objective, ...")
    try:
        sweep = SweepConfig(**raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    base = sweep.run.model_dump()
    space = search_space(sweep.methods)
    try:
        space.check(base)
        space.with_overrides(sweep.search.overrides, base)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return sweep


def load_sweep(path: str | Path) -> SweepConfig:
    return parse_sweep(read_yaml(path, "sweep file (examples: sweeps/configs/*.yaml)"), str(path))


def _data_set_manifest(sweep: SweepConfig, workdir: Path | None) -> tuple[Path, dict] | None:
    """The folder and manifest of the sweep's existing data set (`run.data.path`, relative to `workdir`), or None for
    a simulated pair, which is generated later and always has target labels."""
    from uda_core.data.store import verify

    if not sweep.run.data.path:
        return None
    folder = Path(workdir or Path.cwd()) / sweep.run.data.path
    return folder, verify(folder, full=False)  # file sizes too: a truncated data set fails in a second


def has_labelled_target(sweep: SweepConfig, workdir: Path | None = None) -> bool:
    """Whether the sweep's target has class labels, so oracle/ metrics exist (a DataError if its data set is gone)."""
    from uda_core.data.store import has_target_labels

    found = _data_set_manifest(sweep, workdir)
    return found is None or has_target_labels(found[1])


def check_target_labels(sweep: SweepConfig, source: str, workdir: Path | None = None) -> None:
    """Refuse, before launch, what needs target labels the sweep's data set lacks: an oracle/ objective on an
    unlabelled target; a run or baseline trained on target labels when they are absent or for evaluation only.
    Reads only the data set's manifest; each error names the sweep file's key."""
    from uda_core.config import MethodConfig
    from uda_core.data.store import has_target_labels
    from uda_core.label_checks import check_target_label_use

    found = _data_set_manifest(sweep, workdir)
    if found is None:
        return
    folder, manifest = found
    oracle = [m for m in sweep.objective.metrics if is_oracle(m)]
    if oracle and not has_target_labels(manifest):
        raise ConfigError(f"{source}: objective.metric: {oracle[0]!r} needs target labels, but the target of {folder} "
                          f"has no labels (manifest target_labels: 'none'); optimise a label-free metric "
                          f"such as {DEFAULT_OBJECTIVE!r}")
    try:
        check_target_label_use(sweep.run, manifest, str(folder), prefix="run.")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for b in sweep.baselines:  # refused rather than skipped: a sweep runs exactly the baselines its file lists
        run = sweep.run.model_copy(update={"method": MethodConfig(name=b)})
        try:
            check_target_label_use(run, manifest, str(folder))
        except ConfigError as e:
            raise ConfigError(f"{source}: baselines: {b!r} cannot be trained on this data set ({e}); "
                              "remove it from baselines") from None
