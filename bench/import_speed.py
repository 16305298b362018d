"""Import speed: `uda-sweep data import` of FITS cutouts against reading the same files with astropy alone.

Writes N labelled DECaLS-like FITS cutouts (64 px, 0.262"/px, g r z) and N unlabelled SDSS-like ones (64 px,
0.396"/px, resampled onto the source grid on import), then measures, in one process:
  raw_read       astropy.io.fits.open + data of every file, nothing else (the floor any FITS import pays)
  prescan        the import's metadata pass over every file (headers only), per 1,000 files
  import         the whole import: pre-scan, read, resample, checks, splits, catalogue, manifest, fingerprint,
                 with one process and with --workers processes reading and resampling shards
Figures: files/s and stamps/s, import / raw_read ratio, the workers' speed-up. Last line: JSON; --publish writes it
to bench/results/import_speed.json.

    .venv/bin/python bench/import_speed.py [--n 2000] [--workers 2] [--publish]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _write(folder: Path, n: int, scale: float, seed: int) -> list[str]:
    from astropy.io import fits
    from astropy.wcs import WCS

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    w.wcs.crval = [150.0, 2.0]
    header = w.to_header()
    header["BANDS"] = "grz"
    ids = [f"{folder.name}{i:06d}" for i in range(n)]
    for gid in ids:
        fits.PrimaryHDU(rng.normal(0, 0.01, (3, 64, 64)).astype(np.float32),
                        header=header).writeto(folder / f"{gid}.fits")
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="cutouts per survey")
    ap.add_argument("--workers", type=int, default=2, help="processes for the parallel import")
    ap.add_argument("--publish", action="store_true", help="write the JSON to bench/results/import_speed.json")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    from astropy.io import fits

    from uda_core.data.importer import DomainInput, ImportSpec, import_dataset
    from uda_core.data.readers import fits_layout

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = _write(tmp / "src", a.n, 0.262, 0)
        _write(tmp / "tgt", a.n, 0.396, 1)
        pd.DataFrame({"id": ids, "label": ["elliptical", "spiral"] * (a.n // 2) + ["spiral"] * (a.n % 2)}).to_csv(
            tmp / "labels.csv", index=False)
        files = sorted((tmp / "src").glob("*.fits")) + sorted((tmp / "tgt").glob("*.fits"))

        t0 = time.perf_counter()
        for f in files:
            with fits.open(f, memmap=False) as h:
                np.asarray(h[0].data, dtype=np.float32)
        raw = time.perf_counter() - t0

        t0 = time.perf_counter()
        for f in files:
            fits_layout(str(f))
        prescan_alone = time.perf_counter() - t0

        spec = ImportSpec(DomainInput(str(tmp / "src"), str(tmp / "labels.csv")), DomainInput(str(tmp / "tgt")))
        t0 = time.perf_counter()
        result = import_dataset(spec, tmp / "ds", progress=False)
        total = time.perf_counter() - t0
        spec.workers = a.workers
        t0 = time.perf_counter()
        import_dataset(spec, tmp / "ds_parallel", progress=False)
        parallel = time.perf_counter() - t0

    n = len(files)
    out = {
        "files": n, "stamp": "3x64x64 float32", "raw_read_files_per_s": round(n / raw, 1),
        "prescan_s_per_1000_files": round(1000 * prescan_alone / n, 3),
        "import_prescan_s_per_1000_files": round(1000 * result.prescan_seconds / n, 3),
        "import_stamps_per_s": round(result.stamps / total, 1),
        "import_vs_raw_read": round((result.stamps / total) / (n / raw), 3),
        "import_total_s": round(total, 2),
        "workers": a.workers, "import_parallel_stamps_per_s": round(result.stamps / parallel, 1),
        "parallel_speedup": round(total / parallel, 2),
    }
    print(f"raw astropy read      {out['raw_read_files_per_s']:8.1f} files/s")
    print(f"pre-scan (headers)    {out['prescan_s_per_1000_files']:8.3f} s per 1,000 files "
          f"(inside the import: {out['import_prescan_s_per_1000_files']:.3f})")
    print(f"whole import          {out['import_stamps_per_s']:8.1f} stamps/s "
          f"= {out['import_vs_raw_read']:.2f}x raw read "
          f"({total:.1f} s for {n} files)")
    print(f"with {a.workers} workers     {out['import_parallel_stamps_per_s']:8.1f} stamps/s = "
          f"{out['parallel_speedup']:.2f}x one process")
    line = json.dumps(out)
    if a.publish:
        path = Path(__file__).parent / "results" / "import_speed.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
