"""Adaptation methods by name: the keys used in configs, search spaces, MLflow tags and the CLI."""

from __future__ import annotations

from ..errors import ConfigError
from .adabn import AdaBN
from .base import Batch, Method
from .dance import Dance
from .source_only import SourceOnly
from .sphkmeans import SphKMeans
from .target_oracle import TargetOracle

__all__ = ["METHODS", "get_method", "Method", "Batch"]

METHODS: dict[str, type[Method]] = {m.name: m for m in (SourceOnly, AdaBN, Dance, TargetOracle, SphKMeans)}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r}; choose one of {sorted(METHODS)}") from None
