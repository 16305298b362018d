"""Scale: one trial's memory, training throughput and evaluation time as the data set grows from 10k to 500k stamps.

Data sets are the `tiny` simulated set (32 px, 3 bands) replicated to each size (uda_core.data.replicate), written
once under `--root`. Each trial is a child process (its memory is its own) that opens the data set as a sweep trial
does (`uda_core.train.load_data`), trains `--steps` steps, and times one evaluation. Reported per size:

- peak private memory of one trial (RssAnon, sampled every 20 ms: what the trial itself holds; the pixel file's
  pages are the page cache's, shared by every trial on the node) and of two trials run at once on the same file;
- training images/s reading the mapped file, against the same trial with every split first copied into memory
  as float32 tensors (the path before memory maps), alternating rounds in one process, file in the page cache;
- the time of one evaluation (splits capped at `eval.split_max_samples`, set to `--eval-cap` here);
- the first open of each data set (the content check: fingerprint hash and finite-pixel scan, file in the page
  cache) and a trial's open after it.

Goals (issue 17): peak private memory per trial flat within 20% from 10k to 500k stamps; mapped throughput at least
90% of in-memory.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py [--sizes 10000 100000 500000] [--method adabn dance] [--publish]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.publish import publish  # noqa: E402


def private_mb() -> float:
    """This process's resident anonymous memory (MB): heap, tensors, not file pages shared with others."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler(threading.Thread):
    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peak, self._done = every, private_mb(), threading.Event()

    def run(self):
        while not self._done.wait(self.every):
            self.peak = max(self.peak, private_mb())

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, private_mb())


class InMemory:
    """A split's stamps copied into memory as one float32 tensor, with the interface of data.stamps.Stamps."""

    def __init__(self, x, device="cpu"):
        self.x, self.device = x, x.device

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index]

    def subset(self, index):
        return InMemory(self.x[index])

    def to(self, device):
        return InMemory(self.x.to(device))


def run_config(folder: Path, method: str, steps: int, eval_cap: int) -> dict:
    return {"data": {"path": str(folder)}, "method": {"name": method},
            "model": {"width": 16, "depth": 4, "feature_dim": 64},
            "optim": {"batch_size": 32},
            "train": {"steps": steps, "eval_every": steps, "threads": 1, "progress": False, "precision": "fp32",
                      "keep_checkpoints": 1},
            "eval": {"split_max_samples": eval_cap, "snd_max_samples": 500, "dev_max_samples": 500,
                     "agreement_max_samples": 100, "max_source_features": 500}}


def child(spec: dict) -> dict:
    """One trial: open the data set, train, evaluate once; peak private memory over all of it."""
    sampler = PeakSampler()
    sampler.start()
    import torch

    from uda_core.config import build_config
    from uda_core.evaluate import evaluate
    from uda_core.methods import get_method
    from uda_core.models import build_model
    from uda_core.train import load_data, train

    torch.set_num_threads(1)
    base_mb = private_mb()  # after imports: what any trial pays before touching data
    cfg = build_config(run_config(Path(spec["folder"]), spec["method"], spec["steps"], spec["eval_cap"]))
    t = time.perf_counter()
    data = load_data(cfg, progress=False)
    load_s = time.perf_counter() - t

    def images_per_s(d) -> float:
        got = {}
        with tempfile.TemporaryDirectory() as work:
            train(cfg, lambda ev, ck: got.update(ev.metrics), Path(work), data=d)
        return got["train/images_per_s"]

    rates = {"mapped": [], "in_memory": []}
    if spec["compare"]:
        from dataclasses import replace

        copied = replace(data, splits={k: replace(s, x=InMemory(s.x[:])) for k, s in data.splits.items()},
                         _capped={})
        for _ in range(spec["rounds"]):
            rates["mapped"].append(images_per_s(data))
            rates["in_memory"].append(images_per_s(copied))
        del copied
    else:
        rates["mapped"].append(images_per_s(data))
    model = build_model(cfg.model, data.in_channels, data.num_known)
    method = get_method(cfg.method.name)(cfg.method.parsed(), model, data.num_known, len(data["target/train"]))
    t = time.perf_counter()
    evaluate(model, method, data, cfg, 0)
    eval_s = time.perf_counter() - t
    return {"stamps": sum(len(s) for s in data.splits.values()), "load_s": load_s, "eval_s": eval_s,
            "base_mb": base_mb, "peak_private_mb": sampler.stop(),
            "images_per_s": {k: statistics.median(v) for k, v in rates.items() if v}}


def spawn(spec: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, env=env,
                            text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a trial failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def ensure_sizes(root: Path, sizes: list[int]) -> tuple[dict[int, Path], dict[int, float]]:
    """The replicated data sets, and how long each one's first open took (the content check, paid once per
    version of the files: every trial after it opens the set without reading the pixels)."""
    from uda_core.data.dataset import load_dataset
    from uda_core.data.replicate import replicate_dataset
    from uda_core.data.store import VERIFIED, DataSpec, ensure_dataset

    base = ensure_dataset(DataSpec(size="tiny"), root, progress=False)
    folders, first_open = {}, {}
    for n in sizes:
        folders[n] = root / f"replicated-{n}"
        if not folders[n].exists():
            t = time.perf_counter()
            replicate_dataset(base, folders[n], n)
            print(f"wrote {folders[n]} in {time.perf_counter() - t:.1f} s", flush=True)
        (folders[n] / VERIFIED).unlink(missing_ok=True)  # time the check itself
        warm(folders[n])
        t = time.perf_counter()
        load_dataset(folders[n], votes=False, columns=())
        first_open[n] = time.perf_counter() - t
    return folders, first_open


def warm(folder: Path) -> None:
    """Read the pixel file once so every trial finds it in the page cache."""
    with open(folder / "pixels.npy", "rb") as f:
        while f.read(1 << 24):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    ap.add_argument("--methods", nargs="+", default=["adabn", "dance"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3, help="alternating mapped / in-memory rounds")
    ap.add_argument("--compare-up-to", type=int, default=100_000,
                    help="also time the in-memory path up to this size (it needs the float32 copy in memory)")
    ap.add_argument("--eval-cap", type=int, default=5000, help="eval.split_max_samples")
    ap.add_argument("--root", default=str(ROOT / "data" / "scale"))
    ap.add_argument("--publish", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    folders, first_open = ensure_sizes(Path(args.root), sorted(args.sizes))
    rows = []
    for method in args.methods:
        for n, folder in folders.items():
            warm(folder)
            spec = {"folder": str(folder), "method": method, "steps": args.steps, "eval_cap": args.eval_cap,
                    "rounds": 1, "compare": False}
            one = result(spawn(spec))  # alone: its memory and one evaluation's time
            pair = [result(p) for p in [spawn(spec) for _ in range(2)]]  # two trials on one node, one file
            ratio = None
            if n <= args.compare_up_to:  # throughput only (tiny evaluations): mapped vs float32 copies in memory
                ips = result(spawn({**spec, "compare": True, "rounds": args.rounds, "eval_cap": 100}))["images_per_s"]
                ratio = round(ips["mapped"] / ips["in_memory"], 3)
            row = {"method": method, "stamps": one["stamps"],
                   "file_mb": round((folder / "pixels.npy").stat().st_size / 2**20),
                   "peak_private_mb": round(one["peak_private_mb"]), "base_mb": round(one["base_mb"]),
                   "two_trials_peak_private_mb": [round(p["peak_private_mb"]) for p in pair],
                   "first_open_s": round(first_open[n], 2), "load_s": round(one["load_s"], 2),
                   "eval_s": round(one["eval_s"], 2),
                   "images_per_s": round(one["images_per_s"]["mapped"], 1), "mapped_over_in_memory": ratio}
            rows.append(row)
            print(f"{method:8s} {row['stamps']:>8,d} stamps ({row['file_mb']:>5d} MB file): peak private "
                  f"{row['peak_private_mb']:>5d} MB (after imports {row['base_mb']} MB; two at once "
                  f"{row['two_trials_peak_private_mb']}), first open {row['first_open_s']:.1f} s, "
                  f"then {row['load_s']:.2f} s, eval {row['eval_s']:.2f} s, "
                  f"{row['images_per_s']:.0f} img/s" + (f", mapped / in-memory {ratio:.3f}" if ratio else ""),
                  flush=True)
    summary = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        peaks = [max(r["peak_private_mb"], *r["two_trials_peak_private_mb"]) for r in mine]  # per size
        ratios = [r["mapped_over_in_memory"] for r in mine if r["mapped_over_in_memory"]]
        summary[method] = {"peak_growth": round(max(peaks) / min(peaks), 3),
                           "min_mapped_over_in_memory": min(ratios) if ratios else None}
    out = {"bench": "scale", "rows": rows, "summary": summary, "eval_cap": args.eval_cap, "steps": args.steps,
           "goals": {"peak_growth_max": 1.2, "mapped_over_in_memory_min": 0.9},
           "goals_met": {m: s["peak_growth"] <= 1.2 and (s["min_mapped_over_in_memory"] or 0) >= 0.9
                         for m, s in summary.items()}}
    if args.publish:
        publish("scale", out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
