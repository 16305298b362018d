"""Training throughput of one `dance` step at 64 px: this core against a naive pipeline, in the same run.

Naive baseline: the same model in fp32, fed by a per-sample torch DataLoader (a Dataset that reads one stamp,
stretches and augments it in Python) as a typical reference implementation does. This core: tensors in memory,
batched indexing and augmentation, and each precision/memory-format variant the loop supports. Rounds of the
two alternate and medians are reported, so machine noise hits both. Goal: >= 4x the baseline on this CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from uda_core.config import build_config
from uda_core.data.dataset import preprocess
from uda_core.methods import Batch, get_method
from uda_core.models import build_model
from uda_core.train import _augment, _ClassBalancedSampler, _cpu_has_fast_bf16, load_data, train_step


class NaiveStamps(Dataset):
    def __init__(self, pixels, rows, labels, softening):
        self.pixels, self.rows, self.labels, self.soft = pixels, rows, labels, softening

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        x = preprocess(self.pixels[self.rows[i]][None], self.soft)[0]
        if random.random() < 0.5:
            x = x.flip(-1)
        x = torch.rot90(x, random.randint(0, 3), dims=(-2, -1))
        return x, self.labels[i], i


def make(cfg, data, channels_last):
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_channels, data.num_known)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = get_method("dance")(cfg.method.parsed(), model, data.num_known, len(data["target/train"]))
    return model, method, torch.optim.AdamW(model.parameters(), lr=1e-3)


def run_naive(cfg, data, steps, bs):
    model, method, opt = make(cfg, data, False)
    pix = np.load(data.folder / "pixels.npy", mmap_mode="r")
    src, tgt = data["source/train"].catalogue, data["target/train"].catalogue
    ls = DataLoader(NaiveStamps(pix, src["row"].to_numpy(), src["train_label"].to_numpy(), data.softening),
                    batch_size=bs, shuffle=True, drop_last=True)
    lt = DataLoader(NaiveStamps(pix, tgt["row"].to_numpy(), tgt["label"].to_numpy(), data.softening),
                    batch_size=bs, shuffle=True, drop_last=True)
    it_s, it_t = iter(ls), iter(lt)
    t = time.perf_counter()
    for _ in range(steps):
        xs, ys, _ = next(it_s)
        xt, _, idx = next(it_t)
        train_step(method, opt, Batch(xs=xs, ys=ys.long(), xt=xt, it=idx), contextlib.nullcontext, 0)
    return 2 * bs * steps / (time.perf_counter() - t)


def run_core(cfg, data, steps, bs, precision, channels_last):
    model, method, opt = make(cfg, data, channels_last)
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs, ys = data["source/train"].x.contiguous(memory_format=fmt), data["source/train"].train_y
    xt = data["target/train"].x.contiguous(memory_format=fmt)
    sampler = _ClassBalancedSampler(ys, gen)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    t = time.perf_counter()
    for _ in range(steps):
        i = sampler(bs)
        it = torch.randint(0, len(xt), (bs,), generator=gen)
        train_step(method, opt, Batch(xs=_augment(xs[i], gen), ys=ys[i], xt=_augment(xt[it], gen), it=it), autocast, 0)
    return 2 * bs * steps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="default", help="data size preset (default: 64 px)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bf16", action="store_true",
                    help="also time bf16 on a CPU without AMX/AVX512-BF16 (emulated: slow)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--root", default="data")
    a = ap.parse_args()
    cfg = build_config({"data": {"size": a.size, "root": a.root}, "method": {"name": "dance"}})
    data = load_data(cfg)
    print(f"stamps {data.stamp_px} px, batch {a.batch} per domain, threads {torch.get_num_threads()}, "
          f"CPU fast bf16: {_cpu_has_fast_bf16()}")
    variants = {"core_fp32": ("fp32", False), "core_fp32_channels_last": ("fp32", True)}
    if _cpu_has_fast_bf16() or a.bf16:
        variants["core_bf16_channels_last"] = ("bf16", True)
    rates: dict[str, list[float]] = {"naive_fp32_dataloader": [], **{k: [] for k in variants}}
    run_naive(cfg, data, 2, a.batch)  # warm-up
    for v in variants.values():
        run_core(cfg, data, 2, a.batch, *v)
    for _ in range(a.rounds):
        rates["naive_fp32_dataloader"].append(run_naive(cfg, data, a.steps, a.batch))
        for k, v in variants.items():
            rates[k].append(run_core(cfg, data, a.steps, a.batch, *v))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["naive_fp32_dataloader"]
    for k, v in med.items():
        print(f"{k:28s} {v:8.1f} img/s   x{v / base:.2f}")
    # What `precision: auto` picks on this machine.
    auto = "core_bf16_channels_last" if _cpu_has_fast_bf16() else "core_fp32_channels_last"
    best = max((k for k in variants), key=med.get)
    print(json.dumps({"bench": "core_throughput", "stamp_px": data.stamp_px,
                      "images_per_s": {k: round(v, 1) for k, v in med.items()},
                      "auto_variant": auto, "auto_speedup": round(med[auto] / base, 2), "best_variant": best,
                      "best_speedup": round(med[best] / base, 2), "goal": 4.0, "goal_met": med[best] / base >= 4.0}))


if __name__ == "__main__":
    main()
