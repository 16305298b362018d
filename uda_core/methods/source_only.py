"""Source-only training: cross-entropy on labelled source stamps. The baseline every method is compared with."""

from __future__ import annotations

from .base import Method


class SourceOnly(Method):
    name = "source_only"
