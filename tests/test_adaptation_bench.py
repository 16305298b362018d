"""bench/adaptation.py's pure parts: the paired-difference interval, the baseline choice and resuming from records.
No training here: the benchmark's runs are the benchmark's business."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("adaptation_bench",
                                               Path(__file__).resolve().parents[1] / "bench" / "adaptation.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SETUP = {"size": "tiny", "steps": 60, "eval_every": 60, "width": 16, "batch_size": 64}


def test_paired_difference_matches_hand_computation():
    method = {0: 0.70, 1: 0.64, 2: 0.69, 3: 0.50}
    baseline = {0: 0.60, 1: 0.60, 2: 0.62, 4: 0.10}  # seed 3 and 4 are unpaired: left out
    mean, lo, hi, n = bench.paired_difference(method, baseline)
    # differences 0.10, 0.04, 0.07: mean 0.07, sd 0.03, t(0.975, 2) = 4.302653
    half = 4.302653 * 0.03 / math.sqrt(3)
    assert n == 3
    assert mean == pytest.approx(0.07)
    assert (lo, hi) == pytest.approx((0.07 - half, 0.07 + half), abs=1e-6)
    # a non-finite value drops its seed from the pairing
    assert bench.paired_difference({0: 0.7, 1: float("nan")}, {0: 0.6, 1: 0.5})[3] == 1
    one = bench.paired_difference({0: 0.7}, {0: 0.6})
    assert one[0] == pytest.approx(0.1) and math.isnan(one[1]) and math.isnan(one[2])


def test_baseline_is_the_better_mean_per_metric():
    by_method = {"adabn": {0: 0.6, 1: 0.7}, "emulation": {0: 0.65, 1: 0.72}, "dance": {0: 0.9, 1: 0.9}}
    assert bench.best_baseline(by_method, "h") == "emulation"  # higher is better
    assert bench.best_baseline(by_method, "known_rejected") == "adabn"  # lower is better
    assert bench.best_baseline({"dance": {0: 0.9}}, "h") is None


def _record(pair, method, seed, acc, known_rejected=0.2):
    return {"pair": pair, "method": method, "seed": seed, "setup": SETUP, "seconds": 1.0, "diverged": False,
            "metrics": {"acc": acc, "known_rejected": known_rejected}}


def test_summary_pairs_every_method_with_the_better_baseline_per_metric():
    runs = {"adabn": ([0.5, 0.55, 0.6], 0.1), "emulation": ([0.6, 0.6, 0.6], 0.3), "dance": ([0.7, 0.8, 0.8], 0.2)}
    records = [_record("a:b", m, s, acc, rej) for m, (accs, rej) in runs.items() for s, acc in enumerate(accs)]
    summary = bench.summarise(records)["a:b"]
    acc, rej = summary["dance"]["acc"], summary["dance"]["known_rejected"]
    assert acc["baseline"] == "emulation" and rej["baseline"] == "adabn"
    assert acc["diff"] == pytest.approx((0.1 + 0.2 + 0.2) / 3) and acc["n_paired"] == 3
    assert rej["diff"] == pytest.approx(0.1)
    assert summary["emulation"]["acc"]["diff"] == pytest.approx(0.0)
    assert summary["dance"]["acc"]["mean"] == pytest.approx(2.3 / 3)


def test_resume_skips_recorded_runs_and_refuses_another_setup(tmp_path):
    pairs, methods, seeds = ["a:b"], ["adabn", "dance"], [0, 1]
    assert len(bench.pending_runs(tmp_path, SETUP, pairs, methods, seeds)) == 4
    bench.write_record(bench.record_path(tmp_path, "a:b", "dance", 0), _record("a:b", "dance", 0, 0.7))
    todo = bench.pending_runs(tmp_path, SETUP, pairs, methods, seeds)
    assert todo == [("a:b", "adabn", 0), ("a:b", "adabn", 1), ("a:b", "dance", 1)]
    assert not list(tmp_path.rglob("*.tmp"))  # written whole, then renamed
    with pytest.raises(SystemExit, match="use another --records"):
        bench.pending_runs(tmp_path, {**SETUP, "steps": 1000}, pairs, methods, seeds)
