"""A trial's objective as the sweep compares it: at the trial's best checkpoint, guarded by source accuracy.

Each evaluation reports `objective/<metric>` (that evaluation) and `best/<metric>` (the trial's best checkpoint
so far, chosen by the first metric). A checkpoint whose source validation accuracy is under the floor never
becomes the best: adaptation losses can wreck the classifier while a label-free score still looks fine. Until a
checkpoint passes, `best/<metric>` is the worst possible value (-inf when maximising), so such a trial ranks last.
"""

from __future__ import annotations

import math

from uda_core.evaluation.names import SOURCE_VAL_ACC

__all__ = ["ObjectiveTracker", "GUARD_METRIC"]

GUARD_METRIC = SOURCE_VAL_ACC


class ObjectiveTracker:
    def __init__(self, metrics: list[str], modes: list[str], min_source_val_acc: float, state: dict | None = None):
        self.metrics, self.modes, self.floor = list(metrics), list(modes), min_source_val_acc
        self.best: dict | None = None  # {"step": int, "values": {metric: value}}
        if state:
            self.best = state.get("best")

    def worst(self, mode: str) -> float:
        return -math.inf if mode == "max" else math.inf

    def _better(self, value: float, old: float, mode: str) -> bool:
        return value > old if mode == "max" else value < old

    def update(self, step: int, metrics: dict[str, float]) -> tuple[dict[str, float], bool]:
        """The values to report for this evaluation, and whether it is the trial's new best checkpoint."""
        values = {m: float(metrics.get(m, math.nan)) for m in self.metrics}
        primary, mode = values[self.metrics[0]], self.modes[0]
        guard_ok = float(metrics.get(GUARD_METRIC, math.nan)) >= self.floor
        is_best = guard_ok and all(math.isfinite(v) for v in values.values()) and (
            self.best is None or self._better(primary, self.best["values"][self.metrics[0]], mode)
        )
        if is_best:
            self.best = {"step": step, "values": values}
        report = {f"objective/{m}": v for m, v in values.items()}
        for m, md in zip(self.metrics, self.modes):
            report[f"best/{m}"] = self.best["values"][m] if self.best else self.worst(md)
        report["best_step"] = self.best["step"] if self.best else -1
        report["guard_ok"] = float(guard_ok)
        return report, is_best

    def state(self) -> dict:
        return {"best": self.best}
