"""bench/gpu.py end to end on the CPU (`--smoke`): real Ray actors packed on fractions of one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_packs_trials_that_train_together():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--packs", "2", "--precisions", "fp32"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "gpu" and result["smoke"] and not result["goal_met"]
    assert result["matmul_peak_tflops"]["fp32"] > 0
    [packed] = result["results"]
    assert packed["precision"] == "fp32" and packed["trials"] == 2
    assert len(packed["images_per_s_per_trial"]) == 2 and min(packed["images_per_s_per_trial"]) > 0
    # each figure is rounded to 0.1 on its own: the sum of two rounded rates may differ from the rounded sum by 0.1
    assert packed["images_per_s_per_gpu"] == pytest.approx(sum(packed["images_per_s_per_trial"]), abs=0.11)
    assert packed["step_gflops"] > 0 and packed["flop_ratio"] > 0
    assert len({p["pid"] for p in packed["placement"]}) == 2  # two trial processes on the one device
    starts, ends = zip(*packed["windows"])
    assert max(starts) < min(ends)  # their timed windows overlap: the trials ran at the same time
