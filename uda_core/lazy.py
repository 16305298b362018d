"""Packages whose heavy members load on first use (PEP 562), so that importing them for names alone stays light."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["lazy_members"]


def lazy_members(package: str, homes: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: each name in `homes` is imported from its submodule on first access,
    then kept in the package, so later lookups do not come back here."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
