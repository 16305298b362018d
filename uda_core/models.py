"""Small backbones trained from scratch, a cosine classifier head, and domain-specific batch norm.

No pretrained weights are downloaded: the stamps are small (32-96 px, 3 bands) and unlike ImageNet photographs.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .votes import VoteTree

__all__ = ["UdaNet", "DomainBatchNorm2d", "build_model", "SOURCE", "TARGET", "reestimate_bn"]

SOURCE, TARGET = 0, 1


class DomainBatchNorm2d(nn.Module):
    """Batch norm with one set of running statistics per domain and shared affine parameters.

    The affine part is shared so that a model trained on the source alone (whose target statistics are only
    re-estimated, as in AdaBN) still has trained scale and shift for the target.
    """

    def __init__(self, channels: int, n_domains: int = 2):
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(n_domains))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.domain = SOURCE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The domain's statistics with the shared affine in one batch_norm kernel: normalising, then scaling and
        # shifting in separate ops made three more passes over the activations (~20% of a width-16 step on CPU).
        bn = self.bns[self.domain]
        momentum = bn.momentum
        if self.training:  # nn.BatchNorm2d's bookkeeping: momentum None is a cumulative average (reestimate_bn)
            bn.num_batches_tracked.add_(1)
            if momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(x, bn.running_mean, bn.running_var, self.weight, self.bias, self.training,
                            momentum or 0.0, bn.eps)


def _norm(channels: int, domain_bn: bool) -> nn.Module:
    return DomainBatchNorm2d(channels) if domain_bn else nn.BatchNorm2d(channels)


def _cnn(cfg: ModelConfig, in_ch: int) -> tuple[nn.Module, int]:
    layers, ch = [], in_ch
    for i in range(cfg.depth):
        out = cfg.width * 2 ** min(i, 3)
        layers += [nn.Conv2d(ch, out, 3, padding=1, bias=False), _norm(out, cfg.domain_bn)]
        # Pool before ReLU: the same values and gradients (max commutes with ReLU), with ReLU on a quarter of them.
        if i < cfg.depth - 1 and i < 4:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.ReLU(inplace=True))
        ch = out
    return nn.Sequential(*layers), ch


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, domain_bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(cout, domain_bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(cout, domain_bn)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout, domain_bn))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


def _resnet(cfg: ModelConfig, in_ch: int) -> tuple[nn.Module, int]:
    """Three stages (width, 2 width, 4 width) of `depth` basic blocks each."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, cfg.width, 3, padding=1, bias=False), _norm(cfg.width, cfg.domain_bn),
                               nn.ReLU(inplace=True)]
    ch = cfg.width
    for stage in range(3):
        out = cfg.width * 2**stage
        for b in range(cfg.depth):
            layers.append(_Block(ch, out, 2 if (b == 0 and stage > 0) else 1, cfg.domain_bn))
            ch = out
    return nn.Sequential(*layers), ch


class UdaNet(nn.Module):
    """backbone -> global pool -> linear features f -> cosine classifier logits = W_hat . f_hat / T."""

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int, vote_tree: VoteTree | None = None):
        super().__init__()
        self.backbone, ch = (_cnn if cfg.backbone == "cnn" else _resnet)(cfg, in_channels)
        self.embed = nn.Linear(ch, cfg.feature_dim)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_classes, cfg.feature_dim), dim=1))
        # The vote head: one prototype per Galaxy Zoo answer on the same features (Ye et al.'s classifier rows,
        # whose normalised weights seed spherical K-means), giving Dirichlet concentrations.
        self.vote_tree = vote_tree
        self.answer_prototypes = (nn.Parameter(F.normalize(torch.randn(vote_tree.num_answers, cfg.feature_dim), dim=1))
                                  if vote_tree else None)
        self.temperature = cfg.temperature
        self.domain_bn = cfg.domain_bn

    def set_domain(self, domain: int) -> None:
        for m in self.modules():
            if isinstance(m, DomainBatchNorm2d):
                m.domain = domain

    def features(self, x: torch.Tensor, domain: int = SOURCE) -> torch.Tensor:
        if self.domain_bn:
            self.set_domain(domain)
        h = self.backbone(x)
        return self.embed(h.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor, domain: int = SOURCE) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (N, K), L2-normalised features (N, D))."""
        h = self.features(x, domain)
        # The cosine head runs in fp32 even under bf16 autocast: with T = 0.05 logits reach +-20, where bf16's
        # rounding (~0.1) would blur entropies and rejection thresholds. Prototypes are normalised here (DANCE
        # renormalises its weights before each step).
        with torch.autocast(h.device.type, enabled=False):
            f = F.normalize(h.float(), dim=1)
            return f @ F.normalize(self.prototypes.float(), dim=1).t() / self.temperature, f


    def answer_logits(self, f: torch.Tensor) -> torch.Tensor:
        """Cosine logits (N, A) of normalised features against the answer prototypes (the vote head)."""
        with torch.autocast(f.device.type, enabled=False):
            return f.float() @ F.normalize(self.answer_prototypes.float(), dim=1).t() / self.temperature


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int, vote_tree: VoteTree | None = None) -> UdaNet:
    """A `vote_tree` adds the vote head (model.vote_head on a data set with votes)."""
    return UdaNet(cfg, in_channels, num_classes, vote_tree)


@torch.no_grad()
def reestimate_bn(model: UdaNet, x: torch.Tensor, domain: int, batch_size: int = 256,
                  autocast=contextlib.nullcontext) -> None:
    """AdaBN: replace `domain`'s batch-norm statistics by their exact average over `x` (no labels needed)."""
    bns = [m.bns[domain] for m in model.modules() if isinstance(m, DomainBatchNorm2d)]
    if not bns:
        return
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches below
    model.train()
    for lo in range(0, len(x), batch_size):
        with autocast():
            model.features(x[lo : lo + batch_size].to(model.prototypes.device), domain)  # x: tensor or Stamps
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    model.train(was_training)
