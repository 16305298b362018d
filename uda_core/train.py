"""The training loop: a plain function that knows no logging backend.

`train(cfg, report, workdir)` trains for `cfg.train.steps` steps, evaluates every `eval_every` steps, writes a
checkpoint there and calls `report(evaluation, checkpoint_dir)`. `uda-sweep train` passes a callback that writes
JSON and pictures; the sweep layer passes one that logs to MLflow and reports to Ray Tune. Resuming from a
checkpoint restores model, optimiser, method state (memory bank), step counter and sampler RNG, so a resumed run
continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .config import RunConfig
from .data.dataset import UdaData, load_dataset
from .data.stamps import stretch
from .data.store import DataSpec, ensure_dataset
from .errors import ConfigError, UdaError
from .evaluate import Evaluation, evaluate
from .label_checks import check_target_label_use  # noqa: F401 (light; re-exported)
from .methods import Batch, get_method
from .methods.base import MethodError
from .models import build_model
from .votes import VoteTree

__all__ = ["train", "train_step", "load_data", "check_target_label_use", "vote_tree_for",
           "resolve_device", "autocast_factory", "private_memory_mb",
           "TrainingDiverged", "CHECKPOINT_FILE"]

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "state.pt"
Report = Callable[[Evaluation, Path], None]


class TrainingDiverged(UdaError, FloatingPointError):
    """A loss became NaN or infinite; the trial's hyperparameters are unusable."""


# Loaded data sets of this process: a worker that runs trial after trial opens each data set once. Cheap to keep:
# the pixels stay in the memory-mapped file, only labels and a few catalogue columns are in memory.
_LOADED: dict[tuple, UdaData] = {}
_LOADED_MAX = 2
TRIAL_COLUMNS = ("r_mag",)  # catalogue columns a trial reads beyond data.dataset.REQUIRED_COLUMNS


def load_data(cfg: RunConfig, progress: bool = True) -> UdaData:
    """The run's data set: generated on first use (simulated) or read from `data.path`, opened once per process
    and files' state (a data set rewritten in place is opened afresh)."""
    d = cfg.data
    if d.path:
        folder = Path(d.path)
    else:
        folder = ensure_dataset(DataSpec(d.task, d.source, d.target, d.size, d.seed, d.label_noise), Path(d.root),
                                progress=progress)
    try:
        key = (str(folder.resolve()), _files_state(folder), cfg.model.vote_head)
    except OSError:  # no such folder, or not one: load_dataset names what is wrong
        return load_dataset(folder, votes=cfg.model.vote_head, columns=TRIAL_COLUMNS)
    if key not in _LOADED:
        data = load_dataset(folder, votes=cfg.model.vote_head, columns=TRIAL_COLUMNS)
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = data
    return _LOADED[key]


def _files_state(folder: Path) -> tuple:
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file()
                 and not p.name.startswith("."))


def vote_tree_for(cfg: RunConfig, data: UdaData) -> VoteTree | None:
    """The vote tree the model's vote head predicts (model.vote_head), or None; the source must carry votes."""
    if not cfg.model.vote_head:
        return None
    if data.vote_tree is None or data["source/train"].votes is None:
        raise ConfigError(f"model.vote_head: the data set {data.folder} has no source vote counts (manifest 'votes'); "
                          "set vote_head: false, or import the votes with data import --source-votes")
    return data.vote_tree


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UdaError("train.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context factory for the chosen precision (a no-op context for fp32).

    bf16 autocast pays off on CUDA and on CPUs with AMX/AVX512-BF16; elsewhere "auto" stays in fp32.
    """
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_fast_bf16()
        if not fast:
            return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(method, opt: torch.optim.Optimizer, batch: Batch, autocast, step: int) -> tuple[dict, torch.Tensor]:
    """One optimisation step: the method's named losses, weighted, checked finite, back-propagated."""
    with autocast():
        losses = method.losses(batch)
    weights = method.weights()
    unweighted = set(losses) - set(weights)
    if unweighted:
        raise MethodError(f"method {method.name!r} returned losses without a weight: {sorted(unweighted)}")
    loss = sum(weights[k] * v for k, v in losses.items())
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"non-finite loss at step {step}: " + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    method.after_step()
    return losses, loss


def private_memory_mb() -> float | None:
    """This process's resident anonymous memory in MB (Linux): what a trial holds itself, without the pages of
    the mapped pixel file, which the page cache shares between every trial on the node. None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), None)
    return None if kb is None else kb / 1024


def _lr_factor(schedule: str, step: int, total: int) -> float:
    t = min(1.0, step / max(total, 1))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "inv":  # DANCE's inv_lr_scheduler: (1 + 10 t)^-0.75
        return (1 + 10 * t) ** -0.75
    return 1.0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations per stamp (the dihedral group: galaxies have no preferred orientation).

    Random draws come from the loop's CPU generator (one RNG stream whatever the device), then move to x's device.
    """
    n = len(x)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    k = torch.randint(0, 4, (n,), generator=gen).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    out = x.clone()
    for r in (1, 2, 3):
        m = k == r
        if m.any():
            out[m] = torch.rot90(x[m], r, dims=(-2, -1))
    return out


class _ClassBalancedSampler:
    """Draws a class uniformly, then a stamp of that class uniformly (DANCE's class-balanced source loader)."""

    def __init__(self, labels: torch.Tensor, gen: torch.Generator):
        labels = labels.cpu()
        order = torch.argsort(labels, stable=True)
        classes, counts = torch.unique(labels, return_counts=True)
        self.order, self.counts, self.gen = order, counts, gen
        self.starts = torch.cumsum(counts, 0) - counts
        self.n_classes = len(classes)

    def __call__(self, batch: int) -> torch.Tensor:
        c = torch.randint(0, self.n_classes, (batch,), generator=self.gen)
        pos = (torch.rand(batch, generator=self.gen) * self.counts[c]).long()
        return self.order[self.starts[c] + pos]


class _EpochSampler:
    """Target rows without replacement within an epoch (as a shuffled loader draws them), so a batch never holds
    the same stamp twice: a duplicate would be its own perfect neighbour in neighbourhood clustering."""

    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen = n, gen
        self.perm, self.pos = torch.randperm(n, generator=gen), 0

    def __call__(self, batch: int) -> torch.Tensor:
        if self.pos + batch > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        out = self.perm[self.pos : self.pos + batch]
        self.pos += batch
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return {"perm": self.perm.clone(), "pos": torch.tensor(self.pos)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


def _labelled_target_rows(cfg: RunConfig, data: UdaData, target_labels: str) -> torch.Tensor | None:
    """Rows of target/train whose labels a method may use: all shared-class rows (oracle), those and the unknown
    classes' rows (open-set oracle), or a few per shared class."""
    y = data["target/train"].y
    shared = torch.tensor(data.shared)
    if target_labels == "all":
        return torch.nonzero(torch.isin(y, shared)).flatten()
    if target_labels == "all+unknown":
        return torch.nonzero(torch.isin(y, shared) | (y >= data.num_known)).flatten()
    n = cfg.data.few_shot_per_class
    if n == 0:
        return None
    g = torch.Generator().manual_seed(cfg.data.seed + 1)
    perm = torch.randperm(len(y), generator=g)
    rows = [perm[y[perm] == c][:n] for c in data.shared]
    return torch.cat(rows)


def _save_checkpoint(path: Path, cfg: RunConfig, step: int, model, opt, method, gen,
                     target_sampler, best: dict | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {
        "step": torch.tensor(step),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "method": method.state_dict(),
        "rng": gen.get_state(),
        "target_sampler": target_sampler.state(),
    }
    torch.save(state, tmp / CHECKPOINT_FILE)
    (tmp / "config.json").write_text(cfg.model_dump_json(indent=2))
    (tmp / "best.json").write_text(json.dumps(best))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def train(
    cfg: RunConfig,
    report: Report,
    workdir: Path,
    resume_from: Path | None = None,
    data: UdaData | None = None,
) -> Evaluation:
    """Train one run; returns the last evaluation. Checkpoints go to `workdir/checkpoints/step_XXXXXXX`."""
    workdir = Path(workdir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = data or load_data(cfg, progress=cfg.train.progress)
    check_target_label_use(cfg, data.manifest, str(data.folder))
    method_cls = get_method(cfg.method.name)
    if method_cls.needs_domain_bn and not cfg.model.domain_bn:
        cfg = cfg.model_copy(deep=True)
        cfg.model.domain_bn = True
    device = resolve_device(cfg.train.device)
    autocast = autocast_factory(cfg.train.precision, device)

    torch.manual_seed(cfg.train.seed)
    # channels_last in every precision: measured 1.23x vs 1.08x for contiguous fp32 on this CPU (bench/core_throughput).
    tree = vote_tree_for(cfg, data)
    model = build_model(cfg.model, data.in_channels,
                        data.num_known, tree).to(device).to(memory_format=torch.channels_last)
    n_target = len(data["target/train"])
    method = method_cls(cfg.method.parsed(), model, data.num_known, n_target, vote_weight=cfg.train.vote_weight)
    method.check_weights()
    method.attach(data)
    params = list(model.parameters()) + method.parameters()
    o = cfg.optim
    if o.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0,
                              weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(cfg.train.seed)  # on the CPU whatever the device: one stream to checkpoint

    def to_dev(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    # Stamps stay in the mapped file; each batch is read and stretched on the device (data.stamps).
    xs, ys = data["source/train"].x.to(device), data["source/train"].train_y.to(device)
    vs = data["source/train"].votes.to(device) if tree is not None else None
    xt = data["target/train"].x.to(device)
    source_sampler = _ClassBalancedSampler(data["source/train"].train_y, gen)
    target_sampler = _EpochSampler(n_target, gen)
    lab_rows = _labelled_target_rows(cfg, data, method_cls.target_labels)
    lab_sampler = None
    if lab_rows is not None:
        lab_x, lab_y = xt.subset(lab_rows), data["target/train"].y[lab_rows].to(device)
        lab_sampler = _ClassBalancedSampler(lab_y, gen)

    step, best = 0, None
    if resume_from is not None:
        _check_resumable(cfg, Path(resume_from))
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        gen.set_state(state["rng"].cpu())
        target_sampler.load({k: v.cpu() for k, v in state["target_sampler"].items()})
        step = int(state["step"])
        best = json.loads((Path(resume_from) / "best.json").read_text())
        log.info("resumed from %s at step %d", resume_from, step)

    ckpt_root = workdir / "checkpoints"
    bs, total = o.batch_size, cfg.train.steps
    bar = tqdm(total=total, initial=step, desc=f"{cfg.method.name}", unit="step", disable=not cfg.train.progress)
    last: Evaluation | None = None
    t0, images = time.perf_counter(), 0
    model.train()
    while step < total:
        for g in opt.param_groups:
            g["lr"] = o.lr * _lr_factor(o.schedule, step, total) * method.lr_scale(step, total)
        method.prepare(step, total, xt, autocast)
        i_s = source_sampler(bs)
        # A method that transforms the source (survey emulation) sees fluxes before the stretch.
        source = (stretch(method.source_flux(xs.flux(i_s), gen), xs.softening) if method_cls.transforms_source
                  else xs[i_s])
        batch = Batch(xs=to_dev(source), ys=ys[i_s.to(device)], vs=None if vs is None else vs[i_s.to(device)])
        if method_cls.uses_target:
            i_t = target_sampler(bs)
            batch.it, batch.xt = i_t.to(device), to_dev(xt[i_t])
        if lab_sampler is not None:
            i_l = lab_sampler(bs)
            batch.xl, batch.yl = to_dev(lab_x[i_l]), lab_y[i_l.to(device)]
        if cfg.train.augment:
            if batch.xt is not None:  # further views first: each is its own draw of the same target stamps
                batch.xt_views = [_augment(batch.xt, gen) for _ in range(method_cls.views - 1)]
            for name in ("xs", "xt", "xl"):
                if getattr(batch, name) is not None:
                    setattr(batch, name, _augment(getattr(batch, name), gen))
        losses, loss = train_step(method, opt, batch, autocast, step)
        step += 1
        images += bs * (1 + (batch.xt is not None) + (batch.xl is not None))
        bar.update(1)
        if step % cfg.train.eval_every == 0 or step == total:
            train_time = time.perf_counter() - t0
            evaluation = evaluate(model, method, data, cfg, step, autocast)
            model.train()
            evaluation.metrics.update({f"train/{k}": float(v.item()) for k, v in losses.items()})
            evaluation.metrics["train/loss"] = float(loss.item())
            evaluation.metrics["train/lr"] = opt.param_groups[0]["lr"]
            evaluation.metrics["train/images_per_s"] = images / max(train_time, 1e-9)
            if (private := private_memory_mb()) is not None:
                evaluation.metrics["train/private_memory_mb"] = private
            value = evaluation.metrics.get(cfg.eval.select_by)
            if _better(value, None if best is None else best["value"], cfg.eval.select_mode):
                best = {"step": step, "value": value, "metric": cfg.eval.select_by}
            ckpt = ckpt_root / f"step_{step:07d}"
            _save_checkpoint(ckpt, cfg, step, model, opt, method, gen, target_sampler, best)
            _prune(ckpt_root, cfg.train.keep_checkpoints, best)
            bar.set_postfix(loss=f"{loss.item():.3f}", src_val=f"{evaluation.metrics['source_val/acc']:.3f}")
            log.info("step %d/%d %s", step, total, {k: round(v, 4) for k, v in evaluation.metrics.items()
                                                    if "/" in k and k.count("/") == 1})
            report(evaluation, ckpt)
            last = evaluation
            t0, images = time.perf_counter(), 0
    bar.close()
    return last


def _check_resumable(cfg: RunConfig, checkpoint: Path) -> None:
    """A checkpoint only fits the data, model and method it was trained with; say which keys changed."""
    # Through the schema first, so a key added since the checkpoint was written compares as its default.
    try:
        saved = json.loads(RunConfig.model_validate_json((checkpoint / "config.json").read_text()).model_dump_json())
    except ValueError as e:  # pydantic's ValidationError: a key this version no longer has, or a damaged file
        raise ConfigError(f"cannot resume from {checkpoint}: its config.json does not fit this version "
                          f"({str(e).splitlines()[0]}); start a new run in another directory") from None
    now = json.loads(cfg.model_dump_json())
    changed = [
        f"{section}.{k}: {saved[section].get(k)!r} -> {v!r}"
        for section in ("data", "model", "method")
        for k, v in now[section].items()
        if saved[section].get(k) != v
    ]
    if changed:
        raise ConfigError(f"cannot resume from {checkpoint}: the config changed ({'; '.join(changed)}); "
                          "restore those values or start a new run in another directory")


def _prune(root: Path, keep: int, best: dict | None) -> None:
    """Keep the newest `keep` checkpoints and the best one."""
    dirs = sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))
    best_name = f"step_{best['step']:07d}" if best else None
    for p in dirs[:-keep]:
        if p.name != best_name:
            shutil.rmtree(p, ignore_errors=True)
