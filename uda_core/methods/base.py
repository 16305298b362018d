"""The interface every adaptation method implements, so the training loop and the sweep can pick one by name.

A method turns a batch into named, unweighted losses; the loop owns optimisation, weighting, precision and
checkpoints. Hyperparameters live in the method's `Params` model: the only copy of their defaults and ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from ..models import SOURCE, TARGET, UdaNet

__all__ = ["Batch", "Method", "NoParams"]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Batch:
    xs: torch.Tensor  # source stamps (B, C, H, W)
    ys: torch.Tensor  # source labels (B,)
    xt: torch.Tensor | None = None  # unlabelled target stamps
    it: torch.Tensor | None = None  # their rows in target/train (memory-bank index)
    xl: torch.Tensor | None = None  # labelled target stamps (semi-supervised or oracle)
    yl: torch.Tensor | None = None


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    uses_target: ClassVar[bool] = False  # draws unlabelled target batches
    needs_domain_bn: ClassVar[bool] = False  # forces model.domain_bn (AdaBN)
    target_labels: ClassVar[str] = "few_shot"  # "few_shot" (data.few_shot_per_class) or "all" (oracle)

    def __init__(self, params: BaseModel, model: UdaNet, num_known: int, n_target: int):
        self.params, self.model, self.num_known, self.n_target = params, model, num_known, n_target

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits_s, _ = self.model(batch.xs, SOURCE)
        out = {"source_ce": F.cross_entropy(logits_s.float(), batch.ys)}
        if batch.xl is not None:
            logits_l, _ = self.model(batch.xl, TARGET)
            out["target_ce"] = F.cross_entropy(logits_l.float(), batch.yl)
        return out

    def weights(self) -> dict[str, float]:
        return {"source_ce": 1.0, "target_ce": 1.0}

    def after_step(self) -> None:
        """Called after the optimiser step (e.g. to update a memory bank)."""

    def rho(self) -> float | None:
        """The method's own entropy rejection threshold, if it has one."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass
