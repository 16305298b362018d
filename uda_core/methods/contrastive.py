"""Contrastive learning on both surveys' stamps as an auxiliary loss (SimCLR's NT-Xent, Chen et al. 2020), on AdaBN
and survey emulation of the source (`emulation_strength`, as OVANet).

Two views of every stamp in a batch, source and target alike, labels unused, must map to nearby features and away
from the batch's other galaxies. The views differ by what cannot change a galaxy's class: orientation and
reflection (the loop's dihedral augmentation), a shift of a few pixels and extra sky noise. Self-supervised
features of this kind found lenses that classifiers trained on labels missed (Stein et al. 2021); here they should
keep unknowns (lenses, artifacts) from collapsing onto the known classes, which is what limits the distance-based
anomaly scores. Shen et al. (2022) found such pre-training on both domains competitive with dedicated UDA losses.

Run as an auxiliary loss from the first step, not as a separate pre-training stage shared by a sweep's trials:
a cached stage is the next step (the issue's "once per sweep"), left out here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import SOURCE, TARGET
from .base import Batch, Method
from .emulation import Emulation
from .params import ContrastiveParams

__all__ = ["Contrastive", "nt_xent", "jitter"]


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent over 2N embeddings: row i of `a` and row i of `b` are the positives, every other row a negative."""
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    sim = z @ z.t() / tau
    n = len(a)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def jitter(x: torch.Tensor, noise: float, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """A shift of up to `max_shift` pixels (one per batch, wrapped) and Gaussian noise of a random level up to
    `noise` (stretched units, per stamp)."""
    dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=gen) if max_shift else torch.zeros(2)).tolist()
    x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(-2, -1))
    level = torch.rand(len(x), generator=gen) * noise
    return x + (torch.randn(x.shape, generator=gen) * level[:, None, None, None]).to(x.device)


class Contrastive(Emulation):
    name = "contrastive"
    Params = ContrastiveParams
    uses_target = True
    views = 2  # the loop draws a second augmented copy of each target batch
    loss_names = Method.loss_names | {"contrastive"}
    emulation_fields = ("emulation_strength", "emulation_prob")

    def __init__(self, params: ContrastiveParams, model, num_known: int, n_target: int, **kw):
        super().__init__(params, model, num_known, n_target, **kw)
        d = model.embed.out_features
        # A projection head: the loss acts on its output, so the features themselves keep what the classifier needs.
        self.heads["projection"] = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)).to(self.device)
        self.gen = torch.Generator().manual_seed(torch.initial_seed())  # the loop seeded torch with train.seed

    def _project(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        return self.heads["projection"](self.model(x, domain)[1])

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        p = self.params
        logits_s, feats_s = self.model(batch.xs, SOURCE)
        out = self.supervised_losses(batch, logits_s, feats_s)
        view = lambda x: jitter(x, p.noise, p.max_shift, self.gen)  # noqa: E731
        # Source: its two views are the batch and a quarter-turned, jittered copy of it.
        src = nt_xent(self.heads["projection"](feats_s), self._project(view(torch.rot90(batch.xs, 1, (2, 3))),
                                                                       SOURCE), p.tau)
        second = batch.xt_views[0] if batch.xt_views else torch.rot90(batch.xt, 1, (2, 3))
        tgt = nt_xent(self._project(view(batch.xt), TARGET), self._project(view(second), TARGET), p.tau)
        out["contrastive"] = 0.5 * (src + tgt)
        return out

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "contrastive": self.params.weight}

    def state_dict(self) -> dict[str, torch.Tensor]:  # the views' random stream too, so a resumed run continues it
        return {**super().state_dict(), "jitter_rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.gen.set_state(state["jitter_rng"].cpu())
