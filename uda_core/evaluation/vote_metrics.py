"""Per-question scores of a Galaxy Zoo vote model (Ye et al. 2024; Walmsley et al. 2022), numpy only.

Inputs are true vote counts (N, A) over a `VoteTree`'s answers and the model's Dirichlet concentrations alpha, or
its expected vote fractions, (N, A). Three views, each per question of the tree:

* **Accuracy at a cut** (Ye et al.'s notebook): a galaxy counts for question q at cut c when its total votes on q
  are >= `min_votes`, its top observed fraction on q is > c, and every ancestor question's top answer is the
  answer leading (down the tree) to q, with a fraction > c too. True answer = argmax observed fraction, predicted
  = argmax expected fraction. Cuts 0.5 and 0.8: `acc50`, `acc80`, with the counts `n50`, `n80`.
* **Detection per answer** (the classic Galaxy Zoo CNN table): among galaxies with >= `min_votes` on q, the
  positives of answer a are those whose observed fraction of a is > 0.5; a galaxy is predicted positive when
  its predicted fraction of a is > t, t in (0.2, 0.5, 0.8). TPR (completeness) and precision (purity) per answer,
  and per question their macro average over the answers that have positives.
* **Confusion** of true vs predicted top answer per question, on the galaxies counting at cut 0.5.

Nothing here is NaN: a question or answer with no qualifying galaxy has its count 0 and its score None (a JSON
null) in the tables, and no entry at all in `VoteReport.metrics()`.

`min_votes` defaults to 10, not Ye's 34. Walmsley et al. and Ye et al. keep GZ DECaLS galaxies with more than 34
votes to drop the early ones that were shown to only 5 volunteers, against ~40 for the rest; the cut is on the
first question, which every volunteer answers. Our simulated galaxies have ~30-50 volunteers, and a question
lower in the tree is answered only by those who gave its parent answer (a half to a fifth of them, two or three
levels down), so 34 would drop about a fifth of all galaxies on the first question and nearly every galaxy on
the deeper ones. 10 keeps the purpose (no top answer decided by a handful of votes) at every depth of the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..votes import VoteTree, expected_fractions, vote_fractions

__all__ = ["MIN_VOTES", "CUTS", "THRESHOLDS", "POSITIVE_FRACTION", "VoteReport", "qualifying", "question_accuracy",
           "answer_detection", "question_confusion", "vote_report", "cut_key", "threshold_key"]

MIN_VOTES = 10  # see the module docstring: Ye's 34 fits GZ DECaLS' ~40 volunteers, not our 30-50 down a tree
CUTS = (0.5, 0.8)  # accuracy cuts on the top fraction (acc50, acc80)
THRESHOLDS = (0.2, 0.5, 0.8)  # detection thresholds on the predicted fraction
POSITIVE_FRACTION = 0.5  # an answer is "true" for a galaxy when more than half its voters gave it


def cut_key(cut: float) -> str:
    """0.5 -> "50": the suffix of acc50 / n50."""
    return f"{round(cut * 100):d}"


def threshold_key(t: float) -> str:
    """0.2 -> "t20": the suffix of the detection columns (tpr_t20, precision_t20)."""
    return f"t{round(t * 100):d}"


def _question_of_answer(tree: VoteTree) -> np.ndarray:
    owner = np.empty(tree.num_answers, dtype=np.int64)
    for q, s in enumerate(tree.slices):
        owner[s] = q
    return owner


def _top(frac: np.ndarray, s: slice) -> tuple[np.ndarray, np.ndarray]:
    """Index within the question and value of each galaxy's top fraction on question slice s."""
    block = frac[:, s]
    arg = block.argmax(1)
    return arg, block[np.arange(len(block)), arg]


def qualifying(frac: np.ndarray, totals: np.ndarray, tree: VoteTree, cut: float,
               min_votes: float = MIN_VOTES) -> np.ndarray:
    """(N, Q) bool: which galaxies count for each question at `cut` (Ye et al.'s filter, module docstring).

    frac: observed fractions (N, A), totals: votes per question (N, Q), both from `vote_fractions`.
    """
    slices, parents, owner = tree.slices, tree.parent_answer, _question_of_answer(tree)
    top_arg, top_val = zip(*(_top(frac, s) for s in slices)) if slices else ((), ())
    out = np.zeros((len(frac), len(slices)), dtype=bool)
    for q, s in enumerate(slices):
        ok = (totals[:, q] >= min_votes) & (top_val[q] > cut)
        p = parents[q]
        while p is not None:  # walk up: each ancestor's top answer must lead here, with a fraction > cut
            pq = int(owner[p])
            ok &= (top_arg[pq] == p - slices[pq].start) & (frac[:, p] > cut)
            p = parents[pq]
        out[:, q] = ok
    return out


def _fractions(counts: np.ndarray, tree: VoteTree, alpha: np.ndarray | None, fractions: np.ndarray | None):
    if (alpha is None) == (fractions is None):
        raise ValueError("give exactly one of alpha (Dirichlet concentrations) or fractions (expected fractions)")
    counts = np.asarray(counts, dtype=np.float64)
    pred = expected_fractions(alpha, tree) if alpha is not None else np.asarray(fractions, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != tree.num_answers or pred.shape != counts.shape:
        raise ValueError(f"counts {counts.shape} and predictions {pred.shape} must both be (N, {tree.num_answers}) "
                         f"for the vote tree {tree.name}")
    frac, totals = vote_fractions(counts, tree)
    return frac, totals, pred


def question_accuracy(frac: np.ndarray, totals: np.ndarray, pred: np.ndarray, tree: VoteTree,
                      cuts=CUTS, min_votes: float = MIN_VOTES) -> list[dict]:
    """Per question {question, n50, acc50, n80, acc80} (one n/acc pair per cut); acc is None where n is 0."""
    rows = [{"question": q.name} for q in tree.questions]
    for cut in cuts:
        keep = qualifying(frac, totals, tree, cut, min_votes)
        for q, s in enumerate(tree.slices):
            m = keep[:, q]
            n = int(m.sum())
            acc = float((frac[m, s].argmax(1) == pred[m, s].argmax(1)).mean()) if n else None
            rows[q][f"n{cut_key(cut)}"], rows[q][f"acc{cut_key(cut)}"] = n, acc
    return rows


def answer_detection(frac: np.ndarray, totals: np.ndarray, pred: np.ndarray, tree: VoteTree,
                     thresholds=THRESHOLDS, min_votes: float = MIN_VOTES) -> list[dict]:
    """Per answer and threshold t: {question, answer, threshold, n_asked, positives, predicted_positive, tp, tpr,
    precision}. tpr is None without positives, precision None without predicted positives."""
    rows = []
    for q, (question, s) in enumerate(zip(tree.questions, tree.slices)):
        asked = totals[:, q] >= min_votes
        for j, answer in enumerate(question.answers):
            a = s.start + j
            positive = asked & (frac[:, a] > POSITIVE_FRACTION)
            for t in thresholds:
                called = asked & (pred[:, a] > t)
                tp, p, pp = int((positive & called).sum()), int(positive.sum()), int(called.sum())
                rows.append({"question": question.name, "answer": answer, "threshold": float(t),
                             "n_asked": int(asked.sum()), "positives": p, "predicted_positive": pp, "tp": tp,
                             "tpr": tp / p if p else None, "precision": tp / pp if pp else None})
    return rows


def _macro(answer_rows: list[dict], tree: VoteTree, thresholds) -> dict[str, dict]:
    """Per question the mean TPR and precision over its answers that have positives (precision: those of them with
    a predicted positive too), and how many answers had positives."""
    out: dict[str, dict] = {q.name: {} for q in tree.questions}
    for q in tree.questions:
        for t in thresholds:
            rows = [r for r in answer_rows if r["question"] == q.name and r["threshold"] == float(t) and r["positives"]]
            tprs = [r["tpr"] for r in rows]
            precs = [r["precision"] for r in rows if r["precision"] is not None]
            k = threshold_key(t)
            out[q.name][f"tpr_{k}"] = float(np.mean(tprs)) if tprs else None
            out[q.name][f"precision_{k}"] = float(np.mean(precs)) if precs else None
        out[q.name]["answers_with_positives"] = len({r["answer"] for r in answer_rows
                                                     if r["question"] == q.name and r["positives"]})
    return out


def question_confusion(frac: np.ndarray, totals: np.ndarray, pred: np.ndarray, tree: VoteTree, cut: float = CUTS[0],
                       min_votes: float = MIN_VOTES) -> dict[str, dict]:
    """Per question a confusion dict like `metrics.confusion`'s ({"matrix", "rows", "cols"}; rows true top answer,
    cols predicted top answer) over the galaxies counting at `cut`."""
    keep = qualifying(frac, totals, tree, cut, min_votes)
    out = {}
    for q, (question, s) in enumerate(zip(tree.questions, tree.slices)):
        m, k = keep[:, q], len(question.answers)
        mat = np.zeros((k, k), dtype=np.int64)
        np.add.at(mat, (frac[m, s].argmax(1), pred[m, s].argmax(1)), 1)
        out[question.name] = {"matrix": mat.tolist(), "rows": list(question.answers), "cols": list(question.answers)}
    return out


@dataclass
class VoteReport:
    """Every per-question score of one split (module docstring); JSON-ready (None, never NaN)."""

    min_votes: float
    questions: list[dict]  # per question: n/acc per cut, macro tpr/precision per threshold, answers_with_positives
    answers: list[dict]  # per answer and threshold (answer_detection)
    confusion: dict[str, dict]  # per question, on the galaxies counting at cut 0.5
    mean: dict[str, float] = field(default_factory=dict)  # mean_acc50/mean_acc80 over questions with n > 0
    cuts: tuple[float, ...] = CUTS

    def metrics(self, prefix: str) -> dict[str, float]:
        """Scalar metrics `{prefix}/{question}/acc50` ... and `{prefix}/mean_acc50`; scores without a qualifying
        galaxy are left out (their n is still there, 0)."""
        out: dict[str, float] = {}
        for row in self.questions:
            for cut in self.cuts:
                for key in (f"acc{cut_key(cut)}", f"n{cut_key(cut)}"):
                    if row[key] is not None:
                        out[f"{prefix}/{row['question']}/{key}"] = float(row[key])
        out.update({f"{prefix}/{k}": v for k, v in self.mean.items()})
        return out

    def to_json(self) -> dict:
        return {"min_votes": self.min_votes, "cuts": list(self.cuts), "questions": self.questions,
                "answers": self.answers, "confusion": self.confusion, "mean": self.mean}

    def frame(self, which: str = "questions"):
        """The per-question (or per-answer, which="answers") table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.questions if which == "questions" else self.answers)


def vote_report(counts: np.ndarray, tree: VoteTree, alpha: np.ndarray | None = None,
                fractions: np.ndarray | None = None, min_votes: float = MIN_VOTES, cuts=CUTS,
                thresholds=THRESHOLDS) -> VoteReport:
    """All per-question scores of predicted `alpha` (or expected `fractions`) against true vote `counts`."""
    frac, totals, pred = _fractions(counts, tree, alpha, fractions)
    questions = question_accuracy(frac, totals, pred, tree, cuts, min_votes)
    answers = answer_detection(frac, totals, pred, tree, thresholds, min_votes)
    macro = _macro(answers, tree, thresholds)
    for row in questions:
        row.update(macro[row["question"]])
    mean = {}
    for cut in cuts:
        accs = [r[f"acc{cut_key(cut)}"] for r in questions if r[f"n{cut_key(cut)}"] > 0]
        if accs:
            mean[f"mean_acc{cut_key(cut)}"] = float(np.mean(accs))
    confusion = question_confusion(frac, totals, pred, tree, cuts[0], min_votes)
    return VoteReport(float(min_votes), questions, answers, confusion, mean, tuple(float(c) for c in cuts))
