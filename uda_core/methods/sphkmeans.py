"""Spherical K-means pseudo-labels against a frozen classifier (Ye et al. 2024, DECaLS -> BASS/MzLS).

Two phases in one run. For the first `warmup_frac` of the steps the model trains on the source alone (class
cross-entropy, plus the Dirichlet-multinomial vote loss with a vote head): Ye et al.'s source model. Then the
classifier is frozen and the feature extractor is fine-tuned on target stamps:
  1. every `recluster_every` steps, L2-normalised features of the whole target/train split are clustered by
     spherical K-means, `clusters_per_answer` centroids per answer, initialised at the classifier's (normalised)
     answer weights; each galaxy joins one cluster per question (the best of that question's centroids);
  2. a galaxy gets a pseudo-label for a question when it is among the `confidence_frac` most similar members of its
     cluster and its similarity exceeds a threshold that starts at `threshold_start` and falls by
     `threshold_decay` per re-clustering; with `tree_filter` a question is only labelled where its parent answer is
     (the decision tree; the paper labels every question);
  3. the loss is a per-question cross-entropy of the features against the frozen classifier prototypes at
     temperature `tau`.
With a plain class label the tree is one question whose answers are the known classes (`votes.class_tree`).

What the paper describes, not the released code's defects: the prototypes in the loss stay the classifier's
weights (the released code overwrites them in place with the K-means centroids), the adaptation learning rate is
a real one (`adapt_lr_scale` times the run's, where the released schedule holds it near 1e-8), and no call passes
an argument too many.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import TARGET, reestimate_bn
from ..votes import VoteTree, class_tree
from .base import Batch, Method
from .params import SphKMeansParams

__all__ = ["SphKMeans", "SphKMeansParams", "spherical_kmeans", "pseudo_labels"]


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, init: torch.Tensor, owner: torch.Tensor, tree: VoteTree, iters: int = 100,
                     tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical K-means with per-question assignment.

    x: (N, D) unit rows; init: (C, D) unit centroids; owner: (C,) the answer (flat index) each centroid belongs to.
    Each row joins, for every question, the most similar centroid among that question's answers. A centroid is the
    normalised mean of its members (an empty one stays put). Returns centroids (C, D) and assignments (N, Q).
    """
    c = init.clone()
    groups = [torch.nonzero((owner >= s.start) & (owner < s.stop)).flatten() for s in tree.slices]
    for _ in range(iters):
        assign = torch.stack([g[(x @ c[g].t()).argmax(1)] for g in groups], dim=1)
        sums = torch.zeros_like(c)
        for q in range(assign.shape[1]):  # one question at a time: no (N, Q, D) copy of the features
            sums.index_add_(0, assign[:, q], x)
        counts = torch.bincount(assign.flatten(), minlength=len(c))
        new = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), c)
        shift = ((new - c) ** 2).sum()
        c = new
        if shift < tol:
            break
    assign = torch.stack([g[(x @ c[g].t()).argmax(1)] for g in groups], dim=1)
    return c, assign


@torch.no_grad()
def pseudo_labels(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor, owner: torch.Tensor,
                  tree: VoteTree, confidence_frac: float, threshold: float, tree_filter: bool) -> torch.Tensor:
    """(N, Q) answer index within each question, or -1 where a galaxy is not confidently labelled.

    Kept: the `confidence_frac` most similar members of each cluster, above `threshold`; with `tree_filter`, only
    where the parent question is labelled with the answer that leads to this one.
    """
    sim = (x @ centroids.t()).gather(1, assign)  # (N, Q): each galaxy's similarity to its own centroids
    keep = sim > threshold
    flat_assign, flat_sim = assign.flatten(), sim.flatten()
    confident = torch.zeros_like(flat_sim, dtype=torch.bool)
    for cluster in torch.unique(flat_assign):
        members = torch.nonzero(flat_assign == cluster).flatten()
        n_keep = max(1, int(confidence_frac * len(members)))
        confident[members[flat_sim[members].topk(n_keep).indices]] = True
    keep &= confident.view_as(keep)
    starts = torch.tensor([s.start for s in tree.slices], device=x.device)
    labels = torch.where(keep, owner[assign] - starts, torch.full_like(assign, -1))
    if tree_filter:
        for q, parent in enumerate(tree.parent_answer):
            if parent is None:
                continue
            pq = next(i for i, s in enumerate(tree.slices) if s.start <= parent < s.stop)
            # Questions come after their parents, so the parent's column is already filtered.
            labels[:, q] = torch.where(labels[:, pq] == parent - tree.slices[pq].start, labels[:, q], -1)
    return labels


class SphKMeans(Method):
    name = "sphkmeans"
    Params = SphKMeansParams
    uses_target = True
    needs_domain_bn = True  # target statistics are re-estimated (AdaBN) before each clustering
    loss_names = Method.loss_names | {"proto_ce"}

    def __init__(self, params: SphKMeansParams, model, num_known: int, n_target: int, **kw):
        super().__init__(params, model, num_known, n_target, **kw)
        self.tree = model.vote_tree or class_tree([str(k) for k in range(num_known)])
        device = model.prototypes.device
        self.labels = torch.full((n_target, len(self.tree.questions)), -1, dtype=torch.long, device=device)
        self.rounds = torch.zeros((), dtype=torch.long)  # re-clusterings so far: sets the threshold
        self.adapting = False

    def _prototypes(self) -> torch.Tensor:
        """The classifier whose answers are clustered: the vote head with one, else the class head."""
        p = self.model.answer_prototypes if self.model.vote_tree is not None else self.model.prototypes
        return F.normalize(p.detach().float(), dim=1)

    def _warmup_steps(self, total: int) -> int:
        return int(self.params.warmup_frac * total)

    def lr_scale(self, step: int, total: int) -> float:
        return self.params.adapt_lr_scale if step >= self._warmup_steps(total) else 1.0

    def prepare(self, step: int, total: int, target: torch.Tensor, autocast) -> None:
        p = self.params
        start = self._warmup_steps(total)
        self.adapting = step >= start
        for w in (self.model.prototypes, self.model.answer_prototypes):
            if w is not None:
                w.requires_grad_(not self.adapting)  # the classifier is frozen while adapting
        if self.adapting and (step - start) % p.recluster_every == 0:
            self._recluster(target, autocast)

    @torch.no_grad()
    def _recluster(self, target: torch.Tensor, autocast) -> None:
        p, model = self.params, self.model
        if model.domain_bn:
            # Target batch-norm statistics from the whole split first (AdaBN): the target branch has seen no
            # target batch during the source phase, so its running statistics are still the initial ones.
            reestimate_bn(model, target, TARGET, autocast=autocast)
        was = model.training
        model.eval()  # fixed BN statistics and no batch effects, as Ye et al. extract features
        feats = []
        for lo in range(0, len(target), 256):
            with autocast():
                feats.append(model(target[lo : lo + 256], TARGET)[1].float())
        model.train(was)
        x = torch.cat(feats)
        protos = self._prototypes()
        owner = torch.arange(len(protos), device=x.device).repeat_interleave(p.clusters_per_answer)
        init = protos[owner]
        if p.clusters_per_answer > 1:  # split each answer's centroid into nearby copies, deterministically
            g = torch.Generator().manual_seed(int(self.rounds))
            init = F.normalize(init + 0.1 * torch.randn(init.shape, generator=g).to(x.device), dim=1)
            init[:: p.clusters_per_answer] = protos
        centroids, assign = spherical_kmeans(x, init, owner, self.tree, iters=p.kmeans_iters)
        threshold = p.threshold_start - p.threshold_decay * int(self.rounds)
        self.labels = pseudo_labels(x, centroids, assign, owner, self.tree, p.confidence_frac, threshold, p.tree_filter)
        self.rounds += 1

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().losses(batch)
        if not self.adapting:
            return out
        _, feats_t = self.model(batch.xt, TARGET)
        labels = self.labels[batch.it]
        with torch.autocast(feats_t.device.type, enabled=False):  # fp32 logits up to 1/tau, as the class head's
            logits = feats_t.float() @ self._prototypes().t() / self.params.tau
        loss = feats_t.new_zeros((), dtype=torch.float32)
        for q, s in enumerate(self.tree.slices):
            ok = labels[:, q] >= 0
            if ok.any():
                loss = loss + F.cross_entropy(logits[ok, s], labels[ok, q], reduction="sum")
        out["proto_ce"] = loss / len(labels)
        return out

    def weights(self) -> dict[str, float]:
        w = super().weights()
        if self.adapting:  # the source losses only; labelled target stamps (few-shot) keep their weight
            w.update({k: w[k] * self.params.source_weight for k in ("source_ce", "votes")})
        return {**w, "proto_ce": 1.0}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "labels": self.labels.clone(), "rounds": self.rounds.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.labels.copy_(state["labels"])
        self.rounds = state["rounds"].cpu().clone()
