"""Sweep files and test doubles for the sweep tests, shipped to Ray workers by value
(cloudpickle.register_pickle_by_value).

`flaky_trial` is the real trainable except for two injected faults: the source_only baseline's training raises, and the
search trial at the seeded default point (lr = 0.002) gets a NaN loss weight, so the real divergence path runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from sweeps.trainable import run_trial

STEPS, EVERY = 6, 2


def write_sweep(folder: Path, data_root: Path, name: str, **over) -> Path:
    raw = {
        "name": name,
        "run": {
            "data": {"size": "tiny", "root": str(data_root)},
            "model": {"width": 8, "depth": 2, "feature_dim": 16, "domain_bn": True},
            "method": {"name": "dance"},
            "optim": {"batch_size": 16},
            "train": {"steps": STEPS, "eval_every": EVERY, "precision": "fp32"},
            "eval": {"max_source_features": 100, "snd_max_samples": 200},
        },
        "search": {"num_trials": 3, "overrides": {"model.width": 8, "optim.batch_size": 16}},
        "objective": {"metric": "label_free/im", "min_source_val_acc": 0.0},
        "baselines": ["source_only"],
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "failure": {"max_retries": 1},
        "tracking": {"embedding": "pca", "finalists": 1},
    }
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    if "scheduler" not in over:  # an early rung (the default is 3/4 of the budget): short sweeps still see stops
        train = raw["run"]["train"]
        raw["scheduler"] = {"type": "asha", "grace_period": min(train["steps"], 2 * train["eval_every"]),
                            "reduction_factor": 2}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def flaky_trial(config, ctx):
    if config.get("baseline") == "source_only":
        import sweeps.trainable

        def broken_train(*args, **kwargs):
            raise RuntimeError("injected failure")

        sweeps.trainable.train = broken_train  # inside the trial, after its MLflow run exists
        return run_trial(config, ctx)
    if config.get("optim.lr") == 0.002:
        from uda_core.methods.dance import Dance

        original = Dance.weights
        Dance.weights = lambda self: {**original(self), "nc": math.nan}
        try:
            return run_trial(config, ctx)
        finally:
            Dance.weights = original
    return run_trial(config, ctx)
