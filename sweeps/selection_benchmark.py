"""What bench/selection.py measured of each selection criterion, shipped with the package.

`selection_benchmark.json` is written by `bench/selection.py --publish`: per criterion, the regret (ORACLE target
accuracy and H-score points lost against the best checkpoint) of promoting the checkpoint it selects, averaged
over the benchmark's pairs, methods and seeds, and the default objective the benchmark's protocol settled on
(`default_objective`: chosen on one seed, kept only if it also wins on the others; a test keeps sweeps/config.py in
step with it). `uda-sweep promote` copies the numbers into the model version's
tags so whoever loads the model knows how far its selection rule is from the oracle's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

__all__ = ["BENCHMARK_FILE", "load_benchmark", "measured_default", "selection_tags"]

BENCHMARK_FILE = Path(__file__).with_name("selection_benchmark.json")


@functools.cache
def load_benchmark() -> dict:
    return json.loads(BENCHMARK_FILE.read_text())


def measured_default() -> str:
    return load_benchmark()["default_objective"]["criterion"]


def selection_tags(criterion: str) -> dict[str, str]:
    """Model-version tags: which criterion selected the model and its measured regret (or that it was not measured)."""
    bench = load_benchmark()
    tags = {"selection.criterion": criterion, "selection.benchmark": bench["setup"]}
    measured = bench["criteria"].get(criterion)
    if measured is None:
        return tags | {"selection.benchmark_regret": "not measured (bench/selection.py "
                                                     "measures label-free criteria only)"}
    for key in ("regret_acc", "regret_h", "worst_pair_regret_acc", "worst_pair_regret_h"):
        tags[f"selection.benchmark_{key}"] = "not measured" if measured.get(key) is None else f"{measured[key]:.4f}"
    if "sweeps" in measured:
        tags["selection.benchmark_sweeps"] = str(measured["sweeps"])
    return tags
