"""bench/product.py: the sweep it writes is one the sweep layer accepts, and its table reads partial results."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("product", Path(__file__).resolve().parents[1] / "bench" / "product.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_the_sweep_it_writes_is_valid_and_searches_every_method(tmp_path):
    from sweeps.config import load_sweep
    from uda_core.methods.params import PARAMS, TRAINS_ON_TARGET_LABELS

    args = argparse.Namespace(seed=1, trials=4, steps=400, root=tmp_path / "data", out=tmp_path)
    sweep = load_sweep(bench.sweep_file("lsst_y10:lsst_y1", args))  # the sweep layer's own validation
    assert sweep.name == bench.sweep_name("lsst_y10:lsst_y1", 1) == "product-lsst_y10-lsst_y1-seed1"
    assert (sweep.run.data.source, sweep.run.data.target, sweep.run.data.seed) == ("lsst_y10", "lsst_y1", 1)
    assert sweep.run.train.steps == 400 and sweep.scheduler.grace_period == 300
    assert sweep.search.num_trials == 4  # `space: all`: every method that trains without target labels
    assert sweep.methods == [m for m in PARAMS if m not in TRAINS_ON_TARGET_LABELS] and "emulation" in sweep.methods
    assert sweep.baselines == ["source_only", "adabn", "emulation"]
    assert sweep.tracking.finalists == 0 and sweep.storage.path == str((tmp_path / "runs").resolve())


def test_table_shows_a_pair_without_baselines_or_oracle_as_dashes():
    full = {"pair": "a:b", "chosen": {"method": "emulation", "acc": 0.74, "h": 0.02},
            "baselines": {"adabn": {"acc": 0.48, "h": 0.0}, "emulation": {"acc": 0.74, "h": 0.02}},
            "target_oracle": {"acc": 0.88}, "over_adabn": {"acc": 0.26, "h": 0.02}, "gap_closed_acc": 0.65}
    empty = {"pair": "c:d", "chosen": None, "baselines": {}, "target_oracle": None}
    lines = bench.table([full, empty]).splitlines()
    assert lines[2] == ("| a:b | emulation | 0.740 | 0.020 | 0.480 / 0.000 | 0.740 / 0.020 | 0.880 | 0.260 | 0.020 "
                        "| 0.650 |")
    assert lines[-1] == "| c:d | - | - | - | - / - | - / - | - | - | - | - |"


def test_a_publish_of_one_pair_keeps_the_other_pairs_of_the_same_setup(tmp_path):
    import json

    setup = {"trials": 8, "seed": 0}
    published = tmp_path / "product.json"
    published.write_text(json.dumps({"setup": setup, "pairs": [{"pair": "a:b", "v": 1}, {"pair": "c:d", "v": 1}]}))
    now = {"setup": setup, "wall_s": 3.0, "pairs": [{"pair": "c:d", "v": 2}]}
    assert bench.merged(now, published)["pairs"] == [{"pair": "a:b", "v": 1}, {"pair": "c:d", "v": 2}]
    other = {**now, "setup": {"trials": 4, "seed": 0}}  # figures of another setup are not mixed in
    assert bench.merged(other, published)["pairs"] == [{"pair": "c:d", "v": 2}]
    assert bench.merged(now, tmp_path / "none.json") == now
