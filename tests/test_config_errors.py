"""Config and data-set edges through `uda-sweep` as a user types it: each mistake is one `error:` line naming the
file or key and the fix, exits 2 in seconds, and leaves every file as it was (no folder, no mlflow.db)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from sweeps.cli import main
from sweeps.config import parse_sweep
from uda_core.config import build_config
from uda_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


def _refused(argv: list[str], capsys, *fragments: str, seconds: float = 30.0) -> str:
    """Run the command in the current folder; it must exit 2 with one clean error holding `fragments`, in time,
    and change no file."""
    before = _tree(Path.cwd())
    start = time.perf_counter()
    assert main(argv) == 2
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err
    assert _tree(Path.cwd()) == before, "the failed command changed files"
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    return err


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_config(data_path: Path | None = None, **sections) -> dict:
    raw = {"data": {"path": str(data_path)} if data_path else {"size": "tiny"},
           "model": {"width": 8, "depth": 2, "feature_dim": 16}, "optim": {"batch_size": 16},
           "train": {"steps": 2, "eval_every": 1, "progress": False, "precision": "fp32"}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return raw


def _sweep(data_path: Path | None = None, **over) -> dict:
    raw = {"name": "edges", "run": {**_run_config(data_path), "method": {"name": "dance"}},
           "storage": {"path": "runs"}, "tracking": {"uri": "sqlite:///mlflow.db"}}
    raw.update(over)
    return raw


def _write(path: Path, raw) -> Path:
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------------------------------- the YAML files themselves
def test_duplicate_keys_are_refused_with_their_lines(work, capsys):
    # (data.path names no folder, so that without the check these fail fast on another error instead of training)
    _write(work / "r.yaml", "data: {path: nosuch}\nmodel:\n  width: 8\n  depth: 2\n  width: 16\n")
    _refused(["train", "r.yaml", "--out", "out"], capsys, "r.yaml", "'width' is given twice (lines 3 and 5)")
    _write(work / "s.yaml", "name: a\nrun: {data: {path: nosuch}}\nname: b\n")
    _refused(["run", "s.yaml"], capsys, "s.yaml", "'name' is given twice (lines 1 and 3)")


def test_yaml_merge_keys_may_still_be_overridden(work):
    from uda_core.config import read_yaml

    _write(work / "m.yaml", "base: &b {width: 8, depth: 2}\nmodel:\n  <<: *b\n  width: 16\n")
    assert read_yaml(work / "m.yaml")["model"] == {"width": 16, "depth": 2}


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_empty_files_are_refused(work, capsys, text):
    from uda_core.config import load_config

    _write(work / "r.yaml", text)
    with pytest.raises(ConfigError, match=r"r.yaml is empty; .*data, model, method.*configs/\*.yaml"):
        load_config("r.yaml")  # not through `train`: a regression would start a 10-minute default run
    _refused(["run", "r.yaml"], capsys, "r.yaml is empty", "name and run", "sweeps/configs/*.yaml")


def test_each_command_says_which_file_it_takes(work, capsys):
    run_config, sweep_file = ROOT / "configs" / "dance.yaml", ROOT / "sweeps" / "configs" / "quickstart.yaml"
    err = _refused(["run", str(run_config)], capsys, "is a run config", "`uda-sweep run` takes a sweep file",
                   f"uda-sweep train {run_config} --out DIR")
    assert "unknown key" not in err
    err = _refused(["train", str(sweep_file), "--out", "out"], capsys, "is a sweep file",
                   "`uda-sweep train` takes a run config", f"uda-sweep run {sweep_file}")
    assert "unknown key" not in err
    _refused(["train", str(ROOT / "cluster.yaml"), "--out", "out"], capsys, "is a Ray cluster file", "cluster-check")
    _refused(["data", "show", str(run_config)], capsys, "is a file, not a data set folder", "is a run config")
    _refused(["cluster-check", str(sweep_file)], capsys, "is a sweep file", "`uda-sweep cluster-check` takes a Ray "
             "cluster file")
    _refused(["train", str(ROOT / "configs"), "--out", "out"], capsys, "configs is a folder")


# ------------------------------------------------------------------------------------------- values and names
@pytest.mark.parametrize("objective, fragment", [
    ({"metric": "label_free/entropy", "mode": "max"}, "mode: 'max' contradicts metric 'label_free/entropy', for "
                                                      "which lower is better; set mode: min"),
    ({"metric": "source_val/acc", "mode": "min"}, "mode: 'min' contradicts metric 'source_val/acc'"),
    ({"metric": ["label_free/im", "label_free/dev"], "mode": ["max", "max"]}, "mode[1]: 'max' contradicts metric "
                                                                              "'label_free/dev'"),
    ({"metric": "label_free/combine"}, "(did you mean 'label_free/combined'?)"),
])
def test_sweep_objectives_that_cannot_be_meant(objective, fragment):
    with pytest.raises(ConfigError) as e:
        parse_sweep(_sweep(objective=objective), "s.yaml")
    assert fragment in str(e.value)


@pytest.mark.parametrize("raw, fragment", [
    ({"eval": {"select_by": "source_val/acc", "select_mode": "min"}}, "eval.select_mode: 'min' contradicts"),
    ({"eval": {"select_by": "label_free/entropy"}}, "lower is better; set select_mode: min"),
    ({"eval": {"select_by": "source_val/acc2"}}, "(did you mean 'source_val/acc'?)"),
    ({"method": {"name": "danse"}}, "method.name: unknown method 'danse' (did you mean 'dance'?)"),
    ({"optim": {"lr": float("nan")}}, "optim.lr: Input should be a finite number"),
    ({"train": {"vote_weight": float("inf")}}, "train.vote_weight: Input should be a finite number"),
    ({"model": {"backbone": "resnet", "width": 4}}, "the resnet backbone needs width >= 8"),
])
def test_run_config_values_that_cannot_be_meant(raw, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    assert fragment in str(e.value)


def test_a_mode_contradiction_fails_through_the_command(work, capsys):
    # (no such data.path: without the check this fails fast on it instead of starting a sweep)
    _write(work / "s.yaml", _sweep(work / "nosuch", objective={"metric": "label_free/dev", "mode": "max"}))
    _refused(["run", "s.yaml"], capsys, "s.yaml: objective: mode: 'max' contradicts", seconds=5)


def test_the_trainable_may_still_set_selection_one_field_at_a_time():
    cfg = build_config({})
    cfg.eval.select_by, cfg.eval.select_mode = "label_free/entropy", "min"  # as sweeps/trainable.py does
    assert (cfg.eval.select_by, cfg.eval.select_mode) == ("label_free/entropy", "min")


# ------------------------------------------------------------------------------- data sets that are not what they seem
def _damaged(tiny_folder: Path, where: Path, damage) -> Path:
    folder = where / "mine"
    shutil.copytree(tiny_folder, folder)
    damage(folder)
    return folder


def _set_manifest(folder: Path, **keys) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(keys)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _resize(folder: Path, name: str, data: bytes | None = None, size: int | None = None) -> None:
    """Replace or truncate a file and record its new size in the manifest, so only its content is wrong."""
    if data is not None:
        (folder / name).write_bytes(data)
    else:
        os.truncate(folder / name, size)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = (folder / name).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {
    "truncated pixels": (lambda f: os.truncate(f / "pixels.npy", 1000), "pixels.npy: expected"),
    "truncated pixels, size recorded": (lambda f: _resize(f, "pixels.npy", size=1000), "pixels.npy: cannot read"),
    "garbage catalogue": (lambda f: _resize(f, "catalogue.parquet", b"garbage" * 99), "catalogue.parquet: cannot read"),
    "garbage manifest": (lambda f: (f / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
    "manifest without task": (lambda f: _set_manifest(f, task=None), "manifest.json is damaged: task"),
    "manifest with wrong class names": (lambda f: _set_manifest(f, task={"class_names": 3, "num_known": 2,
                                                                         "shared": []}),
                                        "manifest.json is damaged: task.class_names"),
    "manifest files not a mapping": (lambda f: _set_manifest(f, files=3), "manifest.json is damaged: files"),
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_data_show_on_a_damaged_data_set_names_the_file(work, capsys, tiny_folder, case):
    damage, fragment = DAMAGE[case]
    folder = _damaged(tiny_folder, work, damage)
    err = _refused(["data", "show", str(folder)], capsys, fragment)
    assert "delete" not in err  # the user's own folder is never to be deleted


@pytest.mark.parametrize("case, fragment", [("truncated pixels", "pixels.npy: expected"),
                                            ("manifest with wrong class names", "task.class_names"),
                                            ("garbage catalogue", "content fingerprint does not match")])
def test_train_and_run_on_a_damaged_data_set_create_nothing(work, capsys, tiny_folder, case, fragment):
    damage = DAMAGE[case][0]
    folder = _damaged(tiny_folder, work, damage)
    _write(work / "r.yaml", _run_config(folder))
    _refused(["train", "r.yaml", "--out", "out"], capsys, fragment)
    _write(work / "s.yaml", _sweep(folder))
    _refused(["run", "s.yaml"], capsys, fragment)


def test_advice_fits_the_folder(tmp_path, tiny_folder):
    from uda_core.data.store import mend_advice

    cache = tmp_path / tiny_folder.name  # a generated cache under data.root, named by its hash
    assert mend_advice(cache, {"origin": "generated"}).startswith(f"delete {cache}")
    mine = tmp_path / "my_survey"
    assert "delete" not in mend_advice(mine, {"origin": "generated"})
    imported = mend_advice(mine, {"origin": "imported", "surveys": {"source": {"inputs": "/cutouts/decals"}}})
    assert "uda-sweep data import" in imported and "/cutouts/decals" in imported and "delete" not in imported
    assert "delete" not in mend_advice(mine, {"origin": "imported", "surveys": []})  # a damaged manifest


# ------------------------------------------------------------------------------------------------------ train --out
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_train_that_fails_before_its_first_checkpoint_leaves_out_as_it_was(work, capsys, tiny_folder):
    # Found only inside train(): the device. Nothing may be created, and an existing --out keeps its files.
    _write(work / "r.yaml", _run_config(tiny_folder, train={"device": "cuda"}))
    _refused(["train", "r.yaml", "--out", "new"], capsys, "train.device: 'cuda'", seconds=60)
    (work / "old").mkdir()
    (work / "old" / "config.yaml").write_text("my notes\n")
    _refused(["train", "r.yaml", "--out", "old"], capsys, "train.device: 'cuda'", seconds=60)


def test_train_out_that_is_a_file(work, capsys, tiny_folder):
    _write(work / "r.yaml", _run_config(tiny_folder))
    (work / "notes.txt").write_text("mine\n")
    _refused(["train", "r.yaml", "--out", "notes.txt"], capsys, "--out notes.txt is a file")


# ------------------------------------------------------------------------------------- target labels a set lacks
def _relabelled(tiny_folder: Path, where: Path, target_labels: str) -> Path:
    """The tiny data set as an imported one whose manifest says `target_labels`. Its fingerprint is wrong: a refusal
    must come from the manifest alone, before the data are read, and a regression fails there, not in a sweep."""
    folder = where / f"data-{target_labels}"
    shutil.copytree(tiny_folder, folder)
    _set_manifest(folder, target_labels=target_labels, origin="imported", fingerprint="0" * 64)
    return folder


def test_oracle_selection_needs_target_labels(work, capsys, tiny_folder):
    # (an oracle sweep objective on evaluation-only labels is allowed and marked ORACLE: test_unlabelled_target.py)
    _write(work / "s.yaml", _sweep(_relabelled(tiny_folder, work, "none"),
                                   objective={"metric": "oracle/target_test/h_score"}))
    _refused(["run", "s.yaml"], capsys, "objective.metric: 'oracle/target_test/h_score' needs target labels",
             "target_labels: 'none'")
    _write(work / "r.yaml", _run_config(_relabelled(tiny_folder, work, "eval"),
                                        eval={"select_by": "oracle/target_test/h_score"}))
    _refused(["train", "r.yaml", "--out", "out"], capsys, "eval.select_by", "cannot select models")


# ---------------------------------------------------------------------------------- a sweep no trial of which passed
def test_status_and_run_say_why_nothing_can_be_promoted():
    from sweeps.cli import _nothing_to_promote

    sweep = parse_sweep(_sweep(objective={"metric": "label_free/im", "min_source_val_acc": 0.9}), "s.yaml")
    trial = {"kind": "search", "status": "TERMINATED", "best_step": -1}
    why = _nothing_to_promote([trial, {**trial, "best_step": None}, {"kind": "baseline", "status": "TERMINATED",
                                                                      "best_step": 4}], sweep)
    assert why and "source_val/acc >= 0.9" in why and "lower objective.min_source_val_acc" in why
    assert _nothing_to_promote([trial, {**trial, "best_step": 4}], sweep) is None  # one passed
    assert _nothing_to_promote([trial, {**trial, "status": "RUNNING"}], sweep) is None  # it may still pass
