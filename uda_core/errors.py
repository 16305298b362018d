"""One error family for everything a user can get wrong.

Messages follow one shape: what is wrong, where (file or config key), what was given, what is allowed, and how
to fix it, so a failing sweep can be mended without reading code.
"""

from __future__ import annotations

__all__ = ["UdaError", "ConfigError", "DataError"]


class UdaError(Exception):
    """Base class of the project's user-facing errors."""


class ConfigError(UdaError, ValueError):
    """A configuration key, type or value that cannot be used."""


class DataError(UdaError, ValueError):
    """A data set or file that is missing, corrupt or inconsistent."""
