"""The open-set oracle: OVANet trained with every target label, the unknown classes' included. A ceiling, not a method.

`target_oracle` sees the shared classes' target labels only, so it is no ceiling for finding unknowns. This one
also learns, on labelled target stamps, that lenses and artifacts are none of the known classes: their one-vs-all
outputs are all pushed to "is not" (each stamp's most tempted class, as OVANet's hardest negative). Its H-score
and AUROC bound what OVANet's rule can reach on these images with this network. It needs target labels for
training, so it is refused on a target without them, and every number it gives is an oracle number.
"""

from __future__ import annotations

import torch

from .ovanet import Ovanet, ova_source_loss
from .params import NoParams, OvanetParams

__all__ = ["OpenSetOracle"]


class OpenSetOracle(Ovanet):
    name = "open_set_oracle"
    Params = NoParams
    target_labels = "all+unknown"
    loss_names = Ovanet.loss_names | {"target_ova"}

    def __init__(self, params, model, num_known: int, n_target: int, **kw):
        super().__init__(OvanetParams(), model, num_known, n_target, **kw)  # OVANet's defaults

    def labelled_target_losses(self, y: torch.Tensor, logits: torch.Tensor, feats: torch.Tensor
                               ) -> dict[str, torch.Tensor]:
        out = super().labelled_target_losses(y, logits, feats)
        probs = self._ova(feats)
        known = y < self.num_known
        parts = []
        if known.any():
            parts.append(ova_source_loss(probs[known], y[known]) * known.float().mean())
        if (~known).any():  # every class says "is not": its hardest one
            parts.append(-torch.log(probs[~known, 0] + 1e-8).amax(dim=1).mean() * (~known).float().mean())
        out["target_ova"] = sum(parts)
        return out

    def weights(self) -> dict[str, float]:
        return {**super().weights(), "target_ova": 1.0}
