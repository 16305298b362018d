"""A survey-sized data set made in seconds: the rows of a small one repeated until it holds `n_stamps`.

For measuring and testing scale (memory, throughput, start-up cost), where what matters is the size of the
files, not new galaxies: rendering 500k stamps would take longer than the measurement. Every split grows by the
same factor; repeated rows get new ids and a "copy_of" column naming the original.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .store import CATALOGUE, PIXELS, folder_written_whole, verify, write_manifest

__all__ = ["replicate_dataset"]


def replicate_dataset(folder: Path, out: Path, n_stamps: int, chunk: int = 8192) -> Path:
    """Write `out`: `folder`'s rows repeated (in each split) to about `n_stamps` stamps in all."""
    folder, out = Path(folder), Path(out)
    if out.exists():
        raise DataError(f"{out} already exists; choose another output folder (nothing was overwritten)")
    manifest = verify(folder)
    cat = pq.read_table(folder / CATALOGUE).to_pandas()
    pixels = np.load(folder / PIXELS, mmap_mode="r")
    factor = n_stamps / len(cat)
    parts = []
    for (domain, split), part in cat.groupby(["domain", "split"], sort=False):
        take = np.resize(np.arange(len(part)), max(1, round(len(part) * factor)))  # cycles through the split
        parts.append(part.iloc[take].assign(copy_of=part["id"].to_numpy()[take]))
    big = pa.Table.from_pandas(_renumber(parts), preserve_index=False)
    with folder_written_whole(out) as tmp:
        source_rows = big.column("source_row").to_numpy()
        dest = np.lib.format.open_memmap(tmp / PIXELS, mode="w+", dtype=pixels.dtype,
                                         shape=(len(source_rows), *pixels.shape[1:]))
        for lo in range(0, len(source_rows), chunk):
            dest[lo : lo + chunk] = pixels[source_rows[lo : lo + chunk]]
        dest.flush()
        del dest
        pq.write_table(big.drop_columns(["source_row"]), tmp / CATALOGUE)
        counts = big.group_by(["domain", "split"]).aggregate([("id", "count")]).to_pylist()
        write_manifest(tmp, {**manifest, "counts": {f"{c['domain']}/{c['split']}": c["id_count"] for c in counts},
                             "origin": "replicated",
                             "replicated_from": {"folder": str(folder), "fingerprint": manifest["fingerprint"]}})
    return out


def _renumber(parts: list) -> "object":
    import pandas as pd

    big = pd.concat(parts, ignore_index=True)
    big["source_row"] = big["row"].to_numpy()
    big["row"] = np.arange(len(big))
    big["id"] = [f"{i}-r{r}" for i, r in zip(big["copy_of"], big["row"])]
    return big
