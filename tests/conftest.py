from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uda_core.config import build_config
from uda_core.data.store import DataSpec, ensure_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_folder(data_root) -> Path:
    """The tiny universal decals -> sdss data set, generated once per test session."""
    return ensure_dataset(DataSpec(size="tiny"), data_root, progress=False)


@pytest.fixture
def tiny_config(data_root, tiny_folder):
    """A RunConfig factory for a few fast steps on the tiny data set."""

    def make(method: str = "source_only", **sections):
        raw = {
            "data": {"size": "tiny", "root": str(data_root)},
            "model": {"width": 8, "depth": 2, "feature_dim": 16},
            "method": {"name": method},
            "optim": {"batch_size": 16},
            "train": {"steps": 4, "eval_every": 2, "progress": False, "precision": "fp32"},
            "eval": {"max_source_features": 100},
        }
        for key, value in sections.items():
            raw.setdefault(key, {}).update(value)
        return build_config(raw)

    return make


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for one test module; the sweep test doubles are shipped to workers by value."""
    import ray

    import sweep_helpers

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sweep_helpers)
    yield
    ray.shutdown()
