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

    spec = DataSpec(a.task, a.source, a.target, a.size, a.seed, a.label_noise)
    folder = generate(spec, Path(a.out))
    print(f"wrote {folder}")


def _data_show(a: argparse.Namespace) -> None:
    from uda_core.data.show import show_dataset

    print(f"wrote {show_dataset(Path(a.dir), Path(a.out) if a.out else None, per_class=a.per_class)}")


def _train(a: argparse.Namespace) -> None:
    from uda_core.config import load_config
    from uda_core.reporting import FileReporter
    from uda_core.train import train

    cfg = load_config(a.config)
    out = Path(a.out)
    resume = None
    if a.resume:
        ckpts = sorted((out / "checkpoints").glob("step_???????"))
        if not ckpts:
            raise UdaError(f"--resume: no checkpoint under {out / 'checkpoints'}; run without --resume to start")
        resume = ckpts[-1]
    elif (out / "metrics.json").exists():
        raise UdaError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(Path(a.config).read_text())
    reporter = FileReporter(out, cfg.eval.select_by, cfg.eval.select_mode)
    last = train(cfg, reporter, out, resume_from=resume)
    reporter.finish(last)
    best = reporter.best
    if best is None:
        print(f"done: {out / 'metrics.json'}; {cfg.eval.select_by} was never finite, so no evaluation is marked best")
    else:
        print(f"done: {out / 'metrics.json'}; best {cfg.eval.select_by} = {best['metrics'][cfg.eval.select_by]:.4f} at step {best['step']}")


def _print_summary(summary) -> None:
    import yaml

    from .config import parse_sweep
    from .run import SWEEP_FILE
    from .summary import format_table

    sweep = parse_sweep(yaml.safe_load((summary.path / SWEEP_FILE).read_text()), str(summary.path / SWEEP_FILE))
    print(format_table(summary.trials, sweep))
    if summary.best:
        b = summary.best
        print(f"best trial {b['trial_id']} at step {b['best_step']}: "
              + ", ".join(f"{m} = {b[f'best/{m}']:.4f}" for m in sweep.objective.metrics))
    print(f"MLflow: experiment {sweep.tracking.experiment or sweep.name}, parent run {summary.parent_run_id} "
          f"(mlflow ui --backend-store-uri {summary.tracking_uri})")
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

    import yaml

    from .config import parse_sweep
    from .run import STATE_FILE, SWEEP_FILE, sweep_dir
    from .summary import format_table, trial_rows

    path = sweep_dir(a.name, a.storage)
    if not (path / STATE_FILE).exists():
        raise UdaError(f"no sweep named {a.name!r} under {path.parent} (give --storage if it lives elsewhere)")
    sweep = parse_sweep(yaml.safe_load((path / SWEEP_FILE).read_text()), str(path / SWEEP_FILE))
    while True:
        try:
            rows = trial_rows(path, sweep)
        except (FileNotFoundError, ValueError):
            rows = []  # Tune has not written its first snapshot yet
        print(time.strftime("%H:%M:%S"), f"sweep {a.name}")
        print(format_table(rows, sweep) if rows else "no trial has started yet")
        if not a.watch:
            return
        time.sleep(a.watch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uda-sweep", description="Hyperparameter sweeps for universal domain adaptation of galaxy classifiers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log every evaluation")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="simulated survey data sets").add_subparsers(dest="data_command", required=True)
    g = data.add_parser("generate", help="render a data set folder (catalogue.parquet, pixels.npy, manifest.json)")
    g.add_argument("--task", default="universal")
    g.add_argument("--source", default="decals")
    g.add_argument("--target", default="sdss")
    g.add_argument("--size", default="small", choices=["tiny", "small", "default", "large"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--label-noise", type=float, default=0.0)
    g.add_argument("--out", required=True)
    g.set_defaults(func=_data_generate)
    s = data.add_parser("show", help="PNG grid of example stamps per class and domain")
    s.add_argument("dir")
    s.add_argument("--out", help="PNG path (default DIR/examples.png)")
    s.add_argument("--per-class", type=int, default=5)
    s.set_defaults(func=_data_show)

    t = sub.add_parser("train", help="one training run without Ray/Optuna/MLflow")
    t.add_argument("config")
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.set_defaults(func=_train)

    r = sub.add_parser("run", help="run a sweep: Ray Tune trials, Optuna TPE, ASHA, MLflow")
    r.add_argument("sweep", help="sweep file (sweeps/configs/*.yaml)")
    r.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS, else start a local Ray)")
    r.set_defaults(func=_run)
    r = sub.add_parser("resume", help="continue a sweep whose driver stopped (Ctrl-C, kill, reboot)")
    r.add_argument("name")
    r.add_argument("--storage", default="runs/sweeps", help="the sweep file's storage.path")
    r.add_argument("--address", help="join a running Ray cluster (default: $RAY_ADDRESS or the sweep's own)")
    r.set_defaults(func=_resume)
    r = sub.add_parser("status", help="table of a sweep's trials (works while it runs)")
    r.add_argument("name")
    r.add_argument("--storage", default="runs/sweeps")
    r.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until interrupted")
    r.set_defaults(func=_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        args.func(args)
    except UdaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
