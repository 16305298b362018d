"""The one validated configuration of a training run, loadable from YAML.

Every section forbids unknown keys, so a typo fails at load time with the key's dotted path instead of being
silently ignored. Method hyperparameters are validated by the method's own `Params` model (the only copy of their
defaults), so the config file, the search space and the code cannot disagree about them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = ["DataConfig", "ModelConfig", "MethodConfig", "OptimConfig", "TrainConfig", "EvalConfig", "RunConfig", "load_config", "read_yaml"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    task: str = "universal"
    # A survey: a preset name, a survey YAML file (a relative path is read from the working directory) or an
    # inline mapping with the keys of a survey file (uda_core/data/surveys.py SurveyDefinition).
    source: str | dict[str, Any] = "decals"
    target: str | dict[str, Any] = "sdss"
    size: Literal["tiny", "small", "default", "large"] = "small"
    seed: int = Field(0, ge=0)
    label_noise: float = Field(0.0, ge=0.0, lt=0.5)
    root: str = "data"
    path: str | None = None  # an existing data set folder; the fields above are then ignored
    few_shot_per_class: int = Field(0, ge=0, le=100)  # labelled target stamps per shared class (semi-supervised)

    @model_validator(mode="after")
    def _known_task(self) -> "DataConfig":
        from .data.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not a preset; choose one of {sorted(TASKS)}")
        return self

    @field_validator("source", "target", mode="before")
    @classmethod
    def _known_survey(cls, value, info):
        from .data.surveys import SURVEYS, SurveyDefinition, get_survey, is_survey_file

        if isinstance(value, dict):
            SurveyDefinition.model_validate(value)  # its errors nest here: data.source.<key>
        elif not isinstance(value, str):
            raise ValueError(f"give a preset name, a survey YAML file or a mapping, not {type(value).__name__}")
        elif value in SURVEYS or is_survey_file(value):
            get_survey(value)  # a bad file is a ConfigError naming the file and the key
        else:
            raise ValueError(f"{info.field_name}={value!r} is neither a preset ({', '.join(sorted(SURVEYS))}) "
                             "nor a survey YAML file (a path ending .yaml or .yml)")
        return value


class ModelConfig(_Strict):
    backbone: Literal["cnn", "resnet"] = "cnn"
    width: int = Field(32, ge=4, le=512)
    depth: int = Field(4, ge=1, le=8)
    feature_dim: int = Field(128, ge=8, le=4096)
    temperature: float = Field(0.05, gt=0.0, le=1.0)  # cosine classifier: logits = cos / T
    domain_bn: bool = False  # separate batch-norm statistics per domain (DeepAstroUDA's README names it)
    # A Dirichlet head on the data set's Galaxy Zoo vote counts (uda_core/votes.py), trained beside the class head.
    vote_head: bool = False


class MethodConfig(_Strict):
    name: str = "source_only"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_params(self) -> "MethodConfig":
        from .methods import get_method

        cls = get_method(self.name)
        try:
            cls.Params(**self.params)
        except ValidationError as e:
            raise ValueError(_format(e, prefix="params")) from None
        return self

    def parsed(self):
        from .methods import get_method

        return get_method(self.name).Params(**self.params)


class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=0.1)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD (Nesterov) only
    schedule: Literal["inv", "cosine", "constant"] = "cosine"
    batch_size: int = Field(64, ge=2, le=4096)  # per domain


class TrainConfig(_Strict):
    steps: int = Field(1500, ge=1)
    eval_every: int = Field(250, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = Field(None, ge=1)
    augment: bool = True  # random flips and 90-degree rotations, done in batch
    keep_checkpoints: int = Field(2, ge=1)
    progress: bool = True
    # Weight of the Dirichlet-multinomial vote loss (model.vote_head). It is summed over questions and grows with
    # the number of volunteers (about 40 per galaxy), so it is scaled down to sit beside a cross-entropy of ~1.
    vote_weight: float = Field(0.05, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _eval_fits(self) -> "TrainConfig":
        if self.eval_every > self.steps:
            raise ValueError(f"eval_every={self.eval_every} exceeds steps={self.steps}; no evaluation would run")
        return self


ANOMALY_SCORES = ("entropy", "neg_max_softmax", "energy", "prototype_distance", "knn_distance")


class EvalConfig(_Strict):
    reject_score: Literal[ANOMALY_SCORES] = "prototype_distance"  # type: ignore[valid-type]
    # "gmm": label-free threshold from a two-component mixture on the target's scores; "rho": DANCE's entropy > rho.
    reject_threshold: Literal["gmm", "rho"] = "gmm"
    rho_frac: float = Field(0.5, gt=0.0, lt=1.0)  # rho = rho_frac * ln K for methods without their own rho
    unknown_clusters: int = Field(2, ge=1, le=50)
    snd_max_samples: int = Field(2000, ge=50)
    dev_max_samples: int = Field(2000, ge=50)  # per domain, for DEV's domain classifier
    agreement_max_samples: int = Field(500, ge=10)  # target stamps seen in all 8 dihedral views
    knn_k: int = Field(5, ge=1, le=100)
    max_source_features: int = Field(2000, ge=50)
    select_by: str = "source_val/acc"  # which evaluation `metrics.json` calls best
    select_mode: Literal["max", "min"] = "max"

    @field_validator("select_by")
    @classmethod
    def _label_free_selection(cls, v):
        # Selecting on target labels would make every reported target number optimistic (DomainBed's oracle).
        allowed = ("source_val/", "source_test/", "label_free/")
        if not v.startswith(allowed):
            raise ValueError(f"{v!r} cannot select models: use a metric under {', '.join(allowed)} (oracle/ needs target labels)")
        return v

    @field_validator("reject_threshold")
    @classmethod
    def _rho_needs_entropy(cls, v, info):
        if v == "rho" and info.data.get("reject_score") != "entropy":
            raise ValueError("reject_threshold 'rho' is DANCE's entropy rule: set reject_score: entropy, or use 'gmm'")
        return v


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _vote_selection(self) -> "RunConfig":
        by = self.eval.select_by
        if "/votes/" in by and not self.model.vote_head:
            raise ValueError(f"eval.select_by: {by!r} scores the vote head; set model.vote_head: true")
        if by.endswith("/votes/nll") and self.eval.select_mode != "min":
            raise ValueError(f"eval.select_mode: {by!r} is a loss (lower is better); set select_mode: min")
        return self


def _format(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the example configs in configs/)"
        lines.append((f"{loc}: " if loc else "") + msg + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and not isinstance(err.get("input"), dict) else ""))
    return "; ".join(lines)


def build_config(raw: dict | None, source: str = "config") -> RunConfig:
    """Validate a plain dict (from YAML or a sweep) into a RunConfig; errors name the key."""
    try:
        return RunConfig(**(raw or {}))
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML file at `path`; a missing file or bad YAML is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None


def load_config(path: str | Path) -> RunConfig:
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with sections data, model, method, optim, train, eval")
    return build_config(raw, str(path))
