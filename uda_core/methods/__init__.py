"""Adaptation methods by name: the keys used in configs, search spaces, MLflow tags and the CLI.

Importing the package is light: the names and hyperparameter models (`params`: PARAMS, method_params) need no
torch, so configs are validated without it. The classes (METHODS, get_method, Method, Batch) load on first use.
"""

from __future__ import annotations

import importlib

from .params import PARAMS, method_params

__all__ = ["PARAMS", "method_params", "METHODS", "get_method", "Method", "Batch"]

# Public name -> the submodule that defines it (imported on first access).
_HOME = {"METHODS": "implementations", "get_method": "implementations", "Method": "base", "Batch": "base"}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
