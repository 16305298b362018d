"""Training images/s per GPU with 1, 2, 4 and 8 trials packed on one GPU, against the same run's matmul peak.

Each trial is a Ray actor holding a fraction of the GPU (`num_gpus=1/n`, as `resources.gpus_per_trial` gives a
sweep's trials) and running this project's training loop: a `dance` step (train_step) with class-balanced source
and epoch-sampled target batches, batched augmentation, the model in channels_last, on stamps generated on the
device. The trials of a pack warm up, then run together for the same wall-clock window; their images/s add up to
the GPU's. The reference is a large square matmul timed on the whole GPU in the same run (bf16, fp32 and TF32), and
each configuration's achieved FLOP/s (torch's flop counter on one step, forward and backward) is a ratio to it.

On a GPU machine:    python bench/gpu.py --publish         (about 5 minutes on an H100/H200)
Without a GPU:       python bench/gpu.py --smoke           (seconds: a tiny model on the CPU, to test the script)
Goal (issue 17): at least 50,000 training images/s per GPU with packed trials on an H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ray
import torch
from torch.utils.flop_counter import FlopCounterMode

from uda_core.config import build_config, read_yaml
from uda_core.methods import Batch, get_method
from uda_core.models import build_model
from uda_core.train import _augment, _ClassBalancedSampler, _EpochSampler, autocast_factory, train_step

GOAL_IMAGES_PER_S = 50_000
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = ROOT / "sweeps/configs/decals_to_sdss.yaml"  # the shipped GPU sweep: its model and batch size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best-of-`reps` TFLOP/s of an n x n matmul (the reference peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
        a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


@ray.remote
def measure_peaks(n: int, reps: int) -> tuple[str, dict[str, float]]:
    """The device's name and its matmul TFLOP/s: bf16, fp32 (torch's default: no TF32 in matmul) and TF32."""
    if not torch.cuda.is_available():
        device, name = torch.device("cpu"), f"CPU ({torch.get_num_threads()} thread), no GPU"
    else:
        device, name = torch.device("cuda"), torch.cuda.get_device_name(0)
    peaks = {"bf16": matmul_tflops(device, torch.bfloat16, n, reps),
             "fp32": matmul_tflops(device, torch.float32, n, reps)}
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
        peaks["tf32"] = matmul_tflops(device, torch.float32, n, reps)
    return name, peaks


@ray.remote
class Trial:
    """One packed trial: a model, an optimiser, DANCE and its data, all on this actor's share of the device."""

    def __init__(self, share: float, model: dict, stamp_px: int, batch: int, n_stamps: int, threads: int):
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            # Ray hands out GPU fractions but not GPU memory: hold this trial to its share (CUDA contexts and the
            # other trials need the rest), as a sweep should size optim.batch_size for it.
            torch.cuda.set_per_process_memory_fraction(0.9 * share)
        self.cfg = build_config({"model": model, "method": {"name": "dance"}, "optim": {"batch_size": batch}})
        self.stamp_px, self.batch, self.n_stamps = stamp_px, batch, n_stamps

    def where(self) -> dict:
        """The GPUs Ray gave this actor and what the process sees (CUDA_VISIBLE_DEVICES is set by Ray)."""
        return {"ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(self.device),
                "pid": os.getpid()}

    def setup(self, precision: str, warmup: int) -> int:
        """Build a fresh model and optimiser in `precision`, warm up; returns one step's FLOPs (forward+backward)."""
        torch.manual_seed(0)
        cfg, dev, fmt = self.cfg, self.device, torch.channels_last
        num_classes, shape = 5, (self.n_stamps, 3, self.stamp_px, self.stamp_px)
        # Stamps and labels generated on the device: the loop, not a host copy, is what is measured.
        self.xs = (0.3 * torch.randn(shape, device=dev)).contiguous(memory_format=fmt)
        self.xt = (0.3 * torch.randn(shape, device=dev)).contiguous(memory_format=fmt)
        self.ys = torch.arange(self.n_stamps, device=dev) % num_classes
        model = build_model(cfg.model, 3, num_classes).to(dev).to(memory_format=fmt)
        self.method = get_method("dance")(cfg.method.parsed(), model, num_classes, self.n_stamps)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.autocast = autocast_factory(precision, dev)
        self.gen = torch.Generator().manual_seed(0)
        self.source_sampler = _ClassBalancedSampler(self.ys, self.gen)
        self.target_sampler = _EpochSampler(self.n_stamps, self.gen)
        model.train()
        with FlopCounterMode(display=False) as counter:
            self._step()
        for _ in range(warmup):
            self._step()
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        return counter.get_total_flops()

    def _step(self) -> None:
        """One iteration of uda_core.train's loop for `dance`: sample, index, augment, train_step."""
        i_s = self.source_sampler(self.batch).to(self.device)
        i_t = self.target_sampler(self.batch).to(self.device)
        batch = Batch(xs=_augment(self.xs[i_s], self.gen), ys=self.ys[i_s], xt=_augment(self.xt[i_t], self.gen),
                      it=i_t)
        train_step(self.method, self.opt, batch, self.autocast, 0)

    def run(self, start_at: float, seconds: float) -> dict:
        """Steps from wall-clock time `start_at` (shared by the pack) for `seconds`; images/s over that window."""
        time.sleep(max(0.0, start_at - time.time()))
        _sync(self.device)
        wall0, t0, steps = time.time(), time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            self._step()
            steps += 1
        _sync(self.device)  # the window ends when the device has finished its queued work
        elapsed = time.perf_counter() - t0
        memory = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0
        return {"steps": steps, "seconds": elapsed, "images_per_s": 2 * self.batch * steps / elapsed,
                "window": [wall0, wall0 + elapsed], "peak_memory_gb": memory / 2**30}

    def release(self) -> None:
        self.method = self.opt = self.xs = self.xt = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def resources(share: float, gpu: bool, cpus: float) -> dict:
    """Ray resources of one trial holding `share` of the device: a GPU fraction, or without a GPU a CPU fraction
    (the smoke run packs its trials on one CPU the same way)."""
    return {"num_gpus": share, "num_cpus": cpus} if gpu else {"num_cpus": share}


def run_pack(n: int, precisions: list[str], a, gpu: bool, model: dict) -> list[dict]:
    """`n` trials on one device, each with 1/n of it, through every precision; one result row per precision."""
    share = 1.0 / n
    trials = [Trial.options(**resources(share, gpu, a.cpus_per_trial)).remote(
        share, model, a.stamp_px, a.batch, a.stamps, a.threads) for _ in range(n)]
    rows = []
    try:
        placement = ray.get([t.where.remote() for t in trials])
        for precision in precisions:
            try:
                rows.append(time_pack(trials, precision, a) | {"placement": placement})
            except ray.exceptions.RayError as e:  # e.g. out of memory at 8 trials: report it, measure the rest
                rows.append({"precision": precision, "trials": n, "error": str(e).splitlines()[-1][:500]})
                print(f"{precision}, {n} trials: failed: {rows[-1]['error']}")
    finally:
        for t in trials:
            ray.kill(t)  # frees the actor's CUDA context before the next pack
    return rows


def time_pack(trials: list, precision: str, a) -> dict:
    """Set the pack's trials up in `precision`, run them together for `a.seconds`; their summed figures."""
    flops = ray.get([t.setup.remote(precision, a.warmup) for t in trials])
    start_at = time.time() + 1.0  # every trial is warm: start them together
    runs = ray.get([t.run.remote(start_at, a.seconds) for t in trials])
    ray.get([t.release.remote() for t in trials])
    achieved = sum(f * r["steps"] / r["seconds"] for f, r in zip(flops, runs))
    return {"precision": precision, "trials": len(trials),
            "images_per_s_per_gpu": round(sum(r["images_per_s"] for r in runs), 1),
            "images_per_s_per_trial": [round(r["images_per_s"], 1) for r in runs],
            "achieved_tflops": achieved / 1e12, "step_gflops": flops[0] / 1e9,
            "windows": [r["window"] for r in runs], "peak_memory_gb": max(r["peak_memory_gb"] for r in runs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny model on 16 px stamps for a few seconds per pack, on whatever device there is")
    ap.add_argument("--packs", help="trials packed on one GPU, comma-separated (default 1,2,4,8; smoke 1,2)")
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--sweep", default=str(DEFAULT_SWEEP), help="sweep file whose run.model and batch size to use")
    ap.add_argument("--stamp-px", type=int, default=64)
    ap.add_argument("--batch", type=int, help="per domain (default: the sweep's optim.batch_size, else 64)")
    ap.add_argument("--stamps", type=int, default=4096, help="generated stamps per domain, held on the device")
    ap.add_argument("--warmup", type=int, default=20, help="steps before timing (cuDNN, allocator, autocast caches)")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed window per configuration")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0, help="Ray CPUs per trial when one trial has the GPU")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--publish", action="store_true", help="write the JSON line to bench/results/gpu.json")
    a = ap.parse_args(argv)

    run = build_config(read_yaml(a.sweep, "sweep file")["run"], a.sweep)
    model = {**run.model.model_dump(), "vote_head": False}  # the vote head needs vote counts; its cost is small
    a.batch = a.batch or run.optim.batch_size
    if a.smoke:
        model = {"backbone": "cnn", "width": 8, "depth": 2, "feature_dim": 16, "domain_bn": True}
        a.stamp_px, a.batch, a.stamps, a.warmup, a.seconds, a.matmul_n = 16, 8, 64, 1, 1.0, 256
    packs = [int(p) for p in (a.packs or ("1,2" if a.smoke else "1,2,4,8")).split(",")]
    precisions = a.precisions.split(",")

    gpu = torch.cuda.is_available()  # the driver runs no CUDA work: the trials and the peak run in Ray workers
    # A Ray of its own ("local": never a cluster RAY_ADDRESS names) given one GPU, so every pack shares GPU 0 and
    # Ray sets each worker's CUDA_VISIBLE_DEVICES to it. Without a GPU: one CPU, shared in the same fractions.
    ray.init(address="local", num_gpus=1 if gpu else 0, num_cpus=os.cpu_count() if gpu else 1,
             include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        device, peaks = ray.get(measure_peaks.options(**resources(1.0, gpu, a.cpus_per_trial)).remote(
            a.matmul_n, 3 if a.smoke else 10))
        rows = [row for n in packs for row in run_pack(n, precisions, a, gpu, model)]
    finally:
        ray.shutdown()

    print(f"{device}; model {model}, {a.stamp_px} px, batch {a.batch} per domain; matmul peak TFLOP/s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
    print(f"{'precision':9s} {'trials':>6s} {'img/s/GPU':>10s} {'TFLOP/s':>8s} {'of peak':>8s} {'mem GB/trial':>12s}")
    measured = [row for row in rows if "error" not in row]
    for row in measured:
        # bf16 rows against the bf16 matmul; fp32 rows against strict fp32 (cuDNN's default TF32 convolutions
        # can put them above 1: vs_tf32 is the fair reference there).
        row["flop_ratio"] = round(row["achieved_tflops"] / peaks[row["precision"]], 3)
        if "tf32" in peaks and row["precision"] == "fp32":
            row["flop_ratio_vs_tf32"] = round(row["achieved_tflops"] / peaks["tf32"], 3)
        row["achieved_tflops"] = round(row["achieved_tflops"], 3)
        print(f"{row['precision']:9s} {row['trials']:6d} {row['images_per_s_per_gpu']:10.0f} "
              f"{row['achieved_tflops']:8.2f} {row['flop_ratio']:8.3f} {row['peak_memory_gb']:12.2f}")
    best = max(measured, key=lambda r: r["images_per_s_per_gpu"], default={"images_per_s_per_gpu": 0.0})
    result = {"bench": "gpu", "device": device, "smoke": a.smoke, "model": model, "stamp_px": a.stamp_px,
              "batch_per_domain": a.batch, "matmul_peak_tflops": {k: round(v, 3) for k, v in peaks.items()},
              "results": rows, "best": {k: best.get(k) for k in ("precision", "trials", "images_per_s_per_gpu")},
              "goal_images_per_s_per_gpu": GOAL_IMAGES_PER_S,
              "goal_met": gpu and not a.smoke and best["images_per_s_per_gpu"] >= GOAL_IMAGES_PER_S}
    line = json.dumps(result)
    print(line)
    if a.publish:
        (ROOT / "bench/results/gpu.json").write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
