"""`uda-sweep`: one command, one subcommand per job. Subcommands import their heavy modules lazily."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from uda_core.errors import UdaError

__all__ = ["main"]


def _data_generate(a: argparse.Namespace) -> None:
    from uda_core.data.store import DataSpec, generate

    # --source/--target are preset names or survey YAML files, both of which DataSpec takes as they are.
    spec = DataSpec(a.task, a.source, a.target, a.size, a.seed, a.label_noise)
    folder = generate(spec, Path(a.out))
    print(f"wrote {folder}")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (one usage line for 0, -5 or 'x', not a traceback later)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _int_at_least(text, 0)


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (an accuracy floor)."""
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]: give an accuracy, e.g. 0.5")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number >= {low}")
    return value


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UdaError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0.7,0.1,0.2") from None


def _data_import(a: argparse.Namespace) -> None:
    from uda_core.data.importer import DomainInput, ImportSpec, import_dataset
    from uda_core.data.readers import _parse_bands

    spec = ImportSpec(
        source=DomainInput(a.source, a.source_labels, a.source_survey, a.source_pixel_arcsec,
                           _parse_bands(a.source_bands) if a.source_bands else None, votes=a.source_votes),
        target=DomainInput(a.target, a.target_labels, a.target_survey, a.target_pixel_arcsec,
                           _parse_bands(a.target_bands) if a.target_bands else None, votes=a.target_votes),
        id_column=a.id_column, label_column=a.label_column, class_map=a.class_map,
        unknown_classes=[c.strip() for c in a.unknown_classes.split(",") if c.strip()] if a.unknown_classes else [],
        bands=_parse_bands(a.bands) if a.bands else None, stamp_px=a.stamp_px, pixel_arcsec=a.pixel_arcsec,
        source_split=_float_list(a.source_split, "--source-split"), target_test_frac=a.target_test_frac,
        seed=a.seed, skip_bad=a.skip_bad, workers=a.workers,
    )
    r = import_dataset(spec, Path(a.out), progress=True)
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)  # once: the importer logs them at INFO only
    print(f"pre-scan: {r.files_scanned} file(s) in {r.prescan_seconds:.1f} s; "
          f"{r.stamps} stamps copied in {r.copy_seconds:.1f} s ({r.stamps / max(r.copy_seconds, 1e-9):.0f}/s)")
    if r.skipped:
        print(f"left out {r.skipped} file(s) or row(s); reasons in {r.folder / 'skipped.csv'}")
    print(f"wrote {r.folder}: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()))
    print(f"train on it with `data: {{path: {r.folder}}}` in a run config or a sweep's run section")


def _data_show(a: argparse.Namespace) -> None:
    from uda_core.data.show import show_dataset

    print(f"wrote {show_dataset(Path(a.dir), Path(a.out) if a.out else None, per_class=a.per_class)}")


def _train(a: argparse.Namespace) -> None:
    from uda_core.config import load_config

    cfg = load_config(a.config)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UdaError(f"--out {out} is a file; give a folder for the run (config, metrics.json, checkpoints)")
    resume = None
    if a.resume:
        ckpts = sorted((out / "checkpoints").glob("step_???????"))
        if not ckpts:
            raise UdaError(f"--resume: no checkpoint under {out / 'checkpoints'}; run without --resume to start")
        resume = ckpts[-1]
    elif (out / "metrics.json").exists():
        raise UdaError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.data.path:  # an existing data set: what it cannot give (target labels) fails before --out is made
        from uda_core.data.store import verify

        manifest = verify(Path(cfg.data.path), full=False)  # a wrong path or truncated file fails before torch loads
        from uda_core.label_checks import check_target_label_use

        check_target_label_use(cfg, manifest, cfg.data.path)
    from uda_core.reporting import FileReporter  # torch: only once the config and --out have passed
    from uda_core.train import train

    config_text = Path(a.config).read_text()
    reporter = FileReporter(out, cfg.eval.select_by, cfg.eval.select_mode)

    def report(evaluation, checkpoint) -> None:
        # The first checkpoint makes --out; config.yaml comes with it, so a run that fails earlier (bad data, a
        # value only the data set can refuse, Ctrl-C) creates no folder and leaves an existing one as it was.
        (out / "config.yaml").write_text(config_text)
        reporter(evaluation, checkpoint)

    last = train(cfg, report, out, resume_from=resume)
    reporter.finish(last)
    best = reporter.best
    if best is None:
        print(f"done: {out / 'metrics.json'}; {cfg.eval.select_by} was never finite, so no evaluation is marked best")
    else:
        print(f"done: {out / 'metrics.json'}; best {cfg.eval.select_by} = "
              f"{best['metrics'][cfg.eval.select_by]:.4f} at step {best['step']}")


def _nothing_to_promote(rows: list[dict], sweep) -> str | None:
    """Why no trial can be promoted, once every search trial has ended without a checkpoint passing the guard."""
    search = [r for r in rows if r["kind"] == "search"]
    # best_step: -1 (or None) until a checkpoint passes the guard; evaluations are at steps >= 1
    if not search or any((r["best_step"] or 0) > 0 or r["status"] in ("PENDING", "RUNNING") for r in search):
        return None
    return (f"no search trial has a best checkpoint: none passed the guard source_val/acc >= "
            f"{sweep.objective.min_source_val_acc} with a finite {sweep.objective.metrics[0]}; nothing can be promoted "
            "(lower objective.min_source_val_acc, or train longer)")


def _print_summary(summary) -> None:
    import yaml

    from .config import parse_sweep
    from .names import runs_url
    from .run import SWEEP_FILE
    from .summary import format_table

    sweep = parse_sweep(yaml.safe_load((summary.path / SWEEP_FILE).read_text()), str(summary.path / SWEEP_FILE))
    print(format_table(summary.trials, sweep))
    if summary.best:
        b = summary.best
        print(f"best trial {b['trial_id']} ({b.get('mlflow_run_name') or 'no MLflow run'}) at step {b['best_step']}: "
              + ", ".join(f"{m} = {b[f'best/{m}']:.4f}" for m in sweep.objective.metrics))
    elif summary.finished and (why := _nothing_to_promote(summary.trials, sweep)):
        print(why)
    print(f"MLflow: experiment {sweep.tracking.experiment or sweep.name}, parent run {summary.parent_run_id}; "
          + ("" if summary.tracking_uri.startswith(("http://", "https://"))
             else f"run `mlflow ui --backend-store-uri {summary.tracking_uri}`, then ")
          + f"open {runs_url(summary.tracking_uri, summary.experiment_id)}")
    if not summary.finished:
        print(f"the sweep did not finish; continue it with: uda-sweep resume {sweep.name}")


def _run(a: argparse.Namespace) -> None:
    from .run import run_sweep

    _print_summary(run_sweep(a.sweep, address=a.address or os.environ.get("RAY_ADDRESS")))


def _resume(a: argparse.Namespace) -> None:
    from .run import resume_sweep

    _print_summary(resume_sweep(a.name, storage=a.storage, address=a.address or os.environ.get("RAY_ADDRESS")))


def _status(a: argparse.Namespace) -> None:
    import time

    from .run import open_sweep

    path, sweep, _ = open_sweep(a.name, a.storage)
    from .summary import format_table, trial_rows  # pandas: only once the sweep exists

    while True:
        try:
            rows = trial_rows(path, sweep)
        except (FileNotFoundError, ValueError):
            rows = []  # Tune has not written its first snapshot yet
        print(time.strftime("%H:%M:%S"), f"sweep {a.name}")
        print(format_table(rows, sweep) if rows else "no trial has started yet")
        if why := _nothing_to_promote(rows, sweep):
            print(why)
        if not a.watch:
            return
        time.sleep(a.watch)


def _promote(a: argparse.Namespace) -> None:
    from .registry import promote

    result = promote(a.name, storage=a.storage, trial_id=a.trial, model_name=a.model_name, force=a.force,
                     dry_run=a.dry_run, min_source_val_acc=a.min_source_val_acc)
    print(result.describe())
    if not a.dry_run:
        print(f"load it with: mlflow.pyfunc.load_model('models:/{result.model_name}@champion')")


def _prune(a: argparse.Namespace) -> None:
    from .run import open_sweep

    open_sweep(a.name, a.storage)  # a wrong name or --storage fails here, before Ray loads
    from .prune import prune_sweep

    print(prune_sweep(a.name, storage=a.storage, dry_run=a.dry_run).describe())


def _cluster_check(a: argparse.Namespace) -> None:
    from uda_core.config import read_yaml, wrong_kind_error

    from .cluster import check_cluster

    wrong = wrong_kind_error(a.file, read_yaml(a.file, "cluster file"), "cluster", "uda-sweep cluster-check")
    if wrong:  # a run config or sweep file: one sentence, not Ray's KeyError
        raise wrong
    full = check_cluster(a.file)
    workers = {n: t["resources"] for n, t in full.get("available_node_types", {}).items()}
    print(f"{a.file}: passes Ray's launcher validation and this project's checks; node types {workers}")


def _default_tracking_uri(a: argparse.Namespace) -> str:
    from .auth import password_in_uri
    from .tracking_uri import default_tracking_uri  # no mlflow: argument errors come first

    uri = a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if problem := password_in_uri(uri, "--tracking-uri" if a.tracking_uri else "MLFLOW_TRACKING_URI"):
        raise UdaError(problem)
    return uri


def _rollback(a: argparse.Namespace) -> None:
    from .registry import CHAMPION, rollback

    old, new = rollback(a.model_name, _default_tracking_uri(a))
    print(f"{a.model_name}: {CHAMPION} moved back from version {old} to version {new}")


def _predict(a: argparse.Namespace) -> None:
    from .catalogue import predict_catalogue

    s = predict_catalogue(a.model_uri, a.input, a.out, tracking_uri=_default_tracking_uri(a), domain=a.domain,
                          batch_size=a.batch_size, views=a.views, use_ray=a.ray, workers=a.workers, top_n=a.top_n,
                          overwrite=a.overwrite, progress=True, skip_bad=a.skip_bad)
    version = f" version {s.model['model_version']}" if s.model["model_version"] else ""
    print(f"wrote {s.path}: {s.rows} galaxies ({s.unknown} flagged unknown) in {s.seconds:.1f} s "
          f"({s.rows / max(s.seconds, 1e-9):.0f}/s) with {s.model['model_uri']}{version}")
    if s.picture:
        print(f"most anomalous galaxies: {s.picture}")
    if s.skipped:
        print(f"left out {s.skipped} file(s) or row(s); reasons in {s.skipped_csv}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uda-sweep", description="Hyperparameter sweeps for universal domain adaptation of galaxy classifiers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log every evaluation")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser(
        "data", help="data sets: generate simulated survey pairs, import real cutouts, show stamps",
    ).add_subparsers(dest="data_command", required=True)
    g = data.add_parser("generate", help="render a data set folder (catalogue.parquet, pixels.npy, manifest.json)")
    g.add_argument("--task", default="universal", help="class layout: universal (shared, source-private and "
                                                      "target-only classes) or deepastro3 (default: universal)")
    from uda_core.data.surveys import SURVEYS  # light (no torch): the presets' names for the help text

    survey_help = f"a survey preset ({', '.join(sorted(SURVEYS))}) or a survey YAML file"
    g.add_argument("--source", default="decals", help=f"{survey_help} (default: decals)")
    g.add_argument("--target", default="sdss", help=f"{survey_help}; its bands must match the source's (default: sdss)")
    g.add_argument("--size", default="small", choices=["tiny", "small", "bench", "default", "large"],
                   help="stamps and counts: tiny 32 px (tests), small 48 px, bench 48 px with 3,000 target/test "
                        "stamps (bench/adaptation), default 64 px, large 96 px (default: small)")
    g.add_argument("--seed", type=int, default=0, help="seed of the galaxies drawn (default 0)")
    g.add_argument("--label-noise", type=float, default=0.0,
                   help="fraction of source/train labels flipped to another known class, in [0, 0.5) (default 0)")
    g.add_argument("--out", required=True, help="the new data set folder (must not exist)")
    g.set_defaults(func=_data_generate)
    i = data.add_parser(
        "import", help="real cutouts of a labelled source survey and a (usually unlabelled) target survey -> a data "
                       "set folder that train, run, promote and predict read",
        description="Cutouts: a folder of FITS cutouts (*.fits, *.fits.gz, *.fits.fz; bands from BANDS/BANDi, pixel "
                    "scale from the WCS or PIXSCALE), a folder of .npy stamps (file name = id; bands and pixel scale "
                    "from cutouts.json or --bands/--*-pixel-arcsec), a Parquet file or folder (columns id, flux), or a "
                    "Galaxy10-layout HDF5 file. Labels: a CSV/Parquet table joined to the cutouts by id; Galaxy Zoo "
                    "DECaLS vote counts likewise (--source-votes, --target-votes). Every input "
                    "file's metadata is checked before any pixel is copied; the inputs are only read.")
    i.add_argument("--source", required=True, help="the labelled survey's cutouts (file or folder)")
    i.add_argument("--source-labels", help="label table of the source (CSV or Parquet); required unless "
                                           "--source-votes is given (then each class is the most voted answer of "
                                           "smooth-or-featured: smooth, featured-or-disk or artifact)")
    i.add_argument("--target", required=True, help="the survey to adapt to: cutouts (file or folder)")
    i.add_argument("--target-labels", help="label table of the target, used ONLY to evaluate (oracle/ metrics); "
                                           "omit it for an unlabelled target")
    i.add_argument("--source-votes", help="Galaxy Zoo DECaLS vote counts of the source (CSV, TSV or Parquet): one "
                                          "count column per answer, {question}_{answer} (e.g. "
                                          "smooth-or-featured_smooth; a -dr5 question suffix is accepted), "
                                          "optional {question}_total-votes; the vote head (model.vote_head) learns "
                                          "from them")
    i.add_argument("--target-votes", help="as --source-votes, for the target: used ONLY to evaluate the vote head")
    i.add_argument("--id-column", default="id", help="id column of the label and vote tables (default: id)")
    i.add_argument("--label-column", default="label", help="class column of the label tables (default: label)")
    i.add_argument("--class-map", help="label value -> class name: 'E=elliptical,S=spiral,X=' (empty: drop those rows) "
                                       "or a YAML/JSON file; default: the values are the class names")
    i.add_argument("--unknown-classes", help="comma-separated classes believed to appear only in the target "
                                             "(recorded in the manifest), e.g. lens,artifact")
    i.add_argument("--bands", help="bands to import, in this order (e.g. grz or g,r,z), picked from each input's own "
                                   "bands; default: the source's")
    i.add_argument("--stamp-px", type=int,
                   help="stamp size (pixels) to centre-crop or zero-pad to; default: the source's")
    i.add_argument("--pixel-arcsec", type=float, help="pixel scale to resample every stamp to (flux-conserving); "
                                                      "default: the source's")
    i.add_argument("--source-pixel-arcsec", type=float,
                   help="the source cutouts' pixel scale when files do not record it")
    i.add_argument("--target-pixel-arcsec", type=float,
                   help="the target cutouts' pixel scale when files do not record it")
    i.add_argument("--source-bands", help="the bands of the source files' planes, in order, when files do not record "
                                          "them (.npy stamps without cutouts.json)")
    i.add_argument("--target-bands", help="as --source-bands, for the target files")
    i.add_argument("--source-survey", help="survey of the source (preset name or survey YAML): names it in the "
                                           "manifest and checks the flux units against its depth")
    i.add_argument("--target-survey", help="survey of the target (preset name or survey YAML), as --source-survey")
    i.add_argument("--source-split", default="0.7,0.1,0.2", help="train,val,test fractions of the source, stratified "
                                                                 "by class (default 0.7,0.1,0.2)")
    i.add_argument("--target-test-frac", type=float, default=0.2, help="fraction of the target held out as target/test "
                                                                      "(default 0.2)")
    i.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    i.add_argument("--skip-bad", action="store_true", help="leave out files or rows that fail a check and list them, "
                                                           "with reasons, in skipped.csv in the data set")
    i.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                   help="processes reading and resampling cutouts (default: the CPUs, at most 8)")
    i.add_argument("--out", required=True, help="the new data set folder (must not exist)")
    i.set_defaults(func=_data_import)
    s = data.add_parser("show", help="PNG grid of example stamps per class and domain")
    s.add_argument("dir", help="a data set folder (generated or imported)")
    s.add_argument("--out", help="PNG path (default DIR/examples.png)")
    s.add_argument("--per-class", type=int, default=5, help="stamps per class and domain (default 5)")
    s.set_defaults(func=_data_show)

    t = sub.add_parser("train", help="one training run without Ray/Optuna/MLflow")
    t.add_argument("config", help="a run config YAML (examples: configs/*.yaml; sections data, model, method, optim, "
                                  "train, eval)")
    t.add_argument("--out", required=True, help="the run's folder: config, metrics.json, pictures, checkpoints")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.set_defaults(func=_train)

    r = sub.add_parser("run", help="run a sweep: Ray Tune trials, Optuna TPE, ASHA, MLflow")
    r.add_argument("sweep", help="sweep file (sweeps/configs/*.yaml)")
    r.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, else start a local Ray)")
    r.set_defaults(func=_run)
    r = sub.add_parser("resume", help="continue a sweep whose driver stopped (Ctrl-C, kill, reboot)")
    r.add_argument("name", help="the sweep's name (its file's `name`)")
    r.add_argument("--storage", default="runs/sweeps", help="the sweep file's storage.path (default runs/sweeps)")
    r.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS or the sweep's own)")
    r.set_defaults(func=_resume)
    r = sub.add_parser("status", help="table of a sweep's trials (works while it runs)")
    r.add_argument("name", help="the sweep's name (its file's `name`)")
    r.add_argument("--storage", default="runs/sweeps", help="the sweep file's storage.path (default runs/sweeps)")
    r.add_argument("--watch", type=positive_seconds, metavar="SECONDS", help="refresh every SECONDS until interrupted")
    r.set_defaults(func=_status)

    r = sub.add_parser("promote", help="register a sweep's best trial in the MLflow registry (alias challenger; "
                                       "champion if it beats the current one)")
    r.add_argument("name", help="the sweep's name")
    r.add_argument("--storage", default="runs/sweeps", help="the sweep file's storage.path (default runs/sweeps)")
    r.add_argument("--trial", help="promote this trial id instead of the best one")
    r.add_argument("--model-name", help="registered model name (default: the sweep file's tracking.model_name, "
                                        "else the sweep's name)")
    r.add_argument("--min-source-val-acc", type=fraction,
                   help="guard floor (default: the sweep's objective.min_source_val_acc)")
    r.add_argument("--force", action="store_true", help="make it the champion even if it does not beat the current one")
    r.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    r.set_defaults(func=_promote)
    r = sub.add_parser("prune", help="delete a finished sweep's checkpoints except each trial's best (the one "
                                     "promote exports)")
    r.add_argument("name", help="the sweep's name")
    r.add_argument("--storage", default="runs/sweeps", help="the sweep file's storage.path (default runs/sweeps)")
    r.add_argument("--dry-run", action="store_true", help="say what would be deleted and the sizes; delete nothing")
    r.set_defaults(func=_prune)
    r = sub.add_parser("rollback", help="move a registered model's champion alias back to the version it replaced")
    r.add_argument("model_name", help="a registered model's name (promote's --model-name, default the sweep's name)")
    r.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    r.set_defaults(func=_rollback)
    r = sub.add_parser("predict", help="a Parquet morphology catalogue from a model and cutouts")
    r.add_argument("model_uri", help="models:/NAME@champion, models:/NAME/VERSION, runs:/..., or a model folder")
    r.add_argument("input", help="a data set folder, a Parquet file (or folder) of cutouts, a folder of FITS cutouts, "
                                 "or an HDF5 file in the Galaxy10 layout")
    r.add_argument("--out", required=True,
                   help="catalogue path (.parquet); a PNG of the most anomalous galaxies goes beside it")
    r.add_argument("--domain", default="target", choices=["source", "target", "all"], help="rows of a data set folder")
    r.add_argument("--batch-size", type=positive_int, help="galaxies per forward pass (default: 64 on CPU, 512 on GPU)")
    r.add_argument("--views", type=int, default=8, choices=[1, 2, 4, 8],
                   help="dihedral views for the uncertainty (1: no uncertainty, 8x faster)")
    r.add_argument("--ray", action="store_true", help="run as a Ray Data job ($RAY_ADDRESS or a local Ray)")
    r.add_argument("--workers", type=positive_int,
                   help="model actors with --ray (default: one per GPU, else half the CPUs)")
    r.add_argument("--top-n", type=non_negative_int, default=25, help="galaxies in the anomaly picture (0: none)")
    r.add_argument("--skip-bad", action="store_true", help="leave out files that cannot be read and stamps with "
                                                           "non-finite pixels, listed with reasons in OUT_skipped.csv")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out and the files beside it")
    r.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    r.set_defaults(func=_predict)
    r = sub.add_parser("cluster-check", help="validate a Ray cluster file (cluster.yaml) before `ray up`")
    r.add_argument("file", help="a Ray cluster launcher file (cluster.yaml, cluster.local.yaml)")
    r.set_defaults(func=_cluster_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        args.func(args)
    except UdaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .auth import refusal  # a tracking server refusing our credentials is the user's to fix, not a bug

        if (message := refusal(e)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
