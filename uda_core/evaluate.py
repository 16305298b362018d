"""One evaluation of a model on every split: the metrics a sweep logs and selects on.

Names are `{split}/{metric}`. Anything computed with target labels is under `oracle/`, because a real target
survey has no labels: such numbers may be reported, never used to select a model. Label-free scores
(`label_free/...`) use only the unlabelled target/train split.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ANOMALY_SCORES, RunConfig
from .data.dataset import UdaData
from .evaluation import metrics as M
from .evaluation.validators import (HIGHER_IS_BETTER, augmentation_agreement, combined_score, dev_risk,
                                    domain_weights, label_free_scores)
from .methods import Method
from .models import SOURCE, TARGET, UdaNet, reestimate_bn

__all__ = ["Evaluation", "evaluate", "predict", "dihedral", "entropy_rho", "rejection_threshold", "OBJECTIVES", "is_oracle"]

# Metrics a sweep may optimise, with the direction that is better. Those under oracle/ need target labels: a real
# survey has none, so they serve benchmarks on simulated pairs and must be marked wherever they are used.
OBJECTIVES: dict[str, str] = {
    "source_val/acc": "max",
    "source_val/mean_class_acc": "max",
    "source_test/acc_shared": "max",
    **{f"label_free/{k}": "max" if up else "min" for k, up in HIGHER_IS_BETTER.items()},
    **{f"oracle/target_test/{k}": "max" for k in ("acc_shared", "mean_class_acc_shared", "acc_with_rejection",
                                                  "known_acc", "unknown_recall", "h_score",
                                                  "unknown_cluster_purity", "unknown_cluster_nmi")},
    **{f"oracle/target_test/auroc/{s}": "max" for s in ANOMALY_SCORES},
}


def is_oracle(metric: str) -> bool:
    return metric.startswith("oracle/")


@dataclass
class Evaluation:
    step: int
    metrics: dict[str, float]
    confusion: dict[str, dict] = field(default_factory=dict)  # per split, rows true class, cols predicted + unknown
    acc_by_mag: list[dict] = field(default_factory=list)  # oracle: target shared-class accuracy per r-mag bin
    # Features for pictures (not serialised); "oracle_target_unknown" colours target stamps by their true labels.
    embedding: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.metrics.items()}
        return {"step": self.step, "metrics": clean, "confusion": self.confusion, "oracle/target_test/acc_by_mag": self.acc_by_mag}


def default_batch_size(device: torch.device) -> int:
    """Inference batch: 64 on CPUs, where bigger batches spill the caches (512 ran 3x slower than 64 here,
    bench/predict.py), 512 on GPUs."""
    return 64 if device.type == "cpu" else 512


@torch.no_grad()
def predict(model: UdaNet, x: torch.Tensor, domain: int, batch_size: int | None = None, autocast=contextlib.nullcontext) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and normalised features (N, D) as float32 numpy arrays, in eval mode."""
    batch_size = batch_size or default_batch_size(x.device)
    was = model.training
    model.eval()
    logits, feats = [], []
    for lo in range(0, len(x), batch_size):
        with autocast():
            lg, f = model(x[lo : lo + batch_size], domain)
        logits.append(lg.float().cpu())
        feats.append(f.float().cpu())
    model.train(was)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def dihedral(x: torch.Tensor, v: int) -> torch.Tensor:
    """View v in 0..7 of the dihedral group on (N, C, H, W) stamps: v % 4 quarter turns, then a flip if v >= 4.
    Galaxies have no preferred orientation, so every view is an equally valid image of the same galaxy."""
    xv = torch.rot90(x, v % 4, dims=(2, 3))
    return torch.flip(xv, dims=(3,)) if v >= 4 else xv


def entropy_rho(method: Method, cfg: RunConfig, num_known: int) -> float:
    """The entropy threshold rho: the method's own (DANCE) or rho_frac * ln K."""
    rho = method.rho()
    return rho if rho is not None else cfg.eval.rho_frac * math.log(num_known)


def rejection_threshold(gmm_thresholds: dict[str, float], method: Method, cfg: RunConfig, num_known: int) -> float:
    """The unknown-class rule's threshold on `eval.reject_score`: rho, or the GMM threshold fitted on the
    unlabelled target/train scores (`gmm_thresholds[score]`, from `M.gmm_threshold`).

    Shared by evaluation and model export, so a deployed model flags unknowns exactly as its sweep scored it.
    """
    if cfg.eval.reject_threshold == "rho":
        return entropy_rho(method, cfg, num_known)
    return gmm_thresholds[cfg.eval.reject_score]


def evaluate(model: UdaNet, method: Method, data: UdaData, cfg: RunConfig, step: int, autocast=contextlib.nullcontext) -> Evaluation:
    ev = cfg.eval
    K, shared = data.num_known, data.shared
    if model.domain_bn:
        # Exact target statistics over the unlabelled target/train split (AdaBN); needs no labels.
        reestimate_bn(model, data["target/train"].x, TARGET, autocast=autocast)

    src_train = data["source/train"]
    src_feats_n = min(len(src_train), ev.max_source_features)
    _, src_feats = predict(model, src_train.x[:src_feats_n], SOURCE, autocast=autocast)
    lg_val, f_val = predict(model, data["source/val"].x, SOURCE, autocast=autocast)
    lg_stest, f_stest = predict(model, data["source/test"].x, SOURCE, autocast=autocast)
    lg_tt, f_tt = predict(model, data["target/train"].x, TARGET, autocast=autocast)
    lg_te, f_te = predict(model, data["target/test"].x, TARGET, autocast=autocast)
    protos = torch.nn.functional.normalize(model.prototypes.detach().float(), dim=1).cpu().numpy()

    out: dict[str, float] = {}
    y_val = data["source/val"].y.numpy()
    pred_val = lg_val.argmax(1)
    out["source_val/acc"] = float((pred_val == y_val).mean())
    out["source_val/mean_class_acc"] = float(np.mean([(pred_val[y_val == c] == c).mean() for c in np.unique(y_val)]))
    y_st = data["source/test"].y.numpy()
    on_shared = np.isin(y_st, shared)
    out["source_test/acc_shared"] = float((lg_stest.argmax(1)[on_shared] == y_st[on_shared]).mean())

    p_tt = M.softmax(lg_tt)
    out.update({f"label_free/{k}": v for k, v in label_free_scores(p_tt, ev.snd_max_samples).items()})
    weights = domain_weights(src_feats, f_tt, f_val, max_samples=ev.dev_max_samples)
    out["label_free/dev"] = dev_risk(weights, (pred_val != y_val).astype(np.float64))
    x_agree = data["target/train"].x[: ev.agreement_max_samples]
    views = [M.softmax(predict(model, dihedral(x_agree, v), TARGET, autocast=autocast)[0]) for v in range(1, 8)]
    out["label_free/agreement"] = augmentation_agreement(p_tt[: len(x_agree)], np.stack(views))
    out["label_free/combined"] = combined_score(out["source_val/acc"], out["label_free/im"], out["label_free/agreement"], K)

    temp = model.temperature
    scores_tt = M.anomaly_scores(lg_tt, f_tt, protos, src_feats, temp, k=ev.knn_k)
    scores_te = M.anomaly_scores(lg_te, f_te, protos, src_feats, temp, k=ev.knn_k)
    thresholds = {s: M.gmm_threshold(scores_tt[s]) for s in ANOMALY_SCORES}
    rho = entropy_rho(method, cfg, K)
    primary_thr = rejection_threshold(thresholds, method, cfg, K)
    rejected_tt = scores_tt[ev.reject_score] > primary_thr
    out["label_free/rejected_frac"] = float(rejected_tt.mean())

    y_te = data["target/test"].y.numpy()
    pred_te = lg_te.argmax(1)
    rejected = scores_te[ev.reject_score] > primary_thr
    o = "oracle/target_test"
    for k, v in M.open_set_metrics(y_te, pred_te, rejected, K, shared).items():
        if not k.startswith("n_"):
            out[f"{o}/{k}"] = v
    # The same scores on the target/train split's labels: an independent labelled sample, so selecting on it and
    # measuring on target/test shows how much regret the test set's own noise causes (bench/selection's floor).
    tt = M.open_set_metrics(data["target/train"].y.numpy(), lg_tt.argmax(1), rejected_tt, K, shared)
    out["oracle/target_train/acc_shared"], out["oracle/target_train/h_score"] = tt["acc_shared"], tt["h_score"]
    for s in ANOMALY_SCORES:
        out[f"{o}/auroc/{s}"] = M.auroc_unknown(y_te, scores_te[s], K)
        out[f"{o}/h_score/{s}_gmm"] = M.open_set_metrics(y_te, pred_te, scores_te[s] > thresholds[s], K, shared)["h_score"]
    # Per unknown class (e.g. lenses vs artifacts): which anomalies the primary score can see at all.
    for u in range(K, len(data.class_names)):
        keep = (y_te < K) | (y_te == u)
        out[f"{o}/auroc_by_class/{data.class_names[u]}"] = M.auroc_unknown(y_te[keep], scores_te[ev.reject_score][keep], K)
    out[f"{o}/h_score/entropy_rho"] = M.open_set_metrics(y_te, pred_te, scores_te["entropy"] > rho, K, shared)["h_score"]
    clusters = M.cluster_rejected(f_te, y_te, rejected, ev.unknown_clusters)
    out[f"{o}/unknown_cluster_purity"] = clusters["purity"]
    out[f"{o}/unknown_cluster_nmi"] = clusters["nmi"]

    cat = data["target/test"].catalogue
    known_mask = np.isin(y_te, shared)
    mags = cat["r_mag"].to_numpy()[known_mask]
    edges = np.quantile(mags, np.linspace(0, 1, 6)) if known_mask.any() else np.array([0.0, 1.0])
    by_mag = M.accuracy_by_bin(mags, pred_te[known_mask] == y_te[known_mask], edges)

    names = data.class_names
    conf = {
        "source_test": M.confusion(y_st, lg_stest.argmax(1), np.zeros(len(y_st), bool), K, names),
        "oracle_target_test": M.confusion(y_te, pred_te, rejected, K, names),
    }
    embedding = {"source": f_stest, "target": f_te, "oracle_target_unknown": y_te >= K}
    return Evaluation(step, out, conf, by_mag, embedding)
