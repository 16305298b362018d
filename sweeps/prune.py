"""Which trial checkpoints a sweep keeps: during the sweep each trial's best (what `uda-sweep promote` exports) and
the one `uda-sweep resume` would restart it from; after it, `uda-sweep prune` leaves only the best.

A resume restarts each unfinished trial from the checkpoint that Tune's experiment snapshot on storage names, and
that snapshot is rewritten only every few seconds, while a trial may report several checkpoints in between. Tune's
own `CheckpointConfig(num_to_keep)` deletes a checkpoint as soon as a newer one is registered, so a driver killed
before the next snapshot left one naming a deleted checkpoint, and the resume failed. Here a checkpoint is deleted
only when it is older than the one the snapshot already on storage names, and is not the trial's best there: no
snapshot, present or future, can send a resume to it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from uda_core.errors import ConfigError

__all__ = ["RetainBestAndLatest", "keep_best_and_latest", "prune_sweep", "PruneResult", "folder_bytes"]

log = logging.getLogger(__name__)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (what `du --apparent-size` counts)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def _checkpoints(trial_dir: Path) -> list[Path]:
    """A trial's Tune checkpoint folders, oldest first (Tune numbers them in the order it saves them)."""
    return sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())


def _best_step(result: dict) -> int:
    """The trial's best step as its last report gave it (baselines report it under a prefix, see trainable.py)."""
    return int(result.get("best_step", result.get("baseline_best_step", -1)))


def restart_points(exp_dir: Path) -> dict[str, tuple[str, int]]:
    """Per trial folder: the checkpoint folder that the experiment snapshot now on storage would resume the trial
    from, and the trial's best step by that snapshot. Read from the snapshot's JSON as Ray 2.60 lays it out (the
    newest `experiment_state-*.json`, which `Tuner.restore` reads): a trial's last result names its latest
    checkpoint, because every report of `run_trial` carries one. A trial without one is left out: none of its
    checkpoints is deleted."""
    snapshots = sorted(Path(exp_dir).glob("experiment_state-*.json"))
    if not snapshots:
        return {}
    points = {}
    for trial_json, run_metadata in json.loads(snapshots[-1].read_text())["trial_data"]:
        metadata = json.loads(run_metadata)
        last = metadata.get("last_result") or {}
        restored = _restored_checkpoint(metadata)
        if last.get("checkpoint_dir_name") and restored:
            # Tune restores from its checkpoint manager's latest, which a snapshot may write one report behind the
            # last result (the result and its checkpoint are registered in two steps): keep from the older of both.
            points[json.loads(trial_json)["relative_logdir"]] = (min(last["checkpoint_dir_name"], restored),
                                                                 _best_step(last))
    return points


def _restored_checkpoint(metadata: dict) -> str | None:
    """The checkpoint folder name Tune would restore the trial from: its checkpoint manager's latest, pickled in the
    snapshot. None when it cannot be read: then nothing of the trial is deleted."""
    from ray import cloudpickle

    try:
        manager = cloudpickle.loads(bytes.fromhex(metadata["checkpoint_manager"]["value"]))
        return Path(manager.latest_checkpoint_result.checkpoint.path).name
    except Exception:  # an unknown layout (another Ray version): keep everything rather than guess
        return None


def _delete(folders: list[Path]) -> int:
    freed = 0
    for f in folders:
        freed += folder_bytes(f)
        shutil.rmtree(f, ignore_errors=True)
    return freed


def keep_best_and_latest(exp_dir: Path) -> int:
    """Delete each trial's checkpoints older than the one the snapshot on storage would resume it from, except the
    best by that snapshot. Checkpoints saved since the snapshot are kept whatever they hold. Returns bytes freed."""
    from .finalists import checkpoint_step

    freed = 0
    for trial_dir, (restart, best) in restart_points(exp_dir).items():
        folders = _checkpoints(Path(exp_dir) / trial_dir)
        older = [c for c in folders if c.name < restart]  # Tune numbers them in order
        # Also the best each kept checkpoint records: a trial resumed from one of them reports that best again (the
        # snapshot's result may already hold a newer best that a rerun need not reproduce).
        keep = {best, None} | {_recorded_best(c) for c in folders if c.name >= restart}
        freed += _delete([c for c in older if checkpoint_step(c) not in keep])
    return freed


def _recorded_best(checkpoint: Path) -> int | None:
    """The trial's best step as the checkpoint's own objective state holds it (None if unreadable or none yet)."""
    from .finalists import OBJECTIVE_STATE

    try:
        return int(json.loads((checkpoint / OBJECTIVE_STATE).read_text())["best"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RetainBestAndLatest(tune.Callback):
    """Runs `keep_best_and_latest` in the driver each time Tune has written a new experiment snapshot."""

    def __init__(self, exp_dir: str | Path, every_s: float = 5.0):
        self.exp_dir = str(exp_dir)
        self.every_s = every_s  # how often to look for a new snapshot (Tune writes one every 10 s or more)
        self.setup()

    def setup(self, **info) -> None:  # also after `Tuner.restore` unpickled this callback
        self._next_look, self._last_snapshot = 0.0, None

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        start = time.monotonic()
        if start < self._next_look:
            return
        snapshots = sorted(Path(self.exp_dir).glob("experiment_state-*.json"))
        if snapshots:
            stat = snapshots[-1].stat()
            seen = (snapshots[-1].name, stat.st_mtime_ns, stat.st_size)
            if seen != self._last_snapshot and self._retain():
                self._last_snapshot = seen
        # The snapshot of a thousand trials takes a second or two to read: spend at most a tenth of the driver on it.
        self._next_look = time.monotonic() + max(self.every_s, 9 * (time.monotonic() - start))

    def on_experiment_end(self, trials: list, **info) -> None:  # Tune has written its last snapshot by now
        self._retain()

    def _retain(self) -> bool:
        try:
            freed = keep_best_and_latest(Path(self.exp_dir))
        except Exception as e:  # a snapshot half copied, say: keep everything and look again at the next one
            log.debug("checkpoint retention skipped: %s", e)
            return False
        if freed:
            log.info("deleted %d bytes of superseded checkpoints", freed)
        return True


@dataclass
class PruneResult:
    name: str
    dry_run: bool
    deleted: list[Path]
    kept: list[Path]
    bytes_before: int  # the sweep folder
    bytes_after: int

    def describe(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"sweep {self.name}: {verb} {len(self.deleted)} checkpoint(s), kept {len(self.kept)} (each trial's "
                f"best); sweep folder {_size(self.bytes_before)} -> {_size(self.bytes_after)}"
                + (" (dry run: nothing was deleted)" if self.dry_run else ""))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _unfinished(rows: list[dict], expected: int) -> str | None:
    """Why the sweep is not finished, or None if every trial has ended."""
    open_ = [f"{r['trial_id']} ({r['status']})" for r in rows if r["status"] not in ("TERMINATED", "ERROR")]
    if open_:
        more = " ..." if len(open_) > 5 else ""
        return f"{len(open_)} of {expected} trial(s) have not ended: {', '.join(open_[:5])}{more}"
    if len(rows) < expected:
        return f"only {len(rows)} of its {expected} trials have started"
    return None


def prune_sweep(name: str, *, storage: str | Path = "runs/sweeps", workdir: Path | None = None,
                dry_run: bool = False) -> PruneResult:
    """Delete every checkpoint of a finished sweep except each trial's best (the one `promote` exports)."""
    from .finalists import checkpoint_at
    from .run import driver_lock, open_sweep
    from .summary import trial_rows

    exp_dir, sweep, _ = open_sweep(name, storage, workdir)
    lock_file = exp_dir / "driver.lock"
    if not lock_file.exists():  # the state file is written just before the first driver starts
        raise ConfigError(f"sweep {name!r} at {exp_dir} has not started a trial yet; nothing to prune")
    # Held for the whole prune: no `resume` may start meanwhile.
    with driver_lock(exp_dir, f"sweep {name!r} is running (its driver holds {{lock}}); prune it once it has "
                              "finished (nothing was deleted)"):
        try:
            rows = trial_rows(exp_dir, sweep)
        except (FileNotFoundError, ValueError):  # Tune wrote no snapshot: the driver died before the first trial
            rows = []
        why = _unfinished(rows, sweep.search.num_trials + len(sweep.baselines))
        if why:
            raise ConfigError(f"sweep {name!r} has not finished: {why}; its checkpoints are what `uda-sweep resume "
                              f"{name}` continues from, so finish it first (nothing was deleted)")
        keep = set()
        for r in rows:
            best = checkpoint_at(Path(r["path"]), r["best_step"]) if r["path"] and r["best_step"] >= 0 else None
            if best is not None:
                keep.add(best)
            elif r["path"] and r["best_step"] >= 0:  # a best that cannot be found: leave the trial as it is
                keep.update(_checkpoints(Path(r["path"])))
                log.warning("trial %s: no checkpoint at its best step %s; its checkpoints are kept",
                            r["trial_id"], r["best_step"])
        # Trial folders the snapshot does not know (a trial re-run after a driver was killed) hold nothing to promote.
        every = [c for t in sorted(exp_dir.glob("trial_*")) for c in _checkpoints(t)]
        doomed = [c for c in every if c not in keep]
        before = folder_bytes(exp_dir)
        after = before - sum(folder_bytes(c) for c in doomed)
        if not dry_run:
            _delete(doomed)
            after = folder_bytes(exp_dir)
        return PruneResult(name, dry_run, doomed, sorted(keep), before, after)
