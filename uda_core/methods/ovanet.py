"""OVANet (Saito & Saenko, ICCV 2021): one-vs-all heads that decide "unknown" per class, without a threshold to fit.

Besides the K-way cosine classifier, a head gives for every known class k a two-way probability "is k / is not k".
Source: each stamp's own class is pushed to "is", and its hardest other class (the one most tempted to say "is")
to "is not", half each. Target: the entropy of every one-vs-all output is minimised (weight `ent_weight`), which
pushes each target galaxy to be clearly inside or clearly outside each class. At test time the K-way head names the
class and that class's one-vs-all head decides: "is not" above 0.5 means unknown. The rule is per class and its
threshold is fixed by construction, so it cannot over-reject a unimodal score the way a global mixture fit can.

Built on AdaBN (per-domain batch-norm statistics, re-estimated before evaluation) and, with `emulation_strength` >
0, on survey emulation of the source: both are the baselines it must beat.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import SOURCE, TARGET
from .base import Batch
from .emulation import Emulation
from .params import OvanetParams

__all__ = ["Ovanet", "ova_probs", "ova_source_loss", "ova_entropy"]


def ova_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2K) head outputs -> (N, 2, K) probabilities; [:, 1, k] is "is class k", [:, 0, k] "is not"."""
    return F.softmax(logits.float().view(len(logits), 2, -1), dim=1)


def ova_source_loss(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of (-log p(is y) + max_{k != y} -log p(is not k)) / 2."""
    onehot = F.one_hot(y, probs.shape[-1]).bool()
    positive = -torch.log(probs[:, 1][onehot] + eps)
    negative = (-torch.log(probs[:, 0] + eps)).masked_fill(onehot, 0).amax(dim=1)
    return 0.5 * (positive.mean() + negative.mean())


def ova_entropy(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over samples and classes of each one-vs-all output's binary entropy."""
    return -(probs * torch.log(probs + eps)).sum(dim=1).mean()


class Ovanet(Emulation):
    name = "ovanet"
    Params = OvanetParams
    uses_target = True
    loss_names = Emulation.loss_names | {"ova", "ova_entropy"}
    emulation_fields = ("emulation_strength", "emulation_prob")

    def __init__(self, params: OvanetParams, model, num_known: int, n_target: int, **kw):
        super().__init__(params, model, num_known, n_target, **kw)
        # On the normalised features the K-way head sees; a plain linear layer as in the reference.
        self.heads["ova"] = nn.Linear(model.embed.out_features, 2 * num_known).to(self.device)

    def _ova(self, feats: torch.Tensor) -> torch.Tensor:
        with torch.autocast(feats.device.type, enabled=False):
            return ova_probs(self.heads["ova"](feats.float()))

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits_s, feats_s = self.model(batch.xs, SOURCE)
        out = self.supervised_losses(batch, logits_s, feats_s)
        out["ova"] = ova_source_loss(self._ova(feats_s), batch.ys)
        _, feats_t = self.model(batch.xt, TARGET)
        out["ova_entropy"] = ova_entropy(self._ova(feats_t))
        return out

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "ova": self.params.ova_weight, "ova_entropy": self.params.ent_weight}

    @torch.no_grad()
    def anomaly(self, logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """p("is not" the predicted class) from the one-vs-all head: > 0.5 is unknown."""
        probs = self._ova(torch.from_numpy(np.ascontiguousarray(feats)).to(self.device)).cpu().numpy()
        pred = logits.argmax(1)
        return probs[np.arange(len(pred)), 0, pred].astype(np.float64)

    def own_threshold(self) -> float:
        return 0.5
