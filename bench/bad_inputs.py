"""The bad-input battery: what a new user gets wrong, tried through the `uda-sweep` command as they would type it.

Each case runs the console script in a fresh folder and is judged on four things:
  clean      exit status 2 and one `error:` line (or argparse's usage line), no Python traceback
  seconds    wall time to fail, and CPU time (which other work on the cores barely changes); goal: under 2 s for
             a config or argument error, seconds for a bad file or a registry lookup (MLflow must be imported first)
  effects    files created, changed or removed anywhere in the work folder (goal: none)
  message    the error's first line, as printed (read them: each should name the file, key or flag and the fix)
The fixtures (a tiny generated data set, an imported real-format one with an unlabelled target, FITS cutouts, a
registered model) are built once in the same run. `python -c pass` is timed in the same run as the floor.

    .venv/bin/python bench/bad_inputs.py [--only SUBSTRING] [--publish]

Last line: JSON (cases, clean, without side effects, slowest config/argument error, failures by id).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "uda-sweep"
FAST_S = 2.0  # goal for config and argument errors


@dataclass
class Case:
    id: str
    kind: str  # "config" (a file or flag: fast goal), "data" (a file's contents must be read) or "store" (a lookup
    #            in the MLflow registry: MLflow must be imported and its store opened first)
    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)  # name -> text, written into the case's folder first
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- fixtures
def _sweep(w: Path, **over) -> dict:
    raw = {"name": "battery", "run": {"data": {"size": "tiny", "root": str(w / "root")},
                                      "model": {"width": 8, "depth": 2, "feature_dim": 16},
                                      "method": {"name": "dance"}, "optim": {"batch_size": 16},
                                      "train": {"steps": 4, "eval_every": 2, "precision": "fp32"}},
           "search": {"num_trials": 2}, "objective": {"metric": "label_free/im"},
           "storage": {"path": str(w / "sweeps")}, "tracking": {"uri": f"sqlite:///{w / 'store' / 'mlflow.db'}"}}
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return raw


def _run_config(w: Path) -> dict:
    return _sweep(w)["run"]


def _write_fits(folder: Path, ids, flux, pixel_arcsec: float) -> None:
    from astropy.io import fits
    from astropy.wcs import WCS

    folder.mkdir(parents=True, exist_ok=True)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cdelt = [-pixel_arcsec / 3600, pixel_arcsec / 3600]
    header = wcs.to_header()
    header["BANDS"] = "grz"
    for gid, stamp in zip(ids, flux):
        fits.PrimaryHDU(np.asarray(stamp, np.float32), header=header).writeto(folder / f"{gid}.fits")


def build_fixtures(w: Path) -> dict[str, Path]:
    """A tiny data set, FITS cutouts (good, one truncated, one with a NaN pixel), an imported data set with an
    unlabelled target, and a registered model `galaxy` (one version, alias champion) in w/store/mlflow.db."""
    import mlflow
    import pyarrow.parquet as pq

    from sweeps.cli import main as cli
    from sweeps.finalists import PYFUNC_CODE, REQUIREMENTS, model_signature
    from uda_core.config import build_config
    from uda_core.data.store import DataSpec, ensure_dataset
    from uda_core.inference import export_classifier
    from uda_core.train import load_data, train

    data = ensure_dataset(DataSpec(size="tiny"), w / "root", progress=False)
    cat = pq.read_table(data / "catalogue.parquet").to_pandas()
    pixels = np.load(data / "pixels.npy", mmap_mode="r")
    src, tgt = cat[cat["domain"] == "source"], cat[cat["domain"] == "target"]
    _write_fits(w / "src_fits", src["id"], pixels[src["row"].to_numpy()], 0.262)
    _write_fits(w / "tgt_fits", tgt["id"], pixels[tgt["row"].to_numpy()], 0.396)
    src[["id", "class_name"]].rename(columns={"class_name": "label"}).to_csv(w / "labels.csv", index=False)
    assert cli(["data", "import", "--source", str(w / "src_fits"), "--source-labels", str(w / "labels.csv"),
                "--target", str(w / "tgt_fits"), "--out", str(w / "imported"), "--workers", "1"]) == 0

    few = tgt.head(40)
    _write_fits(w / "fits_truncated", few["id"], pixels[few["row"].to_numpy()], 0.396)
    last = sorted((w / "fits_truncated").glob("*.fits"))[-1]
    last.write_bytes(last.read_bytes()[: 2880 + 100])  # a header and the start of the data: a cut-off download
    nan = pixels[few["row"].to_numpy()].copy()
    nan[17, 0, 3, 3] = np.nan
    _write_fits(w / "fits_nan", few["id"], nan, 0.396)

    bad = w / "data_truncated"
    shutil.copytree(data, bad)
    size = (bad / "pixels.npy").stat().st_size
    with open(bad / "pixels.npy", "r+b") as f:
        f.truncate(size // 2)
    garbage = w / "data_garbage_manifest"
    shutil.copytree(data, garbage)
    (garbage / "manifest.json").write_text("{not json")
    badcat = w / "data_bad_catalogue"
    shutil.copytree(data, badcat)
    (badcat / "catalogue.parquet").write_bytes(b"PAR1 this is not parquet")

    cfg = build_config({**_run_config(w),
                        "train": {"steps": 2, "eval_every": 2, "progress": False, "precision": "fp32"}})
    loaded = load_data(cfg, progress=False)
    ckpts = []
    train(cfg, lambda ev, ck: ckpts.append(ck), w / "work" / "run", data=loaded)
    export_classifier(ckpts[-1], w / "work" / "classifier", loaded)
    signature, example = model_signature(w / "work" / "classifier")
    (w / "store").mkdir()
    cwd = os.getcwd()
    os.chdir(w / "store")  # the store's artifacts go beside it, as a sweep run there would put them
    try:
        mlflow.set_tracking_uri(f"sqlite:///{w / 'store' / 'mlflow.db'}")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE), registered_model_name="galaxy",
                                    artifacts={"classifier": str(w / "work" / "classifier")}, signature=signature,
                                    input_example=example, pip_requirements=REQUIREMENTS)
        mlflow.MlflowClient().set_registered_model_alias("galaxy", "champion", "1")
    finally:
        os.chdir(cwd)
    mlflow.pyfunc.save_model(str(w / "model"), python_model=str(PYFUNC_CODE),
                             artifacts={"classifier": str(w / "work" / "classifier")}, signature=signature,
                             input_example=example, pip_requirements=REQUIREMENTS)
    (w / "catalogue.parquet").write_bytes(b"")  # an existing --out
    (w / "taken.parquet").touch()
    return {"data": data}


# ------------------------------------------------------------------------------------------------------- cases
def cases(w: Path) -> list[Case]:
    def y(raw) -> str:
        return yaml.safe_dump(raw, sort_keys=False)

    sweep, run = _sweep(w), _run_config(w)
    store = f"sqlite:///{w / 'store' / 'mlflow.db'}"
    data = str(w / "root" / next(p.name for p in (w / "root").iterdir() if p.is_dir()))
    imported = str(w / "imported")
    model = str(w / "model")
    predict = ["predict", model, data, "--out", "c.parquet"]
    cs = [
        # --- the sweep file (`uda-sweep run`)
        Case("run/missing-file", "config", ["run", "nope.yaml"]),
        Case("run/typo-top-key", "config", ["run", "s.yaml"],
             {"s.yaml": y({"serach" if k == "search" else k: v for k, v in sweep.items()})}),
        Case("run/typo-nested-key", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "optim": {"batch_size": 16, "lrr": 0.1}}))}),
        Case("run/wrong-type", "config", ["run", "s.yaml"], {"s.yaml": y(_sweep(w, search={"num_trials": "many"}))}),
        Case("run/zero-trials", "config", ["run", "s.yaml"], {"s.yaml": y(_sweep(w, search={"num_trials": 0}))}),
        Case("run/unknown-metric", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, objective={"metric": "label_free/imm"}))}),
        Case("run/mode-against-direction", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, objective={"metric": "label_free/entropy", "mode": "max"}))}),
        Case("run/duplicate-key", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w)) + "search:\n  num_trials: 5\n"}),
        Case("run/empty-file", "config", ["run", "s.yaml"], {"s.yaml": "# nothing yet\n"}),
        Case("run/run-config-given", "config", ["run", "r.yaml"], {"r.yaml": y(run)}),
        Case("run/not-yaml", "config", ["run", "s.yaml"], {"s.yaml": "name: [unclosed\n  run: {"}),
        Case("run/top-level-list", "config", ["run", "s.yaml"], {"s.yaml": "- name: x\n"}),
        Case("run/oracle-on-unlabelled", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "data": {"path": imported}},
                                 objective={"metric": "oracle/target_test/h_score"}))}),
        Case("run/override-low-above-high", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, search={"num_trials": 2,
                                            "overrides": {"optim.lr": {"low": 0.1, "high": 0.001}}}))}),
        Case("run/negative-concurrency", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, resources={"concurrency": -1}))}),
        Case("run/missing-data-path", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "data": {"path": str(w / "no_such_data")}}))}),
        Case("run/truncated-data-set", "data", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "data": {"path": str(w / "data_truncated")}}))}),
        Case("run/nan-learning-rate", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "optim": {"batch_size": 16, "lr": float("nan")}}))}),
        Case("run/unknown-scheduler", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, scheduler={"type": "hyperband"}))}),
        Case("run/unknown-baseline", "config", ["run", "s.yaml"], {"s.yaml": y(_sweep(w, baselines=["adabnn"]))}),
        Case("run/unknown-method", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "method": {"name": "danse"}}))}),
        Case("run/eval-every-above-steps", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, run={**run, "train": {"steps": 4, "eval_every": 10, "precision": "fp32"}}))}),
        Case("run/storage-is-a-file", "config", ["run", "s.yaml"],
             {"s.yaml": y(_sweep(w, storage={"path": str(w / "taken.parquet")}))}),
        Case("run/bad-address", "config", ["run", "s.yaml", "--address", "10.255.255.1:6379"],
             {"s.yaml": y(_sweep(w))}),
        # --- the run config (`uda-sweep train`)
        Case("train/missing-file", "config", ["train", "nope.yaml", "--out", "out"]),
        Case("train/empty-file", "config", ["train", "r.yaml", "--out", "out"], {"r.yaml": "\n"}),
        Case("train/sweep-file-given", "config", ["train", "s.yaml", "--out", "out"], {"s.yaml": y(sweep)}),
        Case("train/unknown-key", "config", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y({**run, "model": {"width": 8, "widht": 9}})}),
        Case("train/wrong-type", "config", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y({**run, "optim": {"batch_size": "big"}})}),
        Case("train/negative-steps", "config", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y({**run, "train": {"steps": -5}})}),
        Case("train/duplicate-key", "config", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y(run) + "method:\n  name: adabn\n"}),
        Case("train/resume-without-checkpoint", "config", ["train", "r.yaml", "--out", "out", "--resume"],
             {"r.yaml": y(run)}),
        Case("train/garbage-manifest", "data", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y({**run, "data": {"path": str(w / "data_garbage_manifest")}})}),
        Case("train/oracle-select-on-unlabelled", "config", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y({**run, "data": {"path": imported}, "eval": {"select_by": "oracle/target_test/h_score"}})}),
        Case("train/unknown-select-by", "config", ["train", "r.yaml", "--out", "out"],
             {"r.yaml": y({**run, "eval": {"select_by": "label_free/comb"}})}),
        Case("train/not-yaml", "config", ["train", "r.yaml", "--out", "out"], {"r.yaml": "data: {size: tiny\n"}),
        # --- a sweep's name (`resume`, `status`, `promote`, `prune`)
        Case("resume/unknown-sweep", "config", ["resume", "nosuch", "--storage", str(w / "sweeps")]),
        Case("status/unknown-sweep", "config", ["status", "nosuch", "--storage", str(w / "sweeps")]),
        Case("status/negative-watch", "config", ["status", "nosuch", "--watch", "-3"]),
        Case("promote/unknown-sweep", "config", ["promote", "nosuch", "--storage", str(w / "sweeps")]),
        Case("promote/guard-out-of-range", "config", ["promote", "nosuch", "--min-source-val-acc", "2"]),
        Case("prune/unknown-sweep", "config", ["prune", "nosuch", "--storage", str(w / "sweeps")]),
        # --- the registry (`rollback`)
        Case("rollback/unknown-model", "store", ["rollback", "nosuch", "--tracking-uri", store]),
        Case("rollback/no-store-here", "config", ["rollback", "galaxy"]),
        Case("rollback/nothing-to-roll-back", "store", ["rollback", "galaxy", "--tracking-uri", store]),
        Case("rollback/store-file-missing", "config", ["rollback", "galaxy", "--tracking-uri", f"sqlite:///{w}/nostore.db"]),
        # --- a model and cutouts (`predict`)
        Case("predict/unknown-model-name", "store", ["predict", "models:/nosuch@champion", data, "--out", "c.parquet",
                                                      "--tracking-uri", store]),
        Case("predict/unknown-alias", "store", ["predict", "models:/galaxy@nosuch", data, "--out", "c.parquet",
                                                 "--tracking-uri", store]),
        Case("predict/unknown-version", "store", ["predict", "models:/galaxy/99", data, "--out", "c.parquet",
                                                   "--tracking-uri", store]),
        Case("predict/unknown-run", "store", ["predict", "runs:/0123456789abcdef/model", data, "--out", "c.parquet",
                                               "--tracking-uri", store]),
        Case("predict/folder-not-a-model", "config", ["predict", data, data, "--out", "c.parquet"]),
        Case("predict/garbage-uri", "config", ["predict", "foo", data, "--out", "c.parquet"]),
        Case("predict/no-store-here", "config", ["predict", "models:/galaxy@champion", data, "--out", "c.parquet"]),
        Case("predict/negative-batch", "config", ["predict", str(w / "model"), data, "--out", "c.parquet",
                                                  "--batch-size", "-5"]),
        Case("predict/zero-batch", "config", [*predict, "--batch-size", "0"]),
        Case("predict/zero-workers", "config", [*predict, "--workers", "0"]),
        Case("predict/negative-top-n", "config", [*predict, "--top-n", "-1"]),
        Case("predict/out-exists", "config", ["predict", model, data, "--out", str(w / "catalogue.parquet")]),
        Case("predict/picture-exists", "config", ["predict", str(w / "model"), data, "--out", "c.parquet"],
             {"c_anomalies.png": "my own picture"}),
        Case("predict/missing-input", "config", ["predict", str(w / "model"), "nowhere", "--out", "c.parquet"]),
        Case("predict/truncated-fits-last", "data", ["predict", str(w / "model"), str(w / "fits_truncated"),
                                                     "--out", "c.parquet"]),
        Case("predict/nan-pixel", "data", ["predict", str(w / "model"), str(w / "fits_nan"), "--out", "c.parquet"]),
        Case("predict/truncated-data-set", "data", ["predict", str(w / "model"), str(w / "data_truncated"),
                                                    "--out", "c.parquet"]),
        # --- data sets (`data generate`, `data import`, `data show`)
        Case("generate/unknown-size", "config", ["data", "generate", "--size", "huge", "--out", "d"]),
        Case("generate/label-noise-range", "config", ["data", "generate", "--label-noise", "0.7", "--out", "d"]),
        Case("generate/unknown-survey", "config", ["data", "generate", "--source", "decalz", "--out", "d"]),
        Case("generate/out-exists", "config", ["data", "generate", "--out", str(w / "store")]),
        Case("generate/bad-survey-yaml", "config", ["data", "generate", "--target", "t.yaml", "--out", "d"],
             {"t.yaml": "name: mine\npixel_arcsec: -1\n"}),
        Case("import/missing-source", "config", ["data", "import", "--source", "nowhere",
                                                 "--target", str(w / "tgt_fits"),
                                                 "--source-labels", str(w / "labels.csv"), "--out", "d"]),
        Case("import/split-sums-above-one", "config", ["data", "import", "--source", str(w / "src_fits"), "--target",
                                                       str(w / "tgt_fits"), "--source-labels", str(w / "labels.csv"),
                                                       "--source-split", "0.5,0.5,0.5", "--out", "d"]),
        Case("import/test-fraction-range", "config", ["data", "import", "--source", str(w / "src_fits"), "--target",
                                                      str(w / "tgt_fits"), "--source-labels", str(w / "labels.csv"),
                                                      "--target-test-frac", "1.5", "--out", "d"]),
        Case("import/garbage-class-map", "config", ["data", "import", "--source", str(w / "src_fits"), "--target",
                                                    str(w / "tgt_fits"), "--source-labels", str(w / "labels.csv"),
                                                    "--class-map", "E:elliptical", "--out", "d"]),
        Case("import/wrong-id-column", "config", ["data", "import", "--source", str(w / "src_fits"), "--target",
                                                  str(w / "tgt_fits"), "--source-labels", str(w / "labels.csv"),
                                                  "--id-column", "objid", "--out", "d"]),
        Case("import/negative-stamp", "config", ["data", "import", "--source", str(w / "src_fits"), "--target",
                                                 str(w / "tgt_fits"), "--source-labels", str(w / "labels.csv"),
                                                 "--stamp-px", "-3", "--out", "d"]),
        Case("import/truncated-fits", "data", ["data", "import", "--source", str(w / "src_fits"), "--target",
                                               str(w / "fits_truncated"), "--source-labels", str(w / "labels.csv"),
                                               "--out", "d"]),
        Case("show/missing-folder", "config", ["data", "show", "nowhere"]),
        Case("show/truncated-pixels", "data", ["data", "show", str(w / "data_truncated"), "--out", "x.png"]),
        Case("show/garbage-manifest", "data", ["data", "show", str(w / "data_garbage_manifest"), "--out", "x.png"]),
        Case("show/corrupt-catalogue", "data", ["data", "show", str(w / "data_bad_catalogue"), "--out", "x.png"]),
        Case("show/zero-per-class", "config", ["data", "show", data, "--per-class", "0", "--out", "x.png"]),
        # --- cluster files and the command line itself
        Case("cluster-check/missing-file", "config", ["cluster-check", "nope.yaml"]),
        Case("cluster-check/sweep-file-given", "config", ["cluster-check", "s.yaml"], {"s.yaml": y(sweep)}),
        Case("cli/unknown-command", "config", ["sweep", "s.yaml"]),
        Case("cli/no-command", "config", []),
    ]
    for c in cs:  # each sweep its own name, so one case's sweep never answers for the next
        slug = c.id.replace("/", "-")
        c.files = {k: v.replace("name: battery\n", f"name: {slug}\n") for k, v in c.files.items()}
    return cs


# --------------------------------------------------------------------------------------------------- judging
def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = os.path.relpath(dirpath, folder)
        out[rel + "/"] = (0, 0)
        for name in filenames:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out[os.path.join(rel, name)] = (st.st_size, st.st_mtime_ns)
    return out


def _effects(before: dict, after: dict) -> list[str]:
    created = [f"+{k}" for k in after if k not in before]
    removed = [f"-{k}" for k in before if k not in after]
    changed = [f"~{k}" for k in after if k in before and after[k] != before[k] and not k.endswith("/")]
    return created + removed + changed


def judge(case: Case, w: Path) -> dict:
    folder = w / "cases" / case.id.replace("/", "__")
    folder.mkdir(parents=True)
    for name, text in case.files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({"OMP_NUM_THREADS": "1", **case.env})
    before = _snapshot(w)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([str(CLI), *case.argv], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        rc, err = p.returncode, p.stderr + p.stdout
    except subprocess.TimeoutExpired as e:
        rc, err = None, f"timed out after 300 s: {e}"
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time barely moves when others load the cores
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    after = _snapshot(w)
    effects = [e for e in _effects(before, after) if not e.startswith(f"+cases/{folder.name}/") or
               e[len(f"+cases/{folder.name}/"):] not in {*case.files, ""}]
    effects = [e for e in effects if e != f"+cases/{folder.name}/"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ") or ": error: " in ln]
    traceback = any(ln.startswith("Traceback") for ln in lines)
    clean = rc == 2 and len(errors) >= 1 and not traceback
    message = errors[0] if errors else (lines[-1] if lines else "")
    return {"id": case.id, "kind": case.kind, "rc": rc, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
            "clean": clean, "traceback": traceback, "effects": effects, "message": message}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="run the cases whose id contains this")
    ap.add_argument("--keep", help="build the fixtures in this folder and keep it (default: a temporary one)")
    ap.add_argument("--publish", action="store_true", help="write the JSON to bench/results/bad_inputs.json")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    t0 = time.perf_counter()
    if not (work / "store" / "mlflow.db").exists():
        work.mkdir(parents=True, exist_ok=True)
        build_fixtures(work)
    print(f"fixtures in {work} ({time.perf_counter() - t0:.0f} s)", flush=True)
    shutil.rmtree(work / "cases", ignore_errors=True)
    floor = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    floor = time.perf_counter() - floor

    results = []
    for case in cases(work):
        if a.only and a.only not in case.id:
            continue
        r = judge(case, work)
        results.append(r)
        mark = "ok " if r["clean"] and not r["effects"] else "BAD"
        slow = " SLOW" if r["kind"] == "config" and r["seconds"] > FAST_S else ""
        print(f"{mark} {r['seconds']:6.2f}s {r['cpu_s']:5.2f}cpu{slow:5} {r['id']:36} rc={r['rc']} "
              f"{r['message'][:150]}",
              flush=True)
        for e in r["effects"][:5]:
            print(f"{'':49}side effect: {e}")
    config = [r for r in results if r["kind"] == "config"]
    out = {
        "cases": len(results), "clean": sum(r["clean"] for r in results),
        "without_side_effects": sum(not r["effects"] for r in results),
        "python_start_s": round(floor, 2),
        "config_errors": len(config), "config_slowest_s": max((r["seconds"] for r in config), default=0.0),
        "config_over_2s": [r["id"] for r in config if r["seconds"] > FAST_S],
        "data_slowest_s": max((r["seconds"] for r in results if r["kind"] == "data"), default=0.0),
        "store_slowest_s": max((r["seconds"] for r in results if r["kind"] == "store"), default=0.0),
        "failures": [r["id"] for r in results if not r["clean"] or r["effects"]],
    }
    print(f"{out['clean']}/{out['cases']} clean, {out['without_side_effects']}/{out['cases']} without side effects; "
          f"slowest config error {out['config_slowest_s']:.2f} s (python itself starts in {floor:.2f} s)")
    line = json.dumps(out)
    if a.publish:
        path = Path(__file__).parent / "results" / "bad_inputs.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({**out, "results": results}, indent=1) + "\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(line)


if __name__ == "__main__":
    main()
