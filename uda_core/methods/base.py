"""The interface every adaptation method implements, so the training loop and the sweep can pick one by name.

A method turns a batch into named, unweighted losses; the loop owns optimisation, weighting, precision and
checkpoints. Hyperparameters live in the method's `Params` model: the only copy of their defaults and ranges.

What a method may own, each through one hook here, so that a new method is one file and no change to the loop:
  heads           its own modules (e.g. one-vs-all classifiers): optimised with the network, checkpointed, exported
  loss_names      every loss it may return; `weights()` naming anything else is an error when it is built
  attach(data)    a look at the data set before training (label-free facts: survey definitions, sky noise)
  source_flux     a transform of the source stamps' fluxes before the stretch (survey emulation)
  views           how many independently augmented copies of the target batch it needs (contrastive losses)
  prepare         a hook before every step with the whole target/train split (periodic re-clustering)
  anomaly         its own unknown score on the network's outputs, and `own_threshold`, its rule's fixed threshold
  state_dict      state to checkpoint; `export_state` / `load_export_state` the part a deployed model needs
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel

from ..models import SOURCE, TARGET, UdaNet
from ..votes import alpha_from_cosine, dirichlet_multinomial_nll
from .params import NoParams

__all__ = ["Batch", "Method", "NoParams", "MethodError"]


class MethodError(TypeError):
    """A method class that breaks the contract (a programming error in a method file, not a user's input)."""


@dataclass
class Batch:
    xs: torch.Tensor  # source stamps (B, C, H, W)
    ys: torch.Tensor  # source labels (B,)
    xt: torch.Tensor | None = None  # unlabelled target stamps
    it: torch.Tensor | None = None  # their rows in target/train (memory-bank index)
    xl: torch.Tensor | None = None  # labelled target stamps (semi-supervised or oracle)
    yl: torch.Tensor | None = None  # their labels; >= num_known (unknown classes) only for target_labels "all+unknown"
    vs: torch.Tensor | None = None  # source vote counts (B, A), with a vote head
    xt_views: list[torch.Tensor] = field(default_factory=list)  # Method.views - 1 more augmented copies of xt


class Method:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    uses_target: ClassVar[bool] = False  # draws unlabelled target batches
    needs_domain_bn: ClassVar[bool] = False  # forces model.domain_bn (AdaBN)
    # "few_shot" (data.few_shot_per_class), "all" (every shared-class target label: an oracle) or "all+unknown"
    # (the unknown classes' labels too: the open-set oracle).
    target_labels: ClassVar[str] = "few_shot"
    loss_names: ClassVar[frozenset[str]] = frozenset({"source_ce", "target_ce", "votes"})
    views: ClassVar[int] = 1  # augmented copies of each target batch (only with train.augment)
    transforms_source: ClassVar[bool] = False  # the loop passes source fluxes through source_flux()

    def __init__(self, params: BaseModel, model: UdaNet, num_known: int, n_target: int, vote_weight: float = 0.0):
        self.params, self.model, self.num_known, self.n_target = params, model, num_known, n_target
        self.vote_weight = vote_weight
        self.heads = nn.ModuleDict()  # subclasses add their modules here, on self.device

    def check_weights(self) -> None:
        """A weight for a loss the method never returns would silently do nothing: refuse it (the loop calls this
        once the method is built; a returned loss without a weight is refused at the step that returns it)."""
        unknown = set(self.weights()) - self.loss_names
        if unknown:
            raise MethodError(f"method {self.name!r}: weights for losses it never returns: {sorted(unknown)}; "
                              f"its losses are {sorted(self.loss_names)}")

    @property
    def device(self) -> torch.device:
        return self.model.prototypes.device

    def attach(self, data) -> None:
        """Called once with the UdaData before training; only label-free parts of it may be used."""

    def source_flux(self, flux: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Source fluxes (B, C, H, W) in nanomaggies before the stretch (called when transforms_source)."""
        return flux

    def prepare(self, step: int, total: int, target, autocast) -> None:
        """Called before each step with the whole target/train split (e.g. to re-cluster its features)."""

    def lr_scale(self, step: int, total: int) -> float:
        """A factor on the run's learning rate at `step` (a method with its own adaptation phase lowers it)."""
        return 1.0

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.supervised_losses(batch, *self.model(batch.xs, SOURCE))

    def supervised_losses(self, batch: Batch, logits_s: torch.Tensor, feats_s: torch.Tensor) -> dict[str, torch.Tensor]:
        """The labelled losses, given the network's outputs on the source batch (so a method that needs the source
        features too runs the source forward pass once)."""
        out = {"source_ce": F.cross_entropy(logits_s.float(), batch.ys)}
        if batch.vs is not None:  # the vote head: Dirichlet-multinomial on the volunteers' counts
            alpha = alpha_from_cosine(self.model.answer_logits(feats_s))
            out["votes"] = dirichlet_multinomial_nll(alpha, batch.vs, self.model.vote_tree).mean()
        if batch.xl is not None:  # one forward pass on the labelled target stamps, whatever losses read it
            out.update(self.labelled_target_losses(batch.yl, *self.model(batch.xl, TARGET)))
        return out

    def labelled_target_losses(self, y: torch.Tensor, logits: torch.Tensor, feats: torch.Tensor
                               ) -> dict[str, torch.Tensor]:
        """Losses on labelled target stamps (oracles only): cross-entropy on those of a known class (unknown-class
        labels have no row in the K-way head)."""
        known = y < self.num_known
        return {"target_ce": F.cross_entropy(logits[known].float(), y[known])} if known.any() else {}

    def weights(self) -> dict[str, float]:
        return {"source_ce": 1.0, "target_ce": 1.0, "votes": self.vote_weight}

    def after_step(self) -> None:
        """Called after the optimiser step (e.g. to update a memory bank)."""

    def rho(self) -> float | None:
        """The method's own entropy rejection threshold, if it has one."""
        return None

    def anomaly(self, logits: np.ndarray, feats: np.ndarray) -> np.ndarray | None:
        """The method's own unknown score (N,), higher = more anomalous, from the network's logits and normalised
        features; None: the run's eval.reject_score decides."""
        return None

    def own_threshold(self) -> float | None:
        """The fixed threshold of the method's own rule on `anomaly` (e.g. OVANet's 0.5); None: eval's rule."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"heads.{k}": v.clone() for k, v in self.heads.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.heads.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("heads.")})

    def export_state(self) -> dict[str, torch.Tensor]:
        """What a deployed model needs besides the network (its heads), not the training state (memory banks)."""
        return {f"heads.{k}": v.clone() for k, v in self.heads.state_dict().items()}

    def load_export_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `export_state` wrote (or the heads of a full `state_dict`): enough to predict, not to train."""
        Method.load_state_dict(self, state)

    def parameters(self) -> list[nn.Parameter]:
        """The method's own trainable parameters, optimised with the network's."""
        return list(self.heads.parameters())
