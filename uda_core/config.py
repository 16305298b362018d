"""The one validated configuration of a training run, loadable from YAML.

Every section forbids unknown keys, so a typo fails at load time with the key's dotted path instead of being
silently ignored. Method hyperparameters are validated by the method's own `Params` model (the only copy of their
defaults), so the config file, the search space and the code cannot disagree about them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = ["DataConfig", "ModelConfig", "MethodConfig", "OptimConfig", "TrainConfig", "EvalConfig", "RunConfig",
           "load_config", "read_yaml"]


class _Strict(BaseModel):
    # NaN passes no range check meaningfully (every comparison is false): refuse it, and inf, as "not finite".
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def did_you_mean(value: Any, choices) -> str:
    """' (did you mean 'x'?)' when `value` is a near miss of one of `choices`, else ''."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class DataConfig(_Strict):
    task: str = "universal"
    # A survey: a preset name, a survey YAML file (a relative path is read from the working directory) or an
    # inline mapping with the keys of a survey file (uda_core/data/surveys.py SurveyDefinition).
    source: str | dict[str, Any] = "decals"
    target: str | dict[str, Any] = "sdss"
    size: Literal["tiny", "small", "bench", "default", "large"] = "small"
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

    @model_validator(mode="after")
    def _resnet_width(self) -> "ModelConfig":
        # Measured with torch 2.13 on CPU: residual blocks narrower than 8 channels crash the process (double free)
        # in the first backward pass, with no Python error to report.
        if self.backbone == "resnet" and self.width < 8:
            raise ValueError(f"width: the resnet backbone needs width >= 8, got {self.width} (narrower blocks crash "
                             "PyTorch's CPU kernels); use width 8 or more, or backbone: cnn")
        return self


class MethodConfig(_Strict):
    name: str = "source_only"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_method(cls, v):
        from .methods import PARAMS

        if v not in PARAMS:
            raise ValueError(f"unknown method {v!r}{did_you_mean(v, PARAMS)}; choose one of {sorted(PARAMS)}")
        return v

    @model_validator(mode="after")
    def _valid_params(self) -> "MethodConfig":
        from .methods import method_params  # light: no torch

        try:
            method_params(self.name)(**self.params)
        except ValidationError as e:
            raise ValueError(_format(e, prefix="params")) from None
        return self

    def parsed(self):
        from .methods import method_params

        return method_params(self.name)(**self.params)


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


DIRECTIONS = {"max": "higher", "min": "lower"}  # what each mode calls better
ANOMALY_SCORES = ("entropy", "neg_max_softmax", "energy", "prototype_distance", "knn_distance")


class EvalConfig(_Strict):
    reject_score: Literal[ANOMALY_SCORES] = "prototype_distance"  # type: ignore[valid-type]
    # How many target galaxies the rule calls unknown, all without target labels. "mpe": the unknown fraction
    # estimated against held-out source scores (uda_core.evaluation.rejection; does not over-reject a unimodal
    # score); "gmm": a two-component mixture on the target's scores; "rho": DANCE's entropy > rho. A method with its
    # own rule (OVANet's per-class one-vs-all heads) uses that instead.
    reject_threshold: Literal["mpe", "gmm", "rho"] = "mpe"
    rho_frac: float = Field(0.5, gt=0.0, lt=1.0)  # rho = rho_frac * ln K for methods without their own rho
    unknown_clusters: int = Field(2, ge=1, le=50)
    snd_max_samples: int = Field(2000, ge=50)
    dev_max_samples: int = Field(2000, ge=50)  # per domain, for DEV's domain classifier
    agreement_max_samples: int = Field(500, ge=10)  # target stamps seen in all 8 dihedral views
    knn_k: int = Field(5, ge=1, le=100)
    max_source_features: int = Field(2000, ge=50)
    # Every metric of a split larger than this is computed on a fixed random sample of this many of its stamps
    # (the same for every trial and step: UdaData.capped), so one evaluation costs the same at 250k stamps as at 20k.
    split_max_samples: int = Field(20000, ge=100)
    select_by: str = "source_val/acc"  # which evaluation `metrics.json` calls best
    select_mode: Literal["max", "min"] = "max"

    @field_validator("select_by")
    @classmethod
    def _label_free_selection(cls, v):
        from .evaluation.names import OBJECTIVES, SELECTABLE_PREFIXES

        # Selecting on target labels would make every reported target number optimistic (DomainBed's oracle).
        if not v.startswith(SELECTABLE_PREFIXES):
            raise ValueError(f"{v!r} cannot select models: use a metric under {', '.join(SELECTABLE_PREFIXES)} "
                             "(oracle/ needs target labels)")
        selectable = sorted(m for m in OBJECTIVES if m.startswith(SELECTABLE_PREFIXES))
        if v not in selectable:  # a misspelt name would never be found, so no evaluation would be marked best
            raise ValueError(f"{v!r} is not a metric an evaluation reports{did_you_mean(v, selectable)}; "
                             f"choose one of {selectable}")
        return v

    @field_validator("reject_threshold")
    @classmethod
    def _rho_needs_entropy(cls, v, info):
        if v == "rho" and info.data.get("reject_score") != "entropy":
            raise ValueError("reject_threshold 'rho' is DANCE's entropy rule: set reject_score: entropy, or use 'mpe'")
        return v


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _selection(self) -> "RunConfig":
        from .evaluation.names import OBJECTIVES

        by = self.eval.select_by
        if "/votes/" in by and not self.model.vote_head:
            raise ValueError(f"eval.select_by: {by!r} scores the vote head; set model.vote_head: true")
        # Here, not in EvalConfig: the sweep's trainable assigns select_by and select_mode one after the other.
        better = OBJECTIVES[by]
        if self.eval.select_mode != better:
            raise ValueError(f"eval.select_mode: {self.eval.select_mode!r} contradicts eval.select_by {by!r}, for "
                             f"which {DIRECTIONS[better]} is better; set select_mode: {better}")
        return self


def _format(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the example configs in configs/)"
        got = f" (got {err.get('input')!r})"
        shown = err["type"] == "extra_forbidden" or isinstance(err.get("input"), dict) or got[6:-1] in msg
        lines.append((f"{loc}: " if loc else "") + msg + ("" if shown else got))
    return "; ".join(lines)


def build_config(raw: dict | None, source: str = "config") -> RunConfig:
    """Validate a plain dict (from YAML or a sweep) into a RunConfig; errors name the key."""
    try:
        return RunConfig(**(raw or {}))
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        lines: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` brings keys the mapping may override
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _DuplicateKey(f"key {key!r} is given twice (lines {lines[key]} and {line}); YAML would "
                                        "silently keep the last: delete one")
                lines[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                pass
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The parsed YAML file at `path`; a missing file, bad YAML or a duplicate key is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a {what}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what}")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; give a {what}") from None


RUN_SECTIONS = tuple(RunConfig.model_fields)
# The project's YAML files, told apart by their top-level keys: what each is (with its examples) and how to use it.
FILE_KINDS = {
    "run": ("a run config (sections data, model, method, optim, train, eval: configs/*.yaml)",
            "train it with `uda-sweep train {path} --out DIR`"),
    "sweep": ("a sweep file (keys name, run, search, objective, ...: sweeps/configs/*.yaml)",
              "run it with `uda-sweep run {path}`"),
    "cluster": ("a Ray cluster file (keys cluster_name, provider, ...: cluster.yaml)",
                "check it with `uda-sweep cluster-check {path}`"),
}


def yaml_kind(raw: Any) -> str | None:
    """"run", "sweep" or "cluster" when a parsed YAML file is plainly that kind of file, else None."""
    if not isinstance(raw, dict) or not raw:
        return None
    keys = set(raw)
    if keys <= set(RUN_SECTIONS):
        return "run"
    if "run" in keys and not keys & set(RUN_SECTIONS):
        return "sweep"
    if keys & {"cluster_name", "provider"}:
        return "cluster"
    return None


def describe_kind(path: str | Path, raw: Any) -> str | None:
    """'PATH is a sweep file (...); run it with ...' for a file of a known kind, else None."""
    kind = yaml_kind(raw)
    if kind is None:
        return None
    what, how = FILE_KINDS[kind]
    return f"{path} is {what}; {how.format(path=path)}"


def wrong_kind_error(path: str | Path, raw: Any, takes: str, command: str) -> ConfigError | None:
    """One sentence instead of a list of unknown keys when `command`, which takes a `takes` file, got another kind."""
    kind = yaml_kind(raw)
    if kind is None or kind == takes:
        return None
    what, how = FILE_KINDS[kind]
    return ConfigError(f"{path} is {what}; `{command}` takes {FILE_KINDS[takes][0]}; {how.format(path=path)}")


def check_top_level(path: str | Path, raw: Any, takes: str, command: str, empty: str, mapping: str) -> dict:
    """The parsed file `raw`, refused in one sentence when it is empty (or only comments: it would run with every
    default, saying `empty`), another kind of file than `command` takes, or not a mapping (of `mapping`)."""
    if not raw:
        raise ConfigError(f"{path} is empty; {empty}")
    if (wrong := wrong_kind_error(path, raw, takes, command)) is not None:
        raise wrong
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with {mapping}")
    return raw


def load_config(path: str | Path) -> RunConfig:
    sections = ", ".join(RUN_SECTIONS)
    raw = check_top_level(path, read_yaml(path), "run", "uda-sweep train",
                          empty=f"a run config gives the sections {sections} (those left out keep their defaults): "
                                "start from an example in configs/*.yaml, e.g. configs/dance.yaml",
                          mapping=f"sections {sections}")
    return build_config(raw, str(path))
