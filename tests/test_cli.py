"""`uda-sweep data generate|show` and `uda-sweep train`, end to end on tiny data through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from sweeps.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(p: Path) -> bool:
    return p.exists() and p.read_bytes()[:8] == PNG and p.stat().st_size > 1000


def test_data_generate_and_show(tmp_path):
    out = tmp_path / "ds"
    assert main(["data", "generate", "--task", "deepastro3", "--source", "lsst_y10", "--target", "lsst_y1",
                 "--size", "tiny", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"]["class_names"] == ["spiral", "elliptical", "merger"]
    assert manifest["bands"] == ["g", "r", "i"]
    assert main(["data", "show", str(out)]) == 0
    assert _is_png(out / "examples.png")


def test_generate_into_existing_folder_fails_cleanly(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    assert main(["data", "generate", "--size", "tiny", "--out", str(tmp_path / "ds")]) == 2
    assert "already exists" in capsys.readouterr().err


def _tiny_yaml(tmp_path, data_root, method="dance", steps=4):
    cfg = {
        "data": {"size": "tiny", "root": str(data_root)},
        "model": {"width": 8, "depth": 2, "feature_dim": 16},
        "method": {"name": method},
        "optim": {"batch_size": 16},
        "train": {"steps": steps, "eval_every": 2, "progress": False},
        "eval": {"max_source_features": 100},
    }
    p = tmp_path / f"{method}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_train_writes_metrics_pictures_and_checkpoints(tmp_path, data_root, tiny_folder):
    out = tmp_path / "run"
    assert main(["train", str(_tiny_yaml(tmp_path, data_root)), "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["last"]["step"] == 4 and summary["best"]["step"] in (2, 4)
    assert summary["selected_by"] == "source_val/acc"
    assert "oracle/target_test/h_score" in summary["last"]["metrics"]
    for step in ("step_0000002", "step_0000004"):
        d = out / "evals" / step
        conf = json.loads((d / "confusion_oracle_target_test.json").read_text())
        assert conf["cols"][-1] == "unknown"
        assert _is_png(d / "confusion_oracle_target_test.png") and _is_png(d / "confusion_source_test.png")
    assert (out / "checkpoints/step_0000004/state.pt").exists()
    assert _is_png(out / "oracle_embedding.png") and _is_png(out / "accuracy_vs_r_mag.png")


def test_train_refuses_to_overwrite_and_resumes(tmp_path, data_root, tiny_folder, capsys):
    cfg = _tiny_yaml(tmp_path, data_root, "source_only", steps=4)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    longer = yaml.safe_load(cfg.read_text())
    longer["train"]["steps"] = 6
    cfg.write_text(yaml.safe_dump(longer))
    assert main(["train", str(cfg), "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["last"]["step"] == 6


def test_bad_config_exits_2_naming_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "train", str(p), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "optim.learning_rate: unknown key" in r.stderr
    assert not (tmp_path / "o").exists()  # rejected before any work
