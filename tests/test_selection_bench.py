"""bench/selection.py: a sweep's records grow trial by trial, and a continued sweep draws the same trials as an
uninterrupted one (the seeded sampler replays the recorded draws) after a torn last line; records of another setup,
or whose draws no longer replay, are refused."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("selection",
                                               Path(__file__).resolve().parents[1] / "bench" / "selection.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _args(data_root, records, trials, steps=4):
    return argparse.Namespace(size="tiny", steps=steps, evals=2, trials=trials, records=records, data_root=data_root)


def _trials(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("done")]


def test_a_continued_sweep_draws_what_one_run_draws(tmp_path, data_root, tiny_folder):
    from uda_core.evaluation.selection import load_records

    def job(records, trials, steps=4):
        return "decals:sdss", 0, bench.ALL, _args(data_root, tmp_path / records, trials, steps)

    whole = Path(bench.run_job(job("whole", 2)))
    parts = Path(bench.run_job(job("parts", 1)))
    assert len(_trials(parts)) == 1
    with parts.open("a") as f:
        f.write('{"pair": "decals:sdss", "seed": 0, "metr')  # a trial killed while its lines were written
    assert bench.run_job(job("parts", 2)) == str(parts)
    assert [t["params"] for t in _trials(parts)] == [t["params"] for t in _trials(whole)]
    records = load_records([parts])
    assert list(records.trial) == [0, 0, 1, 1] and list(records.step) == [0, 1, 0, 1]  # two evaluations per trial
    assert set(records.trained) <= set(bench.sweep_methods(bench.ALL)) and set(records.method) == {bench.ALL}
    assert "label_free/emulated_acc" in records and "oracle/target_test/h_score" in records
    assert not any(c.startswith("oracle/target_test/auroc/") for c in records)  # the detail is not kept

    with pytest.raises(bench.RecordsError, match="recorded with"):  # another setup's records are not continued
        bench.run_job(job("parts", 3, steps=6))
    lines = parts.read_text().splitlines()
    closing = json.loads(lines[2])
    lines[2] = json.dumps(closing | {"params": {**closing["params"], "optim.lr": -1.0}})
    parts.write_text("\n".join(lines) + "\n")
    with pytest.raises(bench.RecordsError, match="no longer draws"):  # a changed space does not extend old records
        bench.run_job(job("parts", 3))
