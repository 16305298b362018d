"""Optuna define-by-run search spaces, one per adaptation method, selectable by the method's name; a list of
methods is one joint space in which the method is searched too (search_spaces/joint.py)."""

from __future__ import annotations

from uda_core.errors import ConfigError

from .base import METHOD_KEY, Categorical, Float, Int, Space, apply_params
from .contrastive import CONTRASTIVE
from .dance import DANCE
from .emulation import EMULATION
from .joint import joint_space
from .open_set_oracle import OPEN_SET_ORACLE
from .ovanet import OVANET
from .source_only import ADABN, SOURCE_ONLY, TARGET_ORACLE
from .sphkmeans import SPHKMEANS

__all__ = ["SPACES", "get_space", "search_space", "joint_space", "Space", "Float", "Int", "Categorical",
           "apply_params", "METHOD_KEY"]

SPACES: dict[str, Space] = {s.name: s for s in (SOURCE_ONLY, ADABN, DANCE, TARGET_ORACLE, SPHKMEANS, EMULATION,
                                                OVANET, OPEN_SET_ORACLE, CONTRASTIVE)}


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise ConfigError(f"search.space: unknown space {name!r}; choose one of {sorted(SPACES)}") from None


def search_space(methods: list[str]) -> Space:
    """The space of one method, or the joint space of several (the method then a searched parameter too)."""
    if len(methods) == 1:
        return get_space(methods[0])
    return joint_space([get_space(m) for m in methods])
