"""Metric names shared by evaluation, selection and the sweep layer, so none of them spells one differently.

An evaluation's metrics are `{group}/{name}`. Anything computed with target labels lives under `oracle/`: a real
target survey has no labels, so such numbers exist only for simulated (or evaluation-labelled) pairs and may be
reported, never used to select a model. Everything else needs no target label.

It also says which metrics a sweep may optimise and in which direction (OBJECTIVES). It imports nothing heavy, so a
sweep file is checked without torch or scikit-learn.
"""

from __future__ import annotations

from ..config import ANOMALY_SCORES

__all__ = ["ORACLE_PREFIX", "LABEL_FREE_PREFIX", "SELECTABLE_PREFIXES", "SOURCE_VAL_ACC", "SOURCE_VAL_MEAN_CLASS_ACC",
           "SOURCE_TEST_ACC_SHARED", "REJECTED_FRAC", "ORACLE_TARGET_TEST", "ORACLE_ACC", "ORACLE_H",
           "ORACLE_TRAIN_ACC", "ORACLE_TRAIN_H", "ORACLE_ACC_BY_MAG", "CONFUSION_SOURCE", "CONFUSION_ORACLE",
           "EMBEDDING_ORACLE_UNKNOWN", "SOURCE_TEST_VOTES", "ORACLE_TARGET_TEST_VOTES", "SOURCE_VAL_VOTE_NLL",
           "VOTES_SOURCE", "VOTES_ORACLE", "vote_metric", "label_free", "is_oracle", "LABEL_FREE_HIGHER_IS_BETTER",
           "OBJECTIVES"]

ORACLE_PREFIX = "oracle/"
LABEL_FREE_PREFIX = "label_free/"
# Groups a model may be selected by (no target label in them).
SELECTABLE_PREFIXES = ("source_val/", "source_test/", LABEL_FREE_PREFIX)

SOURCE_VAL_ACC = "source_val/acc"
SOURCE_VAL_MEAN_CLASS_ACC = "source_val/mean_class_acc"
SOURCE_TEST_ACC_SHARED = "source_test/acc_shared"
REJECTED_FRAC = "label_free/rejected_frac"  # share of target/train stamps the unknown-class rule rejects

ORACLE_TARGET_TEST = "oracle/target_test"
ORACLE_ACC = f"{ORACLE_TARGET_TEST}/acc_shared"
ORACLE_H = f"{ORACLE_TARGET_TEST}/h_score"
ORACLE_TRAIN_ACC = "oracle/target_train/acc_shared"
ORACLE_TRAIN_H = "oracle/target_train/h_score"
ORACLE_ACC_BY_MAG = f"{ORACLE_TARGET_TEST}/acc_by_mag"  # key of Evaluation.to_json()

# Keys of Evaluation.confusion and Evaluation.embedding.
CONFUSION_SOURCE = "source_test"
CONFUSION_ORACLE = "oracle_target_test"
EMBEDDING_ORACLE_UNKNOWN = "oracle_target_unknown"  # target/test stamps coloured by their true (unknown) class

# Galaxy Zoo vote scores (model.vote_head; uda_core.evaluation.vote_metrics): `{group}/{question}/acc50`, `acc80`,
# `n50`, `n80` and `{group}/mean_acc50`, `mean_acc80`. Target votes are labels, so the target's are oracle.
SOURCE_TEST_VOTES = "source_test/votes"
ORACLE_TARGET_TEST_VOTES = f"{ORACLE_TARGET_TEST}/votes"
SOURCE_VAL_VOTE_NLL = "source_val/votes/nll"  # mean Dirichlet-multinomial NLL per galaxy: selectable, lower is better
# Keys of Evaluation.votes (per-question tables and confusion matrices), as those of Evaluation.confusion.
VOTES_SOURCE = CONFUSION_SOURCE
VOTES_ORACLE = CONFUSION_ORACLE


def vote_metric(group: str, name: str, question: str | None = None) -> str:
    """`vote_metric(SOURCE_TEST_VOTES, "acc50", "bar")` -> "source_test/votes/bar/acc50"; no question: a mean."""
    return f"{group}/{question}/{name}" if question else f"{group}/{name}"


def label_free(name: str) -> str:
    return f"{LABEL_FREE_PREFIX}{name}"


def is_oracle(metric: str) -> bool:
    return metric.startswith(ORACLE_PREFIX)


# The label-free selection criteria (`label_free/<name>`) and whether higher is better; their functions are in
# uda_core.evaluation.validators (LABEL_FREE_CRITERIA), which takes the directions from here.
LABEL_FREE_HIGHER_IS_BETTER: dict[str, bool] = {
    "snd": True, "entropy": False, "im": True, "dev": False, "agreement": True, "combined": True,
    "bnm": True, "class_ami": True, "devn": False, "emulated_acc": True, "estimated_h": True,
    "estimated_h_floored": True, "combined_unknown": True,
}

# Metrics a sweep may optimise, with the direction that is better. Those under oracle/ need target labels: a real
# survey has none, so they serve benchmarks on simulated pairs and must be marked wherever they are used.
OBJECTIVES: dict[str, str] = {
    SOURCE_VAL_ACC: "max",
    SOURCE_VAL_MEAN_CLASS_ACC: "max",
    SOURCE_TEST_ACC_SHARED: "max",
    **{label_free(name): "max" if higher else "min" for name, higher in LABEL_FREE_HIGHER_IS_BETTER.items()},
    **{f"{ORACLE_TARGET_TEST}/{k}": "max" for k in ("acc_shared", "mean_class_acc_shared", "acc_with_rejection",
                                                    "known_acc", "unknown_recall", "h_score",
                                                    "unknown_cluster_purity", "unknown_cluster_nmi")},
    f"{ORACLE_TARGET_TEST}/known_rejected": "min",  # known galaxies the unknown-class rule flags
    f"{ORACLE_TARGET_TEST}/auroc": "max",  # the deployed rule's own score (the method's, else eval.reject_score)
    **{f"{ORACLE_TARGET_TEST}/auroc/{s}": "max" for s in ANOMALY_SCORES},
    # Vote head (model.vote_head) only: absent from runs without one.
    SOURCE_VAL_VOTE_NLL: "min",
    **{vote_metric(g, f"mean_acc{c}"): "max" for g in (SOURCE_TEST_VOTES, ORACLE_TARGET_TEST_VOTES) for c in (50, 80)},
}
