"""The interface every adaptation method implements, so the training loop and the sweep can pick one by name.

A method turns a batch into named, unweighted losses; the loop owns optimisation, weighting, precision and
checkpoints. Hyperparameters live in the method's `Params` model: the only copy of their defaults and ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from ..models import SOURCE, TARGET, UdaNet
from ..votes import alpha_from_cosine, dirichlet_multinomial_nll
from .params import NoParams

__all__ = ["Batch", "Method", "NoParams"]


@dataclass
class Batch:
    xs: torch.Tensor  # source stamps (B, C, H, W)
    ys: torch.Tensor  # source labels (B,)
    xt: torch.Tensor | None = None  # unlabelled target stamps
    it: torch.Tensor | None = None  # their rows in target/train (memory-bank index)
    xl: torch.Tensor | None = None  # labelled target stamps (semi-supervised or oracle)
    yl: torch.Tensor | None = None
    vs: torch.Tensor | None = None  # source vote counts (B, A), with a vote head


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    uses_target: ClassVar[bool] = False  # draws unlabelled target batches
    needs_domain_bn: ClassVar[bool] = False  # forces model.domain_bn (AdaBN)
    target_labels: ClassVar[str] = "few_shot"  # "few_shot" (data.few_shot_per_class) or "all" (oracle)

    def __init__(self, params: BaseModel, model: UdaNet, num_known: int, n_target: int, vote_weight: float = 0.0):
        self.params, self.model, self.num_known, self.n_target = params, model, num_known, n_target
        self.vote_weight = vote_weight

    def prepare(self, step: int, total: int, target: torch.Tensor, autocast) -> None:
        """Called before each step with the whole target/train split (e.g. to re-cluster its features)."""

    def lr_scale(self, step: int, total: int) -> float:
        """A factor on the run's learning rate at `step` (a method with its own adaptation phase lowers it)."""
        return 1.0

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits_s, feats_s = self.model(batch.xs, SOURCE)
        out = {"source_ce": F.cross_entropy(logits_s.float(), batch.ys)}
        if batch.vs is not None:  # the vote head: Dirichlet-multinomial on the volunteers' counts
            alpha = alpha_from_cosine(self.model.answer_logits(feats_s))
            out["votes"] = dirichlet_multinomial_nll(alpha, batch.vs, self.model.vote_tree).mean()
        if batch.xl is not None:
            logits_l, _ = self.model(batch.xl, TARGET)
            out["target_ce"] = F.cross_entropy(logits_l.float(), batch.yl)
        return out

    def weights(self) -> dict[str, float]:
        return {"source_ce": 1.0, "target_ce": 1.0, "votes": self.vote_weight}

    def after_step(self) -> None:
        """Called after the optimiser step (e.g. to update a memory bank)."""

    def rho(self) -> float | None:
        """The method's own entropy rejection threshold, if it has one."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass
