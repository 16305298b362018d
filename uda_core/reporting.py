"""The file-writing report callback of `uda-sweep train`: JSON metrics and pictures per evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .evaluate import Evaluation
from .evaluation.names import EMBEDDING_ORACLE_UNKNOWN

__all__ = ["FileReporter"]


def _finite(v):
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


class FileReporter:
    """Writes `evals/step_N/{evaluation.json, confusion_*.json, confusion_*.png}` (with a vote head also
    `votes_*.json`, `votes_confusion_*.png` and `votes_table_*.png`, one per split of `Evaluation.votes`, the
    target's named oracle_) and keeps `metrics.json` current.

    `metrics.json` holds the last evaluation and the best one by `select_by`, so a killed run still leaves a
    readable summary.
    """

    def __init__(self, out: Path, select_by: str, mode: str = "max"):
        self.out, self.select_by, self.mode = Path(out), select_by, mode
        self.best: dict | None = None
        summary = self.out / "metrics.json"
        if summary.exists():  # resuming: keep the best seen before the interruption
            self.best = json.loads(summary.read_text()).get("best")

    def __call__(self, ev: Evaluation, checkpoint_dir: Path) -> None:
        from .evaluation.plots import plot_confusion, plot_vote_confusions, plot_vote_table

        d = self.out / "evals" / f"step_{ev.step:07d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "evaluation.json").write_text(json.dumps(ev.to_json(), indent=1))
        for name, conf in ev.confusion.items():
            (d / f"confusion_{name}.json").write_text(json.dumps(conf))
            plot_confusion(conf, d / f"confusion_{name}.png", title=f"{name}, step {ev.step}")
        for name, votes in ev.votes.items():  # per-question Galaxy Zoo vote scores (vote head only)
            (d / f"votes_{name}.json").write_text(json.dumps(votes))
            plot_vote_confusions(votes, d / f"votes_confusion_{name}.png", title=f"{name} votes, step {ev.step}")
            plot_vote_table(votes, d / f"votes_table_{name}.png", title=f"{name} votes, step {ev.step}")
        value = ev.metrics.get(self.select_by)
        record = {"step": ev.step, "checkpoint": str(checkpoint_dir),
                  "metrics": {k: _finite(v) for k, v in ev.metrics.items()}}
        if value is not None and math.isfinite(value):
            old = None if self.best is None else self.best["metrics"].get(self.select_by)
            if old is None or (value > old if self.mode == "max" else value < old):
                self.best = record
        summary = {"selected_by": self.select_by, "last": record, "best": self.best}
        tmp = self.out / "metrics.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(self.out / "metrics.json")

    def finish(self, ev: Evaluation | None) -> None:
        """Pictures of the final evaluation: embedding of source vs target features, and with target labels the
        unknowns marked by their true class (`oracle_embedding.png`) and accuracy versus magnitude."""
        if ev is None:
            return
        from .evaluation.plots import plot_accuracy_by_bin, plot_embedding

        e = ev.embedding
        unknown = e.get(EMBEDDING_ORACLE_UNKNOWN)
        if unknown is None:  # the target has no labels: colour by domain only
            plot_embedding(e["source"], e["target"], None, self.out / "embedding.png", method="pca",
                           title=f"features at step {ev.step} (PCA; the target has no labels)")
        else:
            plot_embedding(e["source"], e["target"], unknown, self.out / "oracle_embedding.png", method="pca",
                           title=f"features at step {ev.step} (PCA; oracle: unknowns marked by true label)")
        if ev.acc_by_mag:
            plot_accuracy_by_bin(ev.acc_by_mag, self.out / "accuracy_vs_r_mag.png",
                                 "r magnitude (target test, shared classes)",
                                 title="oracle: target accuracy vs magnitude")
