"""A target survey without labels (manifest target_labels "none"): loading, evaluation, `uda-sweep train`, a real
sweep (Ray, Optuna, MLflow) and promotion all work on label-free numbers alone; no oracle/ number exists anywhere;
whatever needs target labels is refused before it starts, with the key named."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from uda_core.config import build_config
from uda_core.data.dataset import load_dataset
from uda_core.data.store import CATALOGUE, MANIFEST, UNLABELLED, _sha256_files
from uda_core.errors import ConfigError, DataError
from uda_core.evaluate import evaluate
from uda_core.methods import get_method
from uda_core.models import build_model
from uda_core.train import train

# Every number an evaluation computes without a target label (spelled out here, not taken from the code under test).
LABEL_FREE = ("source_val/acc", "source_val/mean_class_acc", "source_test/acc_shared", "label_free/snd",
              "label_free/entropy", "label_free/im", "label_free/dev", "label_free/agreement", "label_free/combined",
              "label_free/bnm", "label_free/class_ami", "label_free/devn", "label_free/emulated_acc",
              "label_free/estimated_h", "label_free/estimated_h_floored", "label_free/combined_unknown",
              "label_free/rejected_frac")


def _rewrite(folder: Path, target_labels: str, unlabel=None) -> Path:
    """Set manifest target_labels, optionally set `label`/`train_label` to -1 on the rows `unlabel(cat)` selects,
    and recompute the manifest's sizes and fingerprint so the folder still verifies."""
    if unlabel is not None:
        cat = pq.read_table(folder / CATALOGUE).to_pandas()
        cat.loc[unlabel(cat), ["label", "train_label"]] = UNLABELLED
        pq.write_table(pa.Table.from_pandas(cat, preserve_index=False), folder / CATALOGUE)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["target_labels"] = target_labels
    manifest["files"] = {name: (folder / name).stat().st_size for name in manifest["files"]}
    manifest["fingerprint"] = _sha256_files(folder, tuple(manifest["files"]))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory, tiny_folder) -> Path:
    """The tiny data set as an imported survey whose target labels may only be used to evaluate."""
    folder = tmp_path_factory.mktemp("eval") / "tiny-eval"
    shutil.copytree(tiny_folder, folder)
    return _rewrite(folder, "eval")


@pytest.fixture(scope="module")
def unlabelled(tiny_unlabelled_folder):
    return load_dataset(tiny_unlabelled_folder)


def _run(folder: Path, method: str = "dance", **sections) -> dict:
    raw = {
        "data": {"path": str(folder)},
        "model": {"width": 8, "depth": 2, "feature_dim": 16, "domain_bn": True},
        "method": {"name": method},
        "optim": {"batch_size": 16},
        "train": {"steps": 4, "eval_every": 2, "progress": False, "precision": "fp32"},
        "eval": {"max_source_features": 100, "snd_max_samples": 200},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return raw


def _no_oracle(keys) -> list[str]:
    return [k for k in keys if "oracle" in k]


def test_evaluation_without_target_labels_is_the_label_free_part_of_the_labelled_one(unlabelled, tiny_folder):
    labelled = load_dataset(tiny_folder)
    assert labelled.has_target_labels and not unlabelled.has_target_labels
    assert ((unlabelled["target/test"].y == UNLABELLED).all()
            and (unlabelled["target/train"].train_y == UNLABELLED).all())
    cfg = build_config(_run(tiny_folder))
    torch.manual_seed(0)
    model = build_model(cfg.model, labelled.in_channels, labelled.num_known)
    method = get_method("dance")(cfg.method.parsed(), model, labelled.num_known, len(labelled["target/train"]))
    with_labels = evaluate(model, method, labelled, cfg, 0)
    ev = evaluate(model, method, unlabelled, cfg, 0)

    for key in LABEL_FREE:
        assert key in ev.metrics and math.isfinite(ev.metrics[key]), key
    assert _no_oracle(ev.metrics) == []  # absent, not NaN
    assert set(ev.confusion) == {"source_test"} and set(ev.embedding) == {"source", "target"}
    assert ev.acc_by_mag == [] and _no_oracle(ev.to_json()) == []
    # Exactly the labelled evaluation without its oracle part: no label-free number read a target label.
    assert set(ev.metrics) == {k for k in with_labels.metrics if not k.startswith("oracle/")}
    for key, value in ev.metrics.items():
        assert value == pytest.approx(with_labels.metrics[key], nan_ok=True), key


@pytest.mark.parametrize("where, labels, match", [
    ("source", "none", r"catalogue.parquet: \d+ source rows have no class label"),
    ("target", "simulated", r"catalogue.parquet: \d+ target rows have no class label "
                            r".* target_labels: 'simulated'.*'none'"),
    ("target", "eval", r"target_labels: 'eval'"),
])
def test_missing_labels_are_refused_where_labels_are_promised(tiny_folder, tmp_path, where, labels, match):
    folder = tmp_path / "data"
    shutil.copytree(tiny_folder, folder)
    _rewrite(folder, labels, lambda cat: (cat["domain"] == where) & (cat["split"] == "train") & (cat.index % 7 == 0))
    with pytest.raises(DataError, match=match):
        load_dataset(folder)


def test_train_command_end_to_end_on_an_unlabelled_target(tiny_unlabelled_folder, tmp_path, capsys):
    from sweeps.cli import main

    config, out = tmp_path / "run.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(_run(tiny_unlabelled_folder, eval={"select_by": "label_free/combined"})))
    assert main(["train", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best"] is not None and summary["last"]["step"] == 4
    for record in (summary["best"], summary["last"]):
        assert all(math.isfinite(record["metrics"][k]) for k in LABEL_FREE)
        assert _no_oracle(record["metrics"]) == []
    for step in (2, 4):
        d = out / "evals" / f"step_{step:07d}"
        assert {p.name for p in d.iterdir()} == {"evaluation.json", "confusion_source_test.json",
                                                 "confusion_source_test.png"}
        assert "oracle" not in (d / "evaluation.json").read_text()
    pictures = {p.name for p in out.glob("*.png")}
    assert pictures == {"embedding.png"}  # no picture that needs labels (oracle embedding, accuracy vs magnitude)


def test_train_command_refusal_leaves_no_out_folder(tiny_unlabelled_folder, tmp_path, capsys):
    from sweeps.cli import main

    config, out = tmp_path / "run.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(_run(tiny_unlabelled_folder, "target_oracle")))
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert "method.name" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("labels", ["none", "eval"])
@pytest.mark.parametrize("method, sections, key", [
    ("target_oracle", {}, "method.name"),
    ("dance", {"data": {"few_shot_per_class": 2}}, "data.few_shot_per_class"),
])
def test_training_on_target_labels_is_refused_before_it_starts(tiny_unlabelled_folder, eval_folder, tmp_path,
                                                               labels, method, sections, key):
    folder = tiny_unlabelled_folder if labels == "none" else eval_folder
    cfg = build_config(_run(folder, method, **{k: dict(v) for k, v in sections.items()}))
    reports = []
    why = "has no labels" if labels == "none" else "for evaluation only"
    with pytest.raises(ConfigError, match=rf"^{key}: .*{why}"):
        train(cfg, lambda ev, ck: reports.append(ev), tmp_path)
    assert reports == [] and not (tmp_path / "checkpoints").exists()


def test_eval_labels_still_give_oracle_metrics(eval_folder, tmp_path):
    last = train(build_config(_run(eval_folder, "source_only", train={"steps": 2, "eval_every": 2})),
                 lambda *a: None, tmp_path)
    assert math.isfinite(last.metrics["oracle/target_test/acc_shared"]) and "oracle_target_test" in last.confusion


@pytest.mark.parametrize("over, key", [
    ({"objective": {"metric": "oracle/target_test/h_score", "min_source_val_acc": 0.0}},
     r"objective.metric: 'oracle/target_test/h_score' needs target labels, but the target of .* has no labels"),
    ({"baselines": ["source_only", "target_oracle"]}, r"baselines: 'target_oracle' cannot be trained"),
    ({"run": {"data": {"few_shot_per_class": 1}}}, r"run.data.few_shot_per_class: 1 .* has no labels"),
])
def test_sweep_needing_target_labels_is_refused_before_launch(tiny_unlabelled_folder, data_root, tmp_path, over, key):
    import ray

    from sweep_helpers import write_sweep
    from sweeps.run import run_sweep

    over = dict(over)  # the parameter is shared between runs: never change it
    run = {"data": {"path": str(tiny_unlabelled_folder), **over.pop("run", {}).get("data", {})}}
    path = write_sweep(tmp_path, data_root, "refused", run=run, **over)
    ray_was_up = ray.is_initialized()
    with pytest.raises(ConfigError, match=key):
        run_sweep(path, workdir=tmp_path, progress=False)
    assert ray.is_initialized() == ray_was_up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refused.yaml"]  # no MLflow store, no sweep folder


def test_oracle_objective_is_allowed_where_the_target_has_labels(tiny_folder, eval_folder, data_root, tmp_path):
    from sweep_helpers import write_sweep
    from sweeps.config import check_target_labels, load_sweep

    oracle = {"objective": {"metric": "oracle/target_test/h_score"}}
    for name, run in (("simulated", {}), ("eval", {"data": {"path": str(eval_folder)}})):
        path = write_sweep(tmp_path, data_root, name, run=run, **oracle)
        check_target_labels(load_sweep(path), str(path), tmp_path)


@pytest.fixture(scope="module")
def unlabelled_sweep(local_ray, tmp_path_factory, data_root, imported_folder):
    """A real sweep on real-format data: FITS cutouts of a labelled source and an unlabelled target, written by
    the test and imported with `uda-sweep data import` (conftest)."""
    from sweep_helpers import write_sweep
    from sweeps.run import run_sweep

    assert json.loads((imported_folder / MANIFEST).read_text())["target_labels"] == "none"
    work = tmp_path_factory.mktemp("unlabelled-sweep")
    path = write_sweep(work, data_root, "survey", run={"data": {"path": str(imported_folder)}},
                       objective={"metric": "label_free/combined", "min_source_val_acc": 0.0},
                       search={"num_trials": 2, "overrides": {"model.width": 8, "optim.batch_size": 16}},
                       baselines=["source_only"], failure={"max_retries": 0})
    summary = run_sweep(path, workdir=work, progress=False)
    return summary, work


def test_sweep_on_an_unlabelled_target_logs_no_oracle_number(unlabelled_sweep, capsys, monkeypatch):
    from mlflow import MlflowClient

    from sweeps.cli import main
    from sweeps.tracking import child_runs

    summary, work = unlabelled_sweep
    assert summary.finished and {r["status"] for r in summary.trials} == {"TERMINATED"}
    assert summary.best is not None and _no_oracle(summary.best) == []

    monkeypatch.chdir(work)
    assert main(["status", "survey"]) == 0
    out = capsys.readouterr().out
    assert "src val acc" in out.splitlines()[1] and "oracle" not in out.lower()  # columns absent, not "-"

    client = MlflowClient(summary.tracking_uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.params["data.target_labels"] == "none"
    assert _no_oracle(parent.data.metrics) == [] and "best_trial/source_val/acc" in parent.data.metrics
    assert "baseline/source_only/source_val/acc" in parent.data.metrics
    assert client.list_artifacts(summary.parent_run_id, "selection") == []  # no ORACLE selection picture
    for child in child_runs(summary.tracking_uri, summary.experiment_id, summary.parent_run_id):
        assert "label_free/combined" in child.data.metrics and _no_oracle(child.data.metrics) == []
        confusion = {a.path.rsplit("/", 1)[1]
                     for a in client.list_artifacts(child.info.run_id, "evaluations/step_0000002/confusion")}
        assert confusion == {"source_test.json", "source_test.png"}
        best = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(child.info.run_id, "best")}
        assert "embedding.png" in best and _no_oracle(best) == []


def test_promote_without_oracle_metrics(unlabelled_sweep):
    from sweeps.registry import promote

    summary, work = unlabelled_sweep
    first = promote("survey", workdir=work)
    assert first.became_champion and math.isfinite(first.score)
    tags = first.tags
    assert tags["data.target_labels"] == "none" and tags["objective_is_oracle"] == "false"
    assert "metric.label_free/combined" in tags and "no labels" in tags["metric.oracle"]
    assert [k for k in tags if k.startswith("metric.oracle/")] == []
    # The next trial is compared with the champion, both re-evaluated on the unlabelled data.
    other = next(r["trial_id"] for r in summary.trials if r["kind"] == "search" and r["trial_id"] != first.trial_id)
    second = promote("survey", workdir=work, trial_id=other)
    assert second.version != first.version and math.isfinite(second.champion_score)
    assert "vs champion's" in second.reason


def test_the_promoted_model_predicts_new_cutouts_of_another_size(unlabelled_sweep, tmp_path, caplog):
    """New SDSS cutouts the model never saw, bigger (40 px) than it was trained on: resampled and cropped onto
    its grid, then catalogued."""
    import numpy as np

    from conftest import write_fits_cutouts
    from sweeps.cli import main
    from sweeps.registry import promote

    summary, work = unlabelled_sweep
    promote("survey", workdir=work, force=True)
    rng = np.random.default_rng(5)
    fresh = write_fits_cutouts(tmp_path / "fresh", [f"new{i}" for i in range(6)], rng.normal(0, 0.03, (6, 3, 40, 40)),
                               0.396)
    out = tmp_path / "catalogue.parquet"
    assert main(["predict", "models:/survey@champion", str(fresh), "--out", str(out),
                 "--tracking-uri", summary.tracking_uri, "--top-n", "0"]) == 0
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"galaxy_uda_sweeps"])
    assert table.num_rows == 6 and meta["classes"] == ["elliptical", "spiral", "barred_spiral", "edge_on", "merger",
                                                        "ring"]
    assert any("put on the model's grid" in r.getMessage() for r in caplog.records)


def test_oracle_objective_on_an_imported_unlabelled_target_is_refused_by_the_cli(imported_folder, tmp_path,
                                                                               monkeypatch, capsys):
    from sweep_helpers import write_sweep
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, tmp_path / "unused", "oracle", run={"data": {"path": str(imported_folder)}},
                       objective={"metric": "oracle/target_test/h_score"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "objective.metric" in err and "no labels" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
