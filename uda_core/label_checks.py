"""What a run may train on, given its data set's manifest: checked before any training, and without torch, so
that `uda-sweep train` and `uda-sweep run` refuse such a run in a second."""

from __future__ import annotations

from .config import RunConfig
from .errors import ConfigError
from .methods.params import PARAMS, TRAINS_ON_TARGET_LABELS

__all__ = ["check_target_label_use"]


def check_target_label_use(cfg: RunConfig, manifest: dict, where: str, prefix: str = "") -> None:
    """Refuse, before any training, a run that trains on labels its data set cannot give: a vote head without
    source votes, or target labels where the target is unlabelled (manifest target_labels "none") or its labels
    are for evaluation only ("eval").

    `prefix` is where the run config sits in the file being checked (a sweep's "run."), so the key is named as
    the user wrote it.
    """
    votes = manifest.get("votes") or {}
    if cfg.model.vote_head and "source" not in votes.get("domains", []):
        raise ConfigError(f"{prefix}model.vote_head: {where} has no source vote counts (manifest 'votes'); set "
                          "vote_head: false, or import the votes with data import --source-votes")
    labels = manifest.get("target_labels", "simulated")
    if labels == "simulated":
        return
    why = (f"the target of {where} has no labels (manifest target_labels: 'none')" if labels == "none" else
           f"the target labels of {where} are for evaluation only (manifest target_labels: 'eval')")
    if cfg.method.name in TRAINS_ON_TARGET_LABELS:
        label_free = sorted(set(PARAMS) - TRAINS_ON_TARGET_LABELS)
        raise ConfigError(f"{prefix}method.name: {cfg.method.name!r} trains on target labels, but {why}; "
                          f"choose a method that needs none: {label_free}")
    n = cfg.data.few_shot_per_class
    if n > 0:
        raise ConfigError(f"{prefix}data.few_shot_per_class: {n} labelled target stamps per class need target labels "
                          f"for training, but {why}; set it to 0")
