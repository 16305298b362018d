"""Adaptation methods by name: the keys used in configs, search spaces, MLflow tags and the CLI.

Importing the package is light: the names and hyperparameter models (`params`: PARAMS, method_params) need no
torch, so configs are validated without it. The classes (METHODS, get_method, Method, Batch) load on first use.
"""

from __future__ import annotations

from ..lazy import lazy_members
from .params import PARAMS, method_params

__all__ = ["PARAMS", "method_params", "METHODS", "get_method", "Method", "Batch"]

# Public name -> the submodule that defines it (imported on first access).
_HOME = {"METHODS": "implementations", "get_method": "implementations", "Method": "base", "Batch": "base"}


__getattr__ = lazy_members(__name__, _HOME)
