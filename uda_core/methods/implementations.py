"""The method classes by name (they import torch): what the training loop instantiates."""

from __future__ import annotations

from .adabn import AdaBN
from .base import Method
from .contrastive import Contrastive
from .dance import Dance
from .emulation import Emulation
from .open_set_oracle import OpenSetOracle
from .ovanet import Ovanet
from .params import method_params
from .source_only import SourceOnly
from .sphkmeans import SphKMeans
from .target_oracle import TargetOracle

__all__ = ["METHODS", "get_method"]

METHODS: dict[str, type[Method]] = {m.name: m for m in (SourceOnly, AdaBN, Dance, TargetOracle, SphKMeans, Emulation,
                                                        Ovanet, OpenSetOracle, Contrastive)}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        method_params(name)  # the ConfigError that lists the methods
    return METHODS[name]
