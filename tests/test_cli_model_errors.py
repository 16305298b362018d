"""Issue 16 for the model commands (`predict`, `rollback`, `promote --model-name`): every mistake is one `error:`
line (exit 2) that names what was given and what exists, found before expensive work, and nothing is created or
overwritten on the way. One real model in a real sqlite registry, trained for two steps, serves every test."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import write_fits_cutouts
from sweeps.cli import main
from uda_core.config import build_config
from uda_core.data.readers import DataError, open_cutouts

NAME = "galaxies"


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_root, tiny_folder) -> dict:
    """A registered model `galaxies` (version 1, alias champion) in a sqlite store, its logged model and run."""
    from sweeps.finalists import PYFUNC_CODE, REQUIREMENTS
    from uda_core.inference import export_classifier
    from uda_core.train import train

    work = tmp_path_factory.mktemp("model")
    cfg = build_config({"data": {"size": "tiny", "root": str(data_root)},
                        "model": {"width": 8, "depth": 2, "feature_dim": 16}, "method": {"name": "source_only"},
                        "optim": {"batch_size": 16},
                        "train": {"steps": 2, "eval_every": 2, "progress": False, "precision": "fp32"},
                        "eval": {"max_source_features": 100}})
    train(cfg, lambda *a: None, work / "run")
    export_classifier(work / "run/checkpoints/step_0000002", work / "classifier")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE), pip_requirements=REQUIREMENTS,
                                       artifacts={"classifier": str(work / "classifier")})
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(NAME)
    version = client.create_model_version(NAME, info.model_uri, run_id=run.info.run_id)
    client.set_registered_model_alias(NAME, "champion", version.version)
    return {"uri": uri, "client": client, "source": info.model_uri, "run_id": run.info.run_id, "work": work}


def _fails(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with one `error:` line and no traceback. Returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _stamps(n: int, px: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.01, 1.0, size=(n, 3, px, px)).astype(np.float32)


@pytest.mark.parametrize("uri, says", [
    ("models:/nope@champion", ["no registered model 'nope'", f"registered models there: {NAME}"]),
    (f"models:/{NAME}/99", ["has no version '99'", "its versions: 1", "champion -> version 1"]),
    (f"models:/{NAME}@nosuchalias", ["has no alias 'nosuchalias'", "its aliases: champion -> version 1"]),
    ("runs:/badid/model", ["no run 'badid'"]),
    ("models:/m-nosuchid", ["no logged model 'm-nosuchid'"]),
    (f"models:/{NAME}", ["not a model URI", "models:/NAME@ALIAS"]),
    ("not-a-uri", ["not a model URI and no such folder", "models:/NAME@ALIAS"]),
])
def test_a_model_uri_naming_nothing_says_what_exists(store, tiny_folder, tmp_path, capsys, uri, says):
    out = tmp_path / "cat.parquet"
    line = _fails(["predict", uri, str(tiny_folder), "--out", str(out), "--tracking-uri", store["uri"]], capsys)
    assert uri in line and all(s in line for s in says), line
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_model_is_named(store, tiny_folder, tmp_path, capsys):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    line = _fails(["predict", str(folder), str(tiny_folder), "--out", str(tmp_path / "c.parquet")], capsys)
    assert str(folder) in line and "MLmodel" in line and not (tmp_path / "c.parquet").exists()


def test_reading_commands_never_create_a_store(store, tiny_folder, tmp_path, monkeypatch, capsys):
    """Run from another folder, the default sqlite:///mlflow.db does not exist: say where was looked, create nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for argv in (["predict", f"models:/{NAME}@champion", str(tiny_folder), "--out", "cat.parquet"],
                 ["rollback", NAME],
                 ["rollback", NAME, "--tracking-uri", f"file://{tmp_path / 'mlruns'}"],
                 ["predict", f"models:/{NAME}@champion", str(tiny_folder), "--out", "cat.parquet",
                  "--tracking-uri", f"sqlite:///{tmp_path / 'elsewhere.db'}"]):
        line = _fails(argv, capsys)
        assert "no MLflow store at" in line and "--tracking-uri" in line and "MLFLOW_TRACKING_URI" in line, line
    assert str(tmp_path / "mlflow.db") in _fails(["rollback", NAME], capsys)
    # A URI MLflow cannot use, and a server that does not answer (MLflow alone retries for about two minutes).
    assert "unsupported URI 'foo://x'" in _fails(["rollback", NAME, "--tracking-uri", "foo://x"], capsys)
    t0 = time.perf_counter()
    assert "does not answer" in _fails(["rollback", NAME, "--tracking-uri", "http://127.0.0.1:9"], capsys)
    assert time.perf_counter() - t0 < 20
    assert list(tmp_path.iterdir()) == []


def test_rollback_names_what_is_missing_and_moves_nothing(store, capsys):
    client = store["client"]
    line = _fails(["rollback", "nope", "--tracking-uri", store["uri"]], capsys)
    assert "no registered model 'nope'" in line and f"registered models there: {NAME}" in line
    # A champion whose previous champion was deleted since: said, and the alias stays where it is.
    client.create_registered_model("pruned")
    v = client.create_model_version("pruned", store["source"], run_id=store["run_id"], tags={"previous_champion": "7"})
    client.set_registered_model_alias("pruned", "champion", v.version)
    line = _fails(["rollback", "pruned", "--tracking-uri", store["uri"]], capsys)
    assert "has no version '7'" in line and "its versions: 1" in line
    assert str(client.get_model_version_by_alias("pruned", "champion").version) == str(v.version)
    assert "rolled_back" not in client.get_model_version("pruned", v.version).tags


@pytest.mark.parametrize("name", ["a/b", "x:y", " ", "it's", "a@b"])
def test_promote_refuses_a_model_name_mlflow_cannot_use_before_reading_the_sweep(tmp_path, capsys, name):
    line = _fails(["promote", "nosuchsweep", "--storage", str(tmp_path), "--model-name", name], capsys)
    assert f"--model-name {name!r}" in line and "no sweep" not in line


@pytest.mark.parametrize("flag, value", [("--batch-size", "-5"), ("--batch-size", "0"), ("--workers", "0"),
                                         ("--workers", "-1"), ("--top-n", "-1"), ("--batch-size", "many")])
def test_impossible_numbers_are_one_usage_line(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["predict", "models:/x@champion", str(tmp_path), "--out", str(tmp_path / "c.parquet"), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}:" in err and value in err and "Traceback" not in err


def test_files_beside_the_catalogue_are_not_overwritten_without_overwrite(store, tiny_folder, tmp_path, capsys):
    out = tmp_path / "cat.parquet"
    for beside in ("cat_anomalies.png", "cat_skipped.csv"):
        (tmp_path / beside).write_bytes(b"theirs")
        line = _fails(["predict", "models:/nope@champion", str(tiny_folder), "--out", str(out)], capsys)
        assert str(tmp_path / beside) in line and "--overwrite" in line  # before the model is even looked up
        assert (tmp_path / beside).read_bytes() == b"theirs" and not out.exists()
        (tmp_path / beside).unlink()


def test_a_corrupt_fits_file_sorted_last_fails_before_the_model_loads(store, tmp_path, capsys):
    folder = write_fits_cutouts(tmp_path / "fits", [f"g{i:02d}" for i in range(40)], _stamps(40), 0.396)
    last = folder / "g39.fits"
    last.write_bytes(last.read_bytes()[:-2000])
    out = tmp_path / "cat.parquet"
    t0 = time.perf_counter()
    # A model URI that would fail: the input's error comes first, so every header was read before the model.
    line = _fails(["predict", "models:/nope@champion", str(folder), "--out", str(out), "--tracking-uri", store["uri"]],
                  capsys)
    assert time.perf_counter() - t0 < 20
    assert str(last) in line and "truncated" in line and "--skip-bad" in line and "nope" not in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fits"]

    assert main(["predict", f"models:/{NAME}@champion", str(folder), "--out", str(out), "--tracking-uri",
                 store["uri"], "--skip-bad", "--views", "1", "--top-n", "0"]) == 0
    assert pq.read_table(out).num_rows == 39
    skipped = pd.read_csv(tmp_path / "cat_skipped.csv")
    assert skipped["file"].tolist() == [str(last)] and "truncated" in skipped["reason"][0]
    assert "left out 1" in capsys.readouterr().out


def test_a_nan_pixel_names_its_file_or_is_left_out_with_skip_bad(store, tmp_path, capsys):
    flux = _stamps(6)
    flux[4, 1, 10, 10] = np.nan
    folder = write_fits_cutouts(tmp_path / "fits", [f"g{i}" for i in range(6)], flux, 0.396)
    out = tmp_path / "new" / "cat.parquet"
    argv = ["predict", f"models:/{NAME}@champion", str(folder), "--out", str(out), "--tracking-uri", store["uri"],
            "--views", "1", "--top-n", "2"]
    line = _fails(argv, capsys)
    assert str(folder / "g4.fits") in line and "non-finite" in line and "--skip-bad" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fits"]  # no catalogue, picture, temporary file or folder

    assert main([*argv, "--skip-bad"]) == 0
    cat = pq.read_table(out).to_pandas()
    assert sorted(cat["id"]) == ["g0", "g1", "g2", "g3", "g5"] and cat["anomaly_score"].notna().all()
    skipped = pd.read_csv(out.parent / "cat_skipped.csv")
    assert skipped["id"].tolist() == ["g4"] and "non-finite" in skipped["reason"][0]

    # --overwrite replaces the catalogue and what stood beside it: an old skipped list no longer describes it.
    flux[4] = 0.5
    (folder / "g4.fits").unlink()
    write_fits_cutouts(folder, ["g4"], flux[4:5], 0.396)
    assert main([*argv, "--overwrite"]) == 0
    assert pq.read_table(out).num_rows == 6 and not (out.parent / "cat_skipped.csv").exists()


def _h5(path: Path, images: np.ndarray, bands: str | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f["images"] = images
        if bands:
            f.attrs["bands"] = bands
    return path


def test_a_channel_first_hdf5_is_read_as_such_and_odd_shapes_get_fitting_advice(tmp_path):
    flux = _stamps(4, px=16)
    last = open_cutouts(_h5(tmp_path / "last.h5", flux.transpose(0, 2, 3, 1)))
    first = open_cutouts(_h5(tmp_path / "first.h5", flux))
    assert first.stamp_shape == last.stamp_shape == (3, 16, 16)
    (shard,) = first.shards()
    np.testing.assert_array_equal(first.read(shard).flux, flux)
    np.testing.assert_array_equal(first.read_at(str(tmp_path / "first.h5"), [2])[0], flux[2])

    with pytest.raises(DataError, match=r"stamps of 5 planes.*Galaxy10 default \['g', 'r', 'z'\].*bands to one "
                                        r"band per plane.*'grizy'"):
        open_cutouts(_h5(tmp_path / "five.h5", np.zeros((2, 5, 16, 16), np.float32)))
    with pytest.raises(DataError, match=r"no square stamps"):
        open_cutouts(_h5(tmp_path / "odd.h5", np.zeros((2, 3, 16, 20), np.float32)))
