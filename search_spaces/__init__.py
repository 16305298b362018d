"""Optuna define-by-run search spaces, one per adaptation method, selectable by the method's name."""

from __future__ import annotations

from uda_core.errors import ConfigError

from .base import Categorical, Float, Int, Space, apply_params
from .dance import DANCE
from .source_only import ADABN, SOURCE_ONLY, TARGET_ORACLE
from .sphkmeans import SPHKMEANS

__all__ = ["SPACES", "get_space", "Space", "Float", "Int", "Categorical", "apply_params"]

SPACES: dict[str, Space] = {s.name: s for s in (SOURCE_ONLY, ADABN, DANCE, TARGET_ORACLE, SPHKMEANS)}


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise ConfigError(f"search.space: unknown space {name!r}; choose one of {sorted(SPACES)}") from None
