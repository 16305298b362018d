"""Oracle: source cross-entropy plus cross-entropy on every labelled target stamp of a shared class.

It uses target labels, which a real unlabelled survey does not have: an upper bound for benchmarks only.
"""

from __future__ import annotations

from .source_only import SourceOnly


class TargetOracle(SourceOnly):
    name = "target_oracle"
    target_labels = "all"
