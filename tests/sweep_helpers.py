"""Test doubles for the sweep tests, shipped to Ray workers by value (cloudpickle.register_pickle_by_value).

`flaky_trial` is the real trainable except for two injected faults: the source_only baseline's training raises, and the
search trial at the seeded default point (lr = 0.002) gets a NaN loss weight, so the real divergence path runs.
"""

from __future__ import annotations

import math

from sweeps.trainable import run_trial


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
