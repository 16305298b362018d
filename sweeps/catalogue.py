"""`uda-sweep predict`: a morphology catalogue (Parquet) from a model in MLflow and a set of cutouts.

The model is loaded through MLflow (`models:/NAME@champion`, `models:/m-...`, `runs:/...` or a local model folder)
and used through its exported classifier (uda_core.inference), so every row is preprocessed and scored exactly as
in training and evaluation. Inputs are read in shards (uda_core.data.readers): memory stays bounded by one shard per
worker. Locally the shards stream through one process; with `--ray` they become a Ray Data job (reading tasks,
then a pool of model actors, on GPUs where the cluster has them), so a bigger catalogue needs more nodes, not a
different command. The catalogue is written to a temporary file and renamed, so an interrupted run never leaves a
half catalogue under the requested name.

Columns: `id`, `prob_<class>` per known class, `predicted_class`, `unknown`, `anomaly_score`, `entropy`,
`uncertainty`, `predicted_prob_std`, then, for a model with a Galaxy Zoo vote head only (uda_core.inference.
vote_columns), `{question}_{answer}_alpha` (Dirichlet concentration) and `{question}_{answer}_fraction` (expected
vote fraction) per answer and `{question}_entropy` (Dirichlet entropy) and `{question}_fraction_std` (spread over
the dihedral views) per question, and last `source_file`, `source_index`. The Parquet schema metadata holds the
provenance as JSON under `galaxy_uda_sweeps` and, with a vote head, the decision tree (VoteTree.to_dict) as JSON
under `vote_tree` (read it back with uda_core.votes.tree_from_dict).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from uda_core.errors import ConfigError, DataError

__all__ = ["predict_catalogue", "load_classifier", "CatalogueSummary"]

log = logging.getLogger(__name__)
METADATA_KEY = b"galaxy_uda_sweeps"
SKIP = "_skip_reason"  # a column between the reading and the writing only: why a row is left out ("" if kept)
VOTE_TREE_KEY = b"vote_tree"


@dataclass
class CatalogueSummary:
    path: Path
    rows: int
    unknown: int
    seconds: float
    picture: Path | None
    model: dict
    skipped: int = 0  # inputs left out with --skip-bad
    skipped_csv: Path | None = None


def load_classifier(model_uri: str, tracking_uri: str | None):
    """(Classifier, provenance dict) for an MLflow model URI; resolves registry aliases to their version. A URI
    naming nothing that exists is one error saying what does, and a missing local store is not created."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from .registry import MODEL_URIS, check_model_uri
    from .tracking import read_client

    info = {"model_uri": model_uri, "model_name": "", "model_version": "", "run_id": ""}
    if model_uri.startswith(("models:/", "runs:/")):
        store = tracking_uri or mlflow.get_tracking_uri()
        client = read_client(store)
        mlflow.set_tracking_uri(store)
        mlflow.set_registry_uri(store)
        mv = check_model_uri(client, model_uri, store)
        if mv is not None:
            info.update(model_name=mv.name, model_version=str(mv.version), run_id=mv.run_id or "")
    elif not Path(model_uri).expanduser().is_dir():
        raise ConfigError(f"model {model_uri!r}: not a model URI and no such folder; give {MODEL_URIS}")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
        clf = model.unwrap_python_model().classifier
    except (MlflowException, AttributeError) as e:
        reason = str(getattr(e, "message", e)).strip().splitlines()[0]
        raise ConfigError(f"model {model_uri}: not a galaxy classifier logged by uda-sweep ({reason}); give "
                          f"{MODEL_URIS}") from None
    info["run_id"] = info["run_id"] or model.metadata.run_id or ""
    return clf, info


def on_model_grid(source, clf):
    """`source` as the model sees stamps: bands picked in its order, resampled to its pixel scale (flux-conserving)
    and centre-cropped or padded to its stamp size, the same code `uda-sweep data import` uses; said in a warning."""
    from uda_core.data.geometry import Grid, band_order, padded, same_scale
    from uda_core.data.readers import ConformedSource

    m = clf.meta
    grid = Grid(tuple(m["bands"]), int(m["stamp_px"]), float(m["pixel_arcsec"]))
    where = str(source.path)
    if source.pixel_arcsec is None:
        log.warning("%s does not record its pixel scale; assuming the model's %.3f\"/px (%s)", where,
                    grid.pixel_arcsec, m["target_survey"])
    band_order(source.bands, grid.bands, where)  # a missing band fails here, before any prediction
    same_grid = (list(source.bands) == list(grid.bands) and tuple(source.stamp_shape[1:]) == (grid.stamp_px,) * 2
                 and (source.pixel_arcsec is None or same_scale(source.pixel_arcsec, grid.pixel_arcsec)))
    if same_grid:
        return source
    scale = source.pixel_arcsec or grid.pixel_arcsec
    log.warning("%s: stamps of %s px at %.3f\"/px, bands %s, are put on the model's grid (%d px at %.3f\"/px, bands "
                "%s): flux-conserving resampling and a centred crop%s", where, source.stamp_shape[1], scale,
                source.bands, grid.stamp_px, grid.pixel_arcsec, list(grid.bands),
                " (zero-padded: the stamps cover less sky than the model's)"
                if padded(source.stamp_shape[1:], source.pixel_arcsec, grid) else "")
    return ConformedSource(source, grid)


def _columns(batch, res: dict, class_names: list[str], tree=None) -> dict[str, np.ndarray]:
    from uda_core.inference import vote_columns

    cols = {"id": np.asarray(batch["id"]).astype(str)}
    for i, n in enumerate(class_names):
        cols[f"prob_{n}"] = res["probs"][:, i]
    cols["predicted_class"] = np.asarray(class_names)[res["predicted"]]
    for key in ("unknown", "anomaly_score", "entropy", "uncertainty", "predicted_prob_std"):
        cols[key] = res[key]
    cols.update(vote_columns(res, tree))  # nothing without a vote head
    cols["source_file"] = np.asarray(batch["source_file"]).astype(str)
    cols["source_index"] = np.asarray(batch["source_index"], dtype=np.int64)
    cols[SKIP] = np.asarray(batch[SKIP]).astype(str)
    return cols


def _batch_dict(b) -> dict:
    """A batch as columns. A stamp with non-finite pixels is scored as zeros and marked (SKIP), so the driver,
    not a reading task, decides: leave it out (--skip-bad) or stop; a NaN never becomes a silent prediction."""
    finite = np.isfinite(b.flux).all(axis=(1, 2, 3))
    flux = b.flux if finite.all() else np.where(finite[:, None, None, None], b.flux, np.float32(0))
    return {"id": b.ids, "flux": flux, "source_file": b.source_file, "source_index": b.source_index,
            SKIP: np.where(finite, "", "has non-finite pixels (NaN or inf); replace them, e.g. with 0 where the "
                                      "survey has no data")}


def _split_skipped(table: pa.Table) -> tuple[pa.Table, list[dict]]:
    """(the table without its marked rows, those rows as skipped-CSV entries)."""
    reasons = table[SKIP].to_numpy(zero_copy_only=False)
    bad = reasons != ""
    rows = [{"file": table["source_file"][i].as_py(), "index": table["source_index"][i].as_py(),
             "id": table["id"][i].as_py(), "reason": reasons[i]} for i in np.flatnonzero(bad)]
    for r in rows:
        r["reason"] = f"{r['file']}: row {r['index']} (id {r['id']!r}) {r['reason']}"
    return table.filter(pa.array(~bad)).drop_columns([SKIP]), rows


class _RayPredictor:
    """A Ray Data actor: loads the model once, then scores batches of stamps."""

    def __init__(self, model_uri: str, tracking_uri: str | None, views: int, batch_size: int):
        self.clf, _ = load_classifier(model_uri, tracking_uri)
        self.views, self.batch_size = views, batch_size

    def __call__(self, batch: dict) -> dict:
        res = self.clf.predict(batch["flux"], views=self.views, batch_size=self.batch_size)
        return _columns(batch, res, self.clf.class_names, self.clf.vote_tree)


def _ray_tables(source, shards, model_uri, tracking_uri, views, batch_size, workers):
    import ray

    if not ray.is_initialized():
        # "local" without RAY_ADDRESS: Ray's default would join any cluster left running on this machine
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    workers = workers or (int(gpus) if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // 2))

    def read(items: dict) -> dict:
        parts = [_batch_dict(source.read(shards[int(i)])) for i in items["shard"]]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    ds = ray.data.from_items([{"shard": i} for i in range(len(shards))])
    ds = ds.map_batches(read, batch_size=1)
    ds = ds.map_batches(_RayPredictor, fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri,
                                                               "views": views, "batch_size": batch_size},
                        batch_size=batch_size, concurrency=workers, num_gpus=1 if gpus else 0, num_cpus=1)
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield table


def _local_tables(source, shards, clf, views, batch_size, progress):
    from tqdm import tqdm

    with tqdm(total=source.num_rows, unit="galaxy", disable=not progress, desc="predict") as bar:
        for shard in shards:
            b = _batch_dict(source.read(shard))
            res = clf.predict(b["flux"], views=views, batch_size=batch_size)
            bar.update(len(b["id"]))
            yield pa.table(_columns(b, res, clf.class_names, clf.vote_tree))


def _plot_anomalies(source, top: list, softening: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uda_core.data.show import to_rgb

    top = sorted(top, reverse=True)
    cols = min(5, len(top))
    rows = (len(top) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (score, file, index, gid, unknown) in zip(axes.ravel(), top):
        stamp = source.read_at(file, [index])[0]
        ax.imshow(to_rgb(stamp, softening), origin="lower")
        ax.set_title(f"{gid}\nscore {score:.3f}{' unknown' if unknown else ''}", fontsize=7)
    fig.suptitle(f"The {len(top)} most anomalous galaxies", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sidecars(out: Path) -> dict[str, Path]:
    """The files written beside the catalogue: the anomaly picture and the list of inputs left out."""
    return {"picture": out.with_name(out.stem + "_anomalies.png"), "skipped": out.with_name(out.stem + "_skipped.csv")}


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace the catalogue or a file beside it without --overwrite."""
    if out.suffix != ".parquet":
        raise ConfigError(f"--out {out}: the catalogue is Parquet; give a path ending in .parquet")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file path ending in .parquet")
    taken = [p for p in (out, *_sidecars(out).values()) if p.exists()]
    if taken and not overwrite:
        raise ConfigError(f"--out {out}: {', '.join(map(str, taken))} exist(s); choose another --out or pass "
                          "--overwrite (nothing was changed)")


def _stop_unless_skipping(problems: list[dict], skip_bad: bool, skipped_csv: Path, stage: str) -> None:
    if problems and not skip_bad:
        more = f" ({len(problems) - 1} more such input(s))" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]['reason']}{more}; no catalogue was written ({stage}). Mend the input, or pass "
                        f"--skip-bad to predict the rest and list what was left out in {skipped_csv}")


def _write_skipped(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows, columns=["file", "index", "id", "reason"]).to_csv(path, index=False)


def predict_catalogue(model_uri: str, input_path: str | Path, out: str | Path, *, tracking_uri: str | None = None,
                      domain: str = "target", batch_size: int | None = None, views: int = 8, rows_per_shard: int = 4096,
                      use_ray: bool = False, workers: int | None = None, top_n: int = 25, overwrite: bool = False,
                      progress: bool = True, skip_bad: bool = False) -> CatalogueSummary:
    """With `skip_bad`, files that cannot be read and stamps with non-finite pixels are left out and listed with
    their reasons in `<out>_skipped.csv`; without it the first stops the run, naming it."""
    from uda_core.data.readers import open_scanned

    out = Path(out)
    _check_out(out, overwrite)
    side = _sidecars(out)
    source, unreadable = open_scanned(input_path, domain)  # every file's metadata: cheap, and bad inputs fail here
    skipped = [{"file": f, "index": None, "id": None, "reason": reason} for f, reason in unreadable]
    _stop_unless_skipping(skipped, skip_bad, side["skipped"], "pre-scan of the input's metadata")
    source.check_finite = False  # checked per row below, to leave out or to stop with advice
    clf, info = load_classifier(model_uri, tracking_uri)
    source = on_model_grid(source, clf)
    shards = source.shards(rows_per_shard)
    meta = {**info, "classes": clf.class_names, "rejection": clf.meta["rejection"], "bands": clf.meta["bands"],
            "target_survey": clf.meta["target_survey"], "input": str(source.path), "input_kind": source.kind,
            "views": views, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    new_folders = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    t0, rows, unknown, top, writer = time.perf_counter(), 0, 0, [], None
    tables = (_ray_tables(source, shards, model_uri, tracking_uri, views, batch_size, workers) if use_ray
              else _local_tables(source, shards, clf, views, batch_size, progress))
    try:
        for table in tables:
            table, left_out = _split_skipped(table)
            _stop_unless_skipping(left_out, skip_bad, side["skipped"], "reading pixels")
            skipped += left_out
            if writer is None:
                schema_meta = {METADATA_KEY: json.dumps(meta).encode()}
                if clf.vote_tree is not None:  # the decision tree the vote columns follow
                    schema_meta[VOTE_TREE_KEY] = json.dumps(clf.vote_tree.to_dict()).encode()
                schema = table.schema.with_metadata(schema_meta)
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
            flags = table["unknown"].to_numpy(zero_copy_only=False)
            unknown += int(flags.sum())
            scores = table["anomaly_score"].to_numpy()
            for j in np.argsort(scores)[-top_n:] if top_n else []:  # a bounded heap of the most anomalous rows
                item = (float(scores[j]), table["source_file"][j].as_py(), int(table["source_index"][j].as_py()),
                        table["id"][j].as_py(), bool(flags[j]))
                (heapq.heappush if len(top) < top_n else heapq.heappushpop)(top, item)
        if rows == 0:
            raise DataError(f"{source.path}: no galaxies to predict" + (
                f"; all {len(skipped)} were left out, the first because {skipped[0]['reason']}" if skipped else ""))
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        tables.close()  # ends the progress bar (its own line) before any error is printed
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
        if not out.exists():  # a failed run leaves no empty folder behind
            for folder in new_folders:
                with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                    folder.rmdir()
    seconds = time.perf_counter() - t0
    for path in side.values():  # what an overwritten run left beside the catalogue no longer describes it
        path.unlink(missing_ok=True)
    if skipped:
        _write_skipped(skipped, side["skipped"])
    picture = None
    if top:
        bands = clf.meta["bands"]
        picture = _plot_anomalies(source, top, clf.meta["softening"][len(bands) // 2], side["picture"])
    return CatalogueSummary(out, rows, unknown, seconds, picture, info, len(skipped),
                            side["skipped"] if skipped else None)
