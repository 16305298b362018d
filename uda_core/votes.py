"""Galaxy Zoo vote labels: the decision tree, the Dirichlet-multinomial loss and what follows from a Dirichlet.

A Galaxy Zoo label is not a class but volunteer votes down a decision tree: every volunteer answers the first
question, and each later question is only asked of those who gave its parent answer. A galaxy's label is one vote
count per answer (catalogue columns `{question}_{answer}`, Galaxy Zoo DECaLS' names), and a question nobody was
asked has zero votes in all its answers.

A vote model predicts Dirichlet concentrations alpha per answer (Ye et al. 2024, after Walmsley et al. 2022); the
loss is the Dirichlet-multinomial negative log-likelihood summed over questions, and a question with zero votes
contributes exactly zero, which is how the tree is handled without masks.

A plain class label is the one-question tree `class_tree(names)` with one vote per galaxy, so every vote-aware
method also runs on a class-labelled data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["Question", "VoteTree", "GZ_DECALS", "TREES", "class_tree", "tree_from_dict", "dirichlet_multinomial_nll",
           "alpha_from_cosine", "expected_fractions", "vote_fractions", "dirichlet_entropy", "ALPHA_MIN", "ALPHA_RANGE"]

# alpha = ALPHA_MIN + ALPHA_RANGE * sigmoid(logit), in (1, 101) as Ye et al.'s head: alpha >= 1 keeps the Dirichlet
# unimodal, and the cap stops a confident head from pushing the loss to -inf on galaxies with many votes.
ALPHA_MIN, ALPHA_RANGE = 1.0, 100.0


@dataclass(frozen=True)
class Question:
    name: str
    answers: tuple[str, ...]
    asked_after: tuple[str, str] | None = None  # (question, answer) whose voters are asked this one; None: everyone


@dataclass(frozen=True)
class VoteTree:
    name: str
    questions: tuple[Question, ...]

    def __post_init__(self):
        names = [q.name for q in self.questions]
        if len(set(names)) != len(names):
            raise ValueError(f"vote tree {self.name}: question names repeat")
        for i, q in enumerate(self.questions):
            if q.asked_after is not None:
                parent, answer = q.asked_after
                if parent not in names[:i] or answer not in self.question(parent).answers:
                    raise ValueError(f"vote tree {self.name}: {q.name} is asked after {parent}/{answer}, "
                                     "which is not an earlier question's answer")

    def question(self, name: str) -> Question:
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(name)

    @property
    def columns(self) -> list[str]:
        """One vote-count column per answer, in answer order (GZ DECaLS: `smooth-or-featured_smooth`, ...)."""
        return [f"{q.name}_{a}" for q in self.questions for a in q.answers]

    @property
    def num_answers(self) -> int:
        return sum(len(q.answers) for q in self.questions)

    @property
    def slices(self) -> list[slice]:
        """Each question's answers as a slice of the flat answer axis."""
        out, lo = [], 0
        for q in self.questions:
            out.append(slice(lo, lo + len(q.answers)))
            lo += len(q.answers)
        return out

    def answer_index(self, question: str, answer: str) -> int:
        q = self.questions.index(self.question(question))
        return self.slices[q].start + self.questions[q].answers.index(answer)

    @property
    def parent_answer(self) -> list[int | None]:
        """Per question, the flat index of the answer that leads to it (None for questions everyone is asked)."""
        return [None if q.asked_after is None else self.answer_index(*q.asked_after) for q in self.questions]

    def to_dict(self) -> dict:
        return {"name": self.name, "questions": [
            {"name": q.name, "answers": list(q.answers), "asked_after": list(q.asked_after) if q.asked_after else None}
            for q in self.questions]}


def tree_from_dict(raw: dict) -> VoteTree:
    """The tree a manifest or an exported model records (`VoteTree.to_dict`)."""
    try:
        return VoteTree(raw["name"], tuple(
            Question(q["name"], tuple(q["answers"]), tuple(q["asked_after"]) if q.get("asked_after") else None)
            for q in raw["questions"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"vote tree: cannot read {raw!r:.200} ({e}); it must be what VoteTree.to_dict writes") from None


def class_tree(class_names: list[str] | tuple[str, ...]) -> VoteTree:
    """A class label as a vote tree: one question whose answers are the classes."""
    return VoteTree("classes", (Question("class", tuple(class_names)),))


# Galaxy Zoo DECaLS (GZD-5): 10 questions, 34 answers; names as the released catalogues spell them.
GZ_DECALS = VoteTree("gz_decals", (
    Question("smooth-or-featured", ("smooth", "featured-or-disk", "artifact")),
    Question("disk-edge-on", ("yes", "no"), ("smooth-or-featured", "featured-or-disk")),
    Question("has-spiral-arms", ("yes", "no"), ("disk-edge-on", "no")),
    Question("bar", ("strong", "weak", "no"), ("disk-edge-on", "no")),
    Question("bulge-size", ("dominant", "large", "moderate", "small", "none"), ("disk-edge-on", "no")),
    Question("how-rounded", ("round", "in-between", "cigar-shaped"), ("smooth-or-featured", "smooth")),
    Question("edge-on-bulge", ("boxy", "none", "rounded"), ("disk-edge-on", "yes")),
    Question("spiral-winding", ("tight", "medium", "loose"), ("has-spiral-arms", "yes")),
    Question("spiral-arm-count", ("1", "2", "3", "4", "more-than-4", "cant-tell"), ("has-spiral-arms", "yes")),
    Question("merging", ("none", "minor-disturbance", "major-disturbance", "merger")),
))

TREES: dict[str, VoteTree] = {t.name: t for t in (GZ_DECALS,)}


def dirichlet_multinomial_nll(alpha: torch.Tensor, counts: torch.Tensor, tree: VoteTree) -> torch.Tensor:
    """Per-galaxy negative log-likelihood (N,) of vote counts (N, A) under Dirichlet-multinomials with
    concentrations alpha (N, A), summed over the tree's questions.

    log p(n | alpha) = lnG(A) + lnG(N+1) - lnG(N+A) + sum_k [lnG(n_k+alpha_k) - lnG(alpha_k) - lnG(n_k+1)], with
    A = sum alpha, N = sum n over one question. With N = 0 every term cancels to exactly 0: an unasked question
    adds nothing (and no gradient), so no mask is needed.
    """
    import torch  # here, so the data import can read trees without paying for torch

    alpha, counts = alpha.float(), counts.float()
    lg = torch.lgamma
    per_answer = lg(counts + alpha) - lg(alpha) - lg(counts + 1)
    nll = torch.zeros(len(alpha), device=alpha.device)
    for s in tree.slices:
        a_sum, n_sum = alpha[:, s].sum(1), counts[:, s].sum(1)
        log_p = lg(a_sum) + lg(n_sum + 1) - lg(n_sum + a_sum) + per_answer[:, s].sum(1)
        nll = nll - torch.where(n_sum > 0, log_p, torch.zeros_like(log_p))
    return nll


def alpha_from_cosine(cosine_logits: torch.Tensor) -> torch.Tensor:
    """Dirichlet concentrations from the answer head's logits (cosine similarity / temperature)."""
    import torch

    return ALPHA_MIN + ALPHA_RANGE * torch.sigmoid(cosine_logits.float())


def expected_fractions(alpha: np.ndarray, tree: VoteTree) -> np.ndarray:
    """The expected vote fraction of each answer within its question, (N, A): alpha_a / sum of alpha over it."""
    alpha = np.asarray(alpha, dtype=np.float64)
    out = np.empty_like(alpha)
    for s in tree.slices:
        out[:, s] = alpha[:, s] / alpha[:, s].sum(1, keepdims=True)
    return out


def vote_fractions(counts: np.ndarray, tree: VoteTree) -> tuple[np.ndarray, np.ndarray]:
    """Observed fractions (N, A) and vote totals per question (N, Q); an unasked question has fractions 0."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = np.stack([counts[:, s].sum(1) for s in tree.slices], axis=1)
    out = np.zeros_like(counts)
    for q, s in enumerate(tree.slices):
        asked = totals[:, q] > 0
        out[asked, s] = counts[asked, s] / totals[asked, q, None]
    return out, totals


def dirichlet_entropy(alpha: np.ndarray, tree: VoteTree) -> np.ndarray:
    """Differential entropy (nats) of each question's Dirichlet, (N, Q): the model's uncertainty about the vote
    fractions (low for a confident, concentrated Dirichlet; it can be negative)."""
    from scipy.special import digamma, gammaln

    alpha = np.asarray(alpha, dtype=np.float64)
    out = np.empty((len(alpha), len(tree.questions)))
    for q, s in enumerate(tree.slices):
        a = alpha[:, s]
        a0, k = a.sum(1), a.shape[1]
        log_b = gammaln(a).sum(1) - gammaln(a0)
        out[:, q] = log_b + (a0 - k) * digamma(a0) - ((a - 1) * digamma(a)).sum(1)
    return out
