"""DANCE (Saito et al. 2020) as DeepAstroUDA's code runs it.

loss = CE(source) + eta_nc * NC(target, memory bank) + eta_es * ES(target), unknown rejection by entropy > rho.
Two deliberate changes from the reference, both named in the issue: the NC and ES weights are separate
hyperparameters (the reference ties them to one eta), and rho, m are parametrised by c_rho, c_m so ES cannot
silently have zero gradient (see losses.es_threshold_and_margin).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import entropy_separation, es_threshold_and_margin, neighbourhood_clustering
from ..models import TARGET
from .base import Batch, Method
from .params import DanceParams


class Dance(Method):
    name = "dance"
    Params = DanceParams
    uses_target = True
    loss_names = Method.loss_names | {"nc", "es"}

    def __init__(self, params: DanceParams, model, num_known: int, n_target: int, **kw):
        super().__init__(params, model, num_known, n_target, **kw)
        dim = model.embed.out_features
        device = model.prototypes.device
        # Zero-initialised like the reference; each row is overwritten the first time its sample is drawn.
        self.memory = torch.zeros(n_target, dim, device=device)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._rho, self._margin = es_threshold_and_margin(num_known, params.c_rho, params.c_m)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().losses(batch)
        logits_t, feats_t = self.model(batch.xt, TARGET)
        out["nc"] = neighbourhood_clustering(logits_t, feats_t, self.memory, batch.it, self.model.temperature)
        out["es"] = entropy_separation(logits_t, self._rho, self._margin)
        self._pending = (batch.it, feats_t.detach().float())
        return out

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "nc": self.params.eta_nc, "es": self.params.eta_es}

    @torch.no_grad()
    def after_step(self) -> None:
        index, feats = self._pending
        mu = self.params.memory_momentum
        self.memory[index] = F.normalize(mu * self.memory[index] + (1 - mu) * feats, dim=1)
        self._pending = None

    def rho(self) -> float:
        return self._rho

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "memory": self.memory.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.memory.copy_(state["memory"])
