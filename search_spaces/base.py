"""Search-space building blocks: parameters addressed by their dotted RunConfig key, overrides, sampling.

A space is a list of parameters. Each parameter is named by the key it sets in the run config
(`optim.lr`, `method.params.eta_nc`), so a suggested trial *is* a config patch and the names are the same in the
sweep file, Optuna, Ray Tune and MLflow. What range a key accepts is decided by `uda_core.config` (pydantic), not
repeated here: an override is checked by building a run config with each endpoint.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any

from uda_core.config import build_config
from uda_core.errors import ConfigError

__all__ = ["Float", "Int", "Categorical", "Param", "Space", "set_key", "get_key", "apply_params", "key_of",
           "METHOD_KEY"]

METHOD_KEY = "method.name"  # the parameter a joint space searches first (search_spaces/joint.py)
METHOD_SEP = ":"  # `method.params.tau:sphkmeans`: a joint space's name for a key two of its methods search


def key_of(name: str) -> str:
    """The run-config key a parameter name sets (a joint space names a key two methods search `<key>:<method>`)."""
    return name.partition(METHOD_SEP)[0]


@dataclass(frozen=True)
class _Base:
    key: str
    # Conditional parameter: suggested only when another parameter took this value (e.g. momentum only for SGD).
    when: tuple[str, Any] | None = field(default=None, kw_only=True)
    fixed: Any = field(default=None, kw_only=True)  # set by an override: a constant, not searched
    # Its name in Optuna, Tune, MLflow and the sweep file's overrides, if not its key (search_spaces/joint.py).
    name: str | None = field(default=None, kw_only=True)

    @property
    def id(self) -> str:
        return self.name or self.key

    @property
    def is_fixed(self) -> bool:
        return self.fixed is not None

    def endpoints(self) -> list[Any]:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class _Range(_Base):
    low: float
    high: float
    log: bool = False
    _kinds = (int, float)  # the value types `contains` accepts

    def endpoints(self):
        return [self.low, self.high]

    def contains(self, value):
        return isinstance(value, self._kinds) and self.low <= value <= self.high


@dataclass(frozen=True)
class Float(_Range):
    def suggest(self, trial):
        return trial.suggest_float(self.id, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"{'log-' if self.log else ''}uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Int(_Range):
    _kinds = (int,)

    def suggest(self, trial):
        return trial.suggest_int(self.id, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"integer {'log-' if self.log else ''}[{self.low}, {self.high}]"


@dataclass(frozen=True)
class Categorical(_Base):
    choices: tuple

    def endpoints(self):
        return list(self.choices)

    def contains(self, value):
        return value in self.choices

    def suggest(self, trial):
        return trial.suggest_categorical(self.id, list(self.choices))

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


Param = Float | Int | Categorical


def get_key(raw: dict, key: str) -> Any:
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_key(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """A copy of the plain run-config dict `base` with each dotted key of `params` (or parameter name) set.

    A patch that changes `method.name` drops the base's `method.params` first: they belong to the other method
    (a joint space's trial chooses the method; its own parameters are in the patch, the rest are its defaults).
    """
    raw = copy.deepcopy(base)
    method = params.get(METHOD_KEY)
    if method is not None and method != get_key(raw, METHOD_KEY):
        set_key(raw, "method.params", {})
    for name, value in params.items():
        set_key(raw, key_of(name), value)
    return raw


@dataclass(frozen=True)
class Space:
    """A define-by-run search space; calling it with an Optuna trial suggests one configuration patch.

    Picklable (OptunaSearch stores it in the searcher checkpoint that `uda-sweep resume` restores).
    """

    name: str
    params: tuple[Param, ...]

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for p in self.params:
            if p.when is not None and chosen.get(p.when[0]) != p.when[1]:
                continue
            if p.is_fixed:
                constants[p.id] = chosen[p.key] = p.fixed
            else:
                chosen[p.key] = p.suggest(trial)
        return constants  # OptunaSearch merges these constants into the trial's config

    @property
    def keys(self) -> list[str]:
        """The parameters' names: their run-config keys, but for a key two methods of a joint space search."""
        return [p.id for p in self.params]

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.id == name:
                return p
        raise KeyError(name)

    def conditions(self, p: Param) -> dict[str, Any]:
        """The values other parameters take whenever `p` is suggested (its condition, and that one's): the
        context in which its range is checked, e.g. `method.name: dance` for DANCE's weights in a joint space."""
        out: dict[str, Any] = {}
        while p.when is not None and p.when[0] not in out:
            key, value = p.when
            out[key] = value
            if key not in self.keys:
                break
            p = self.param(key)
        return out

    def _valid(self, base: dict, p: Param, value: Any, source: str) -> None:
        build_config(apply_params(base, {**self.conditions(p), p.key: value}), source=source)

    def with_overrides(self, overrides: dict[str, Any], base: dict, source: str = "search.overrides") -> "Space":
        """Narrow, widen or fix parameters from a sweep file; anything the run config would refuse is an error.

        An override is `{low: .., high: ..}` (floats, ints; `log` may be changed), `{choices: [...]}`
        (categoricals) or a plain value (fix the parameter).
        """
        params = list(self.params)
        for key, spec in (overrides or {}).items():
            where = f"{source}.{key}"
            if key not in self.keys:
                raise ConfigError(f"{where}: not a parameter of the {self.name!r} space; it has {', '.join(self.keys)} "
                                  "(set other run-config keys under `run:` instead)")
            i = self.keys.index(key)
            params[i] = _override(params[i], spec, where)
            for value in params[i].endpoints() if not params[i].is_fixed else [params[i].fixed]:
                try:
                    self._valid(base, params[i], value, where)
                except ConfigError as e:
                    raise ConfigError(f"{e} (the run config does not accept this value of {key}; "
                                      "keep the range inside what it accepts)") from None
        return replace(self, params=tuple(params))

    def check(self, base: dict) -> None:
        """Every endpoint of every range must be a valid run config (catches a space wider than the method allows)."""
        for p in self.params:
            for value in [p.fixed] if p.is_fixed else p.endpoints():
                self._valid(base, p, value, f"search space {self.name!r}, {p.key}={value!r}")

    def default_point(self, base: dict) -> dict[str, Any]:
        """The base run config's own values of the searched parameters, to be evaluated first.

        Values outside an overridden range are left out (Optuna then samples them), so the seeded trial never
        leaves the space the user asked for.
        """
        point: dict[str, Any] = {}
        cfg = build_config(base)
        defaults = cfg.model_dump()
        defaults["method"]["params"] = cfg.method.parsed().model_dump()  # the method's own defaults too
        for p in self.params:
            if p.is_fixed or (p.when is not None and point.get(p.when[0], get_key(defaults, p.when[0])) != p.when[1]):
                continue
            value = get_key(defaults, p.key)
            if p.contains(value):
                point[p.id] = value
        return point

    def describe(self) -> dict[str, str]:
        out = {}
        for p in self.params:
            text = f"fixed {p.fixed!r}" if p.is_fixed else p.describe()
            if p.when is not None:
                text += f" (when {p.when[0]} = {p.when[1]!r})"
            out[p.id] = text
        return out


def _override(p: Param, spec: Any, where: str) -> Param:
    if spec is None:
        raise ConfigError(f"{where}: empty override; give a value to fix, {{low, high}} or {{choices}}, "
                          "or remove the key")
    if not isinstance(spec, dict):
        if isinstance(p, Categorical) and spec not in p.choices and not isinstance(spec, (int, float, str, bool)):
            raise ConfigError(f"{where}: a fixed value must be a number, string or boolean, got {spec!r}")
        return replace(p, fixed=spec)
    allowed = {"choices"} if isinstance(p, Categorical) else {"low", "high", "log"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown override key(s) {sorted(unknown)}; a {type(p).__name__.lower()} parameter "
                          f"takes {sorted(allowed)}, or a plain value to fix it")
    if isinstance(p, Categorical):
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: must be a non-empty list, got {choices!r}")
        return replace(p, choices=tuple(choices))
    kind = int if isinstance(p, Int) else float
    low, high, log = spec.get("low", p.low), spec.get("high", p.high), spec.get("log", p.log)
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise ConfigError(f"{where}.{name}: must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(f"{where}.{name}: must be finite, got {v!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low < high must hold, but got low={low!r}, high={high!r} "
                          "(to fix a value, give it plainly)")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log-scale range needs low > 0, got {low!r}")
    return replace(p, low=kind(low), high=kind(high), log=log)
