"""Promotion to a real MLflow model registry (sqlite store) after a real tiny sweep, loading by alias in a fresh
process, and catalogues from `uda-sweep predict` (local and Ray Data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import write_fits_cutouts
from sweep_helpers import write_sweep
from sweeps.cli import main
from sweeps.registry import CHALLENGER, CHAMPION, PromotionRefused, _guard_failures, promote, rollback
from sweeps.run import open_sweep, run_sweep
from sweeps.selection_benchmark import load_benchmark
from uda_core.config import RunConfig
from uda_core.data.store import DataSpec, ensure_dataset
from uda_core.errors import ConfigError

PYTHON = sys.executable


pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root, tiny_folder):
    """A finished 3-trial sweep (plus a baseline) with no finalist models: promote must log its own."""
    work = tmp_path_factory.mktemp("registry")
    path = write_sweep(work, data_root, "reg", tracking={"embedding": "none", "finalists": 0})
    summary = run_sweep(path, workdir=work, progress=False)
    assert summary.finished
    return summary, work


@pytest.fixture
def in_workdir(sweep, monkeypatch):
    summary, work = sweep
    monkeypatch.chdir(work)
    return summary


def _client(summary):
    return mlflow.MlflowClient(summary.tracking_uri, registry_uri=summary.tracking_uri)


def _versions(summary, name):
    return sorted(_client(summary).search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def _alias(summary, name, alias):
    return str(_client(summary).get_model_version_by_alias(name, alias).version)


def _trial_run(summary, trial_id):
    (run,) = _client(summary).search_runs([summary.experiment_id], f"tags.trial_id = '{trial_id}'")
    return run


def _assert_linked_to_its_logged_model(summary, version, trial: dict, run_before):
    """What the MLflow UI shows of a promoted version: its logged model lists it and holds the trial's metrics at
    its step, the trial run's history and duration are as the trial left them, and the description says why."""
    client = _client(summary)
    run = client.get_run(run_before.info.run_id)
    model_id = run.data.tags["model_id"]
    # The sqlite registry store does not keep a version's model_id (MLflow 3.17 returns None), so the link is
    # checked where the UI reads it: the version's source and the logged model's list of versions.
    assert version.source == f"models:/{model_id}" and version.model_id in (None, model_id)
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id
    assert {"name": "reg", "version": str(version.version)} in [
        {"name": v["name"], "version": str(v["version"])} for v in json.loads(model.tags["mlflow.modelVersions"])]
    linked = model.metrics or []  # None when it has none
    on_model = {m.key: m for m in linked}
    assert {"label_free/im", "source_val/acc", "oracle/target_test/h_score",
            "oracle/target_test/acc_shared"} <= set(on_model)
    assert {m.step for m in linked} == {trial["best_step"]}
    assert on_model["label_free/im"].value == pytest.approx(trial["best/label_free/im"], abs=1e-6)
    for key in run.data.metrics:  # re-logging for the model added no second point to the run's history
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert (run.info.status, run.info.end_time) == (run_before.info.status, run_before.info.end_time)

    text = version.description
    assert text.splitlines()[0].startswith("**label_free/im = ") and "re-evaluated" in text
    assert "this trial − source_only" in text and "oracle/target_test/h_score (oracle, max)" in text
    baseline = next(r for r in summary.trials if r["kind"] == "baseline")
    gain = trial["best/label_free/im"] - baseline["best/label_free/im"]
    assert f"| label_free/im (max) | {trial['best/label_free/im']:.4f} | {gain:+.4f} |" in text
    assert f"[{run.info.run_name}](#/experiments/{summary.experiment_id}/runs/{run.info.run_id})" in text
    assert run.info.run_name.startswith("trial ")  # "trial N · method", Optuna's trial N
    assert f"step {trial['best_step']}" in text and trial["trial_id"] in text
    assert [k for k in version.tags if k.startswith("metric.config/")] == []


def test_champion_lifecycle(in_workdir, capsys):
    summary = in_workdir
    ranked = sorted((r for r in summary.trials if r["kind"] == "search" and r["best/label_free/im"] is not None),
                    key=lambda r: -r["best/label_free/im"])
    best, worse = ranked[0], ranked[-1]
    assert best["best/label_free/im"] > worse["best/label_free/im"]
    best_run = _trial_run(summary, best["trial_id"])

    assert main(["promote", "reg", "--dry-run"]) == 0
    assert "would move to a new version" in capsys.readouterr().out
    assert _versions(summary, "reg") == []  # a dry run writes nothing

    first = promote("reg")
    assert (first.trial_id, first.became_champion) == (best["trial_id"], True)
    # Re-evaluated from the registered files with the trial's own code: the sweep's own number comes back.
    assert first.score == pytest.approx(best["best/label_free/im"], abs=1e-4)
    (v1,) = _versions(summary, "reg")
    tags = v1.tags
    assert tags["trial_id"] == best["trial_id"] and tags["selected_by"] == "label_free/im"
    assert tags["sweep"] == "reg" and tags["data.fingerprint"] not in ("", "unknown")
    assert tags["git.revision"] and tags["version.torch"]
    assert "metric.oracle/target_test/h_score" in tags and "metric.source_val/acc" in tags
    # which criterion selected it, and what the selection benchmark measured of that criterion
    measured = load_benchmark()["criteria"]["label_free/im"]
    assert tags["selection.criterion"] == "label_free/im" and "bench/selection.py" in tags["selection.benchmark"]
    assert float(tags["selection.benchmark_regret_h"]) == pytest.approx(measured["regret_h"], abs=1e-4)
    assert float(tags["selection.benchmark_worst_pair_regret_acc"]) == pytest.approx(measured["worst_pair_regret_acc"],
                                                                                     abs=1e-4)
    assert tags["selection.benchmark_sweeps"] == str(measured["sweeps"])  # how many sweeps the figures average
    assert _alias(summary, "reg", CHAMPION) == _alias(summary, "reg", CHALLENGER) == str(v1.version)
    _assert_linked_to_its_logged_model(summary, v1, best, best_run)

    again = promote("reg")  # idempotent: same version, nothing moved
    assert again.version == str(v1.version) and len(_versions(summary, "reg")) == 1

    refused = promote("reg", trial_id=worse["trial_id"])  # the guard: a worse model does not take the champion
    assert not refused.became_champion and refused.champion_score == pytest.approx(first.score, abs=1e-6)
    assert _alias(summary, "reg", CHAMPION) == str(v1.version)
    assert _alias(summary, "reg", CHALLENGER) == refused.version != str(v1.version)

    forced = promote("reg", trial_id=worse["trial_id"], force=True)
    assert forced.version == refused.version and forced.became_champion and "--force" in forced.reason
    assert _alias(summary, "reg", CHAMPION) == forced.version
    assert len(_versions(summary, "reg")) == 2

    assert rollback("reg", summary.tracking_uri) == (forced.version, str(v1.version))
    assert _alias(summary, "reg", CHAMPION) == str(v1.version)
    with pytest.raises(ConfigError, match="first champion"):
        rollback("reg", summary.tracking_uri)


def test_guards_refuse_with_reasons(in_workdir):
    with pytest.raises(PromotionRefused, match="below the floor 0.99"):
        promote("reg", model_name="guarded", min_source_val_acc=0.99)
    with pytest.raises(PromotionRefused, match="no trial 'nope'"):
        promote("reg", model_name="guarded", trial_id="nope")
    _, sweep, _ = open_sweep("reg")
    row = {"best_step": 4, "path": "/gone"}
    problems = _guard_failures(row, {"source_val/acc": 0.9, "label_free/im": float("nan"), "label_free/snd": 1.0},
                               sweep, 0.5, None)
    assert any("label_free/im" in p for p in problems) and any("no checkpoint" in p for p in problems)
    assert _guard_failures(row, {"source_val/acc": 0.9, "label_free/im": 0.3}, sweep, 0.5, Path("/x")) == []
    assert _versions(in_workdir, "guarded") == []


def test_concurrent_promotions_leave_one_version(in_workdir):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [PYTHON, "-m", "sweeps.cli", "promote", "reg", "--model-name", "racing"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (only,) = _versions(in_workdir, "racing")
    assert _alias(in_workdir, "racing", CHAMPION) == _alias(in_workdir, "racing", CHALLENGER) == str(only.version)


def test_champion_loads_in_a_fresh_process_and_matches_the_trials_evaluation(in_workdir, tmp_path):
    summary = in_workdir
    promote("reg")
    _, sweep, _ = open_sweep("reg")
    from uda_core.data.dataset import load_dataset

    data = load_dataset(next(Path(sweep.run.data.root).glob("universal-decals-sdss-tiny-*")))
    rows = data["target/test"].catalogue["row"].to_numpy()
    flux = np.load(data.folder / "pixels.npy", mmap_mode="r")[rows].astype(np.float32)
    np.save(tmp_path / "flux.npy", flux)
    train_rows = data["target/train"].catalogue["row"].to_numpy()
    np.save(tmp_path / "train.npy", np.load(data.folder / "pixels.npy", mmap_mode="r")[train_rows].astype(np.float32))
    script = textwrap.dedent(f"""
        import mlflow, numpy as np
        mlflow.set_tracking_uri({summary.tracking_uri!r})
        model = mlflow.pyfunc.load_model("models:/reg@champion")
        model.predict(np.load({str(tmp_path / 'flux.npy')!r})).to_parquet({str(tmp_path / 'out.parquet')!r})
        model.predict(np.load({str(tmp_path / 'train.npy')!r}), params={{"views": 1}}).to_parquet(\
{str(tmp_path / 'train.parquet')!r})
    """)
    subprocess.run([PYTHON, "-c", script], check=True, cwd=tmp_path, timeout=300)
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    names = data.class_names[: data.num_known]
    assert list(out.columns) == [f"prob_{n}" for n in names] + [
        "predicted_class", "unknown", "anomaly_score", "entropy", "uncertainty", "predicted_prob_std"]

    # The trial's own evaluation path on its checkpoint: uda_core.evaluate.predict on the target domain.
    from sweeps.finalists import checkpoint_at
    from uda_core.evaluate import predict
    from uda_core.evaluation.metrics import softmax
    from uda_core.models import TARGET, build_model
    from uda_core.train import CHECKPOINT_FILE

    version = _client(summary).get_model_version_by_alias("reg", CHAMPION)
    row = next(r for r in summary.trials if r["trial_id"] == version.tags["trial_id"])
    ckpt = checkpoint_at(Path(row["path"]), row["best_step"])
    trial_cfg = RunConfig.model_validate_json((ckpt / "config.json").read_text())
    model = build_model(trial_cfg.model, data.in_channels, data.num_known)
    model.load_state_dict(torch.load(ckpt / CHECKPOINT_FILE, weights_only=True)["model"])
    logits, _ = predict(model, data["target/test"].x, TARGET)
    np.testing.assert_allclose(out[[f"prob_{n}" for n in names]].to_numpy(), softmax(logits), atol=1e-5)
    assert (out["uncertainty"] >= 0).all() and out["anomaly_score"].notna().all()
    # The unknown flag is the trial's own rejection rule: on target/train it rejects the fraction the trial logged.
    rejected = pq.read_table(tmp_path / "train.parquet").to_pandas()["unknown"].mean()
    assert rejected == pytest.approx(float(version.tags["metric.label_free/rejected_frac"]), abs=1e-9)


@pytest.fixture(scope="module")
def fresh_target(data_root, tiny_folder) -> Path:
    """Target-survey stamps the sweep never saw: the same pair generated with another seed."""
    return ensure_dataset(DataSpec(size="tiny", seed=7), data_root, progress=False)


def _write_fits(folder: Path, ids, flux, bands="grz", pixel_arcsec=0.396) -> Path:
    return write_fits_cutouts(folder, ids, flux, pixel_arcsec, bands)


def test_predict_catalogue_from_data_set_and_fits(in_workdir, fresh_target, tmp_path, capsys):
    summary = in_workdir
    promote("reg")
    out = tmp_path / "cat.parquet"
    assert main(["predict", "models:/reg@champion", str(fresh_target), "--out", str(out),
                 "--tracking-uri", summary.tracking_uri, "--top-n", "6"]) == 0
    assert "galaxies" in capsys.readouterr().out
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"galaxy_uda_sweeps"])
    version = _alias(summary, "reg", CHAMPION)
    assert meta["model_version"] == version and meta["model_name"] == "reg" and meta["views"] == 8
    cat = table.to_pandas()
    manifest = json.loads((fresh_target / "manifest.json").read_text())
    n_target = manifest["counts"]["target/train"] + manifest["counts"]["target/test"]
    assert len(cat) == n_target and cat["id"].is_unique
    probs = cat[[c for c in cat.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert set(cat["predicted_class"]) <= set(meta["classes"]) and cat["unknown"].dtype == bool
    assert (tmp_path / "cat_anomalies.png").stat().st_size > 1000

    # The same stamps as FITS cutouts (Legacy Survey style) give the same rows.
    pixels = np.load(fresh_target / "pixels.npy", mmap_mode="r")
    some = cat.iloc[:5]
    fits_dir = _write_fits(tmp_path / "fits", some["id"], pixels[some["source_index"].to_numpy()].astype(np.float32))
    out2 = tmp_path / "fits.parquet"
    assert main(["predict", "models:/reg@champion", str(fits_dir), "--out", str(out2),
                 "--tracking-uri", summary.tracking_uri]) == 0
    again = pq.read_table(out2).to_pandas().set_index("id").loc[some["id"]]
    np.testing.assert_allclose(again[[c for c in cat.columns if c.startswith("prob_")]].to_numpy(),
                               probs[:5], atol=1e-5)
    assert (again["predicted_class"].to_numpy() == some["predicted_class"].to_numpy()).all()

    # Nothing stored is overwritten, and a refused run leaves the catalogue as it was.
    before = out.read_bytes()
    assert main(["predict", "models:/reg@champion", str(fresh_target), "--out", str(out),
                 "--tracking-uri", summary.tracking_uri]) == 2
    assert out.read_bytes() == before


def test_predict_puts_other_grids_on_the_models_and_refuses_missing_bands(in_workdir, tmp_path, capsys, caplog):
    summary = in_workdir
    promote("reg")
    flux = np.full((1, 3, 32, 32), 0.01, np.float32)
    bands = _write_fits(tmp_path / "bands", ["a"], flux, bands="gri")
    out = tmp_path / "bands.parquet"
    assert main(["predict", "models:/reg@champion", str(bands), "--out", str(out),
                 "--tracking-uri", summary.tracking_uri]) == 2
    err = capsys.readouterr().err
    assert str(bands) in err and "missing ['z']" in err and not out.exists()

    # Another pixel scale and a bigger stamp: resampled and cropped onto the model's grid, said in a warning.
    big = np.full((1, 3, 64, 64), 0.01, np.float32)
    other = _write_fits(tmp_path / "scale", ["a"], big, pixel_arcsec=0.262)
    out = tmp_path / "scale.parquet"
    assert main(["predict", "models:/reg@champion", str(other), "--out", str(out),
                 "--tracking-uri", summary.tracking_uri]) == 0
    notice = [r.getMessage() for r in caplog.records if "put on the model's grid" in r.getMessage()]
    assert len(notice) == 1 and "64 px at 0.262" in notice[0]
    assert pq.read_table(out).num_rows == 1


def test_predict_as_a_ray_data_job_matches_the_local_catalogue(in_workdir, fresh_target, tmp_path):
    from sweeps.catalogue import predict_catalogue

    summary = in_workdir
    promote("reg")
    kw = dict(tracking_uri=summary.tracking_uri, rows_per_shard=64, progress=False, top_n=3)
    local = predict_catalogue("models:/reg@champion", fresh_target, tmp_path / "local.parquet", **kw)
    distributed = predict_catalogue("models:/reg@champion", fresh_target, tmp_path / "ray.parquet",
                                    use_ray=True, workers=1, **kw)
    assert distributed.rows == local.rows
    a = pq.read_table(local.path).to_pandas().set_index("id").sort_index()
    b = pq.read_table(distributed.path).to_pandas().set_index("id").sort_index()
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.select_dtypes("number").to_numpy(), b.select_dtypes("number").to_numpy(), atol=1e-5)
    assert (a["predicted_class"] == b["predicted_class"]).all()
