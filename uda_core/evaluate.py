"""One evaluation of a model on every split: the metrics a sweep logs and selects on.

Names are `{split}/{metric}` (uda_core.evaluation.names). Two parts: the label-free one, always computed (source
metrics, `label_free/...` scores on the unlabelled target/train split, the unknown-class rule's rejection rate),
and the oracle one, only when the data set's target has labels: everything under `oracle/`, the target confusion
matrix, accuracy by magnitude, target stamps coloured by their true class. A real target survey has no labels, so
oracle numbers may be reported, never used to select a model; without labels they are absent, not NaN.

With a vote head (model.vote_head) also the Galaxy Zoo vote scores (uda_core.evaluation.vote_metrics): the
Dirichlet-multinomial NLL on source/val (`source_val/votes/nll`, selectable), per-question accuracies on
source/test (`source_test/votes/...`) and, when the target has votes, on target/test under
`oracle/target_test/votes/...`; their tables and confusion matrices go to `Evaluation.votes`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import ANOMALY_SCORES, RunConfig
from .data.dataset import UdaData
from .data.stamps import Stamps, stretch
from .evaluation import metrics as M
from .evaluation import names as N
from .evaluation.names import OBJECTIVES, is_oracle  # noqa: F401 (re-exported: the tables live in names)
from .evaluation.rejection import mpe_threshold, unknown_fraction
from .evaluation.validators import (UNKNOWN_FRAC_FLOOR, augmentation_agreement, class_ami, combined_score,
                                    combined_unknown_score,
                                    dev_normalised_risk, dev_risk, domain_weights, estimated_h_score,
                                    label_free_scores)
from .evaluation.vote_metrics import vote_report
from .methods import Method
from .models import SOURCE, TARGET, UdaNet, reestimate_bn
from .votes import alpha_from_cosine, dirichlet_multinomial_nll

__all__ = ["Evaluation", "evaluate", "predict", "vote_alpha", "dihedral", "entropy_rho", "deployed_score",
           "deployed_score_name", "rejection_threshold", "OWN_SCORE", "OBJECTIVES", "is_oracle"]


@dataclass
class Evaluation:
    step: int
    metrics: dict[str, float]
    confusion: dict[str, dict] = field(default_factory=dict)  # per split, rows true class, cols predicted + unknown
    acc_by_mag: list[dict] = field(default_factory=list)  # oracle: target shared-class accuracy per r-mag bin
    # Features for pictures (not serialised); "oracle_target_unknown" (only with target labels) colours target
    # stamps by their true labels.
    embedding: dict[str, np.ndarray] = field(default_factory=dict)
    # Vote head only: per split (N.VOTES_SOURCE, and N.VOTES_ORACLE with target votes) the per-question
    # tables and confusion matrices of `VoteReport.to_json()` (uda_core.evaluation.vote_metrics).
    votes: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.metrics.items()}
        out = {"step": self.step, "metrics": clean, "confusion": self.confusion}
        if self.acc_by_mag:  # empty without target labels: no oracle key at all
            out[N.ORACLE_ACC_BY_MAG] = self.acc_by_mag
        if self.votes:  # only with a vote head; the oracle split only with target votes
            out["votes"] = self.votes
        return out


def default_batch_size(device: torch.device) -> int:
    """Inference batch: 64 on CPUs, where bigger batches spill the caches (512 ran 3x slower than 64 here,
    bench/predict.py), 512 on GPUs."""
    return 64 if device.type == "cpu" else 512


@torch.no_grad()
def predict(model: UdaNet, x: torch.Tensor | Stamps, domain: int, batch_size: int | None = None,
            autocast=contextlib.nullcontext) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and normalised features (N, D) as float32 numpy arrays, in eval mode; `x` (a tensor or
    mapped stamps) is read batch by batch and moved to the model's device."""
    device = model.prototypes.device
    batch_size = batch_size or default_batch_size(device)
    was = model.training
    model.eval()
    logits, feats = [], []
    for lo in range(0, len(x), batch_size):
        with autocast():
            lg, f = model(x[lo : lo + batch_size].to(device), domain)
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


OWN_SCORE = "method"  # the deployed rule's score name when the method has its own (Method.anomaly)


def deployed_score(method: Method, cfg: RunConfig, scores: dict[str, np.ndarray], logits: np.ndarray,
                   feats: np.ndarray) -> np.ndarray:
    """The one anomaly score the unknown-class rule uses: the method's own, else `eval.reject_score` (of `scores`,
    from `M.anomaly_scores` on the same outputs)."""
    return method.anomaly(logits, feats) if has_own_rule(method) else scores[cfg.eval.reject_score]


def has_own_rule(method: Method) -> bool:
    """Whether the method scores unknowns itself (Method.anomaly is overridden), as OVANet does."""
    return type(method).anomaly is not Method.anomaly


def deployed_score_name(method: Method, cfg: RunConfig) -> str:
    return OWN_SCORE if has_own_rule(method) else cfg.eval.reject_score


def needs_known_reference(method: Method, cfg: RunConfig) -> bool:
    """Whether the threshold is eval's "mpe", the only rule that reads the emulated known reference."""
    return method.own_threshold() is None and cfg.eval.reject_threshold == "mpe"


def rejection_threshold(method: Method, cfg: RunConfig, num_known: int, target: np.ndarray,
                        known: np.ndarray) -> float:
    """The unknown-class rule's threshold on the deployed score, fitted without target labels: the method's own
    fixed one (OVANet's 0.5), else by `eval.reject_threshold` from the unlabelled target/train scores `target` and
    the scores `known` of held-out source/val stamps emulated as the target survey ("mpe", `known_reference`),
    or rho.

    Shared by evaluation and model export, so a deployed model flags unknowns exactly as its sweep scored it.
    """
    own = method.own_threshold()
    if own is not None:
        return own
    if cfg.eval.reject_threshold == "rho":
        return entropy_rho(method, cfg, num_known)
    if cfg.eval.reject_threshold == "gmm":
        return M.gmm_threshold(target)
    return mpe_threshold(target, known)


@dataclass
class _Outputs:
    """The network's logits and features on every split one evaluation reads (val: source/val, stest: source/test,
    tt: target/train, te: target/test), the source feature bank and the normalised prototypes."""

    src_feats: np.ndarray
    lg_val: np.ndarray
    f_val: np.ndarray
    lg_stest: np.ndarray
    f_stest: np.ndarray
    lg_tt: np.ndarray
    f_tt: np.ndarray
    lg_te: np.ndarray
    f_te: np.ndarray
    protos: np.ndarray
    lg_known: np.ndarray  # source/val emulated as the target survey, through the target branch (known_reference)
    f_known: np.ndarray


@dataclass
class _Rejection:
    """The unknown-class rule, fitted without labels on target/train and applied to both target splits."""

    scores_tt: dict[str, np.ndarray]
    scores_te: dict[str, np.ndarray]
    thresholds: dict[str, float]  # GMM threshold per anomaly score
    rho: float
    deployed_tt: np.ndarray  # the rule's own score (deployed_score)
    deployed_te: np.ndarray
    primary: float  # the threshold on it
    rejected_tt: np.ndarray
    rejected_te: np.ndarray
    deployed_known: np.ndarray  # on the emulated known reference (known_reference)


def _network_outputs(model: UdaNet, data: UdaData, cfg: RunConfig, autocast) -> _Outputs:
    src_train = data["source/train"]
    src_feats_n = min(len(src_train), cfg.eval.max_source_features)
    _, src_feats = predict(model, src_train.x[:src_feats_n], SOURCE, autocast=autocast)
    lg_val, f_val = predict(model, data["source/val"].x, SOURCE, autocast=autocast)
    lg_stest, f_stest = predict(model, data["source/test"].x, SOURCE, autocast=autocast)
    lg_tt, f_tt = predict(model, data["target/train"].x, TARGET, autocast=autocast)
    lg_te, f_te = predict(model, data["target/test"].x, TARGET, autocast=autocast)
    protos = torch.nn.functional.normalize(model.prototypes.detach().float(), dim=1).cpu().numpy()
    lg_known, f_known = known_reference(model, data, autocast)
    return _Outputs(src_feats, lg_val, f_val, lg_stest, f_stest, lg_tt, f_tt, lg_te, f_te, protos, lg_known, f_known)


def known_reference(model: UdaNet, data: UdaData, autocast=contextlib.nullcontext,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of galaxies known to be of the known classes, as the target survey would show them:
    source/val stamps degraded to the target's PSF, pixel scale and sky noise (methods.emulation, full strength,
    fixed noise seed), through the target branch. The "mpe" threshold compares the target's scores with these:
    the source's own scores sit lower than the target's known galaxies by the whole domain gap, which made the
    unknown fraction look several times too large. No target label is used."""
    from .methods.emulation import emulate, survey_gap

    gap, gen = survey_gap(data.manifest), torch.Generator().manual_seed(0)
    val = data["source/val"].x.to("cpu")
    device = model.prototypes.device
    parts = [predict(model, stretch(emulate(val.flux(slice(lo, lo + batch_size)), gap, 1.0, gen), val.softening)
                     .to(device), TARGET, autocast=autocast) for lo in range(0, len(val), batch_size)]
    if not parts:
        return np.zeros((0, model.prototypes.shape[0]), np.float32), np.zeros((0, model.embed.out_features), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _source_metrics(o: _Outputs, data: UdaData) -> dict[str, float]:
    out: dict[str, float] = {}
    y_val = data["source/val"].y.numpy()
    pred_val = o.lg_val.argmax(1)
    out[N.SOURCE_VAL_ACC] = float((pred_val == y_val).mean())
    out[N.SOURCE_VAL_MEAN_CLASS_ACC] = float(np.mean([(pred_val[y_val == c] == c).mean() for c in np.unique(y_val)]))
    y_st = data["source/test"].y.numpy()
    on_shared = np.isin(y_st, data.shared)
    out[N.SOURCE_TEST_ACC_SHARED] = float((o.lg_stest.argmax(1)[on_shared] == y_st[on_shared]).mean())
    return out


def _label_free_metrics(model: UdaNet, o: _Outputs, data: UdaData, cfg: RunConfig, source_val_acc: float,
                        autocast) -> dict[str, float]:
    """Every label-free criterion: target/train predictions, source labels and source features only."""
    ev = cfg.eval
    p_tt = M.softmax(o.lg_tt)
    out = {N.label_free(k): v for k, v in label_free_scores(p_tt, ev.snd_max_samples).items()}
    y_val = data["source/val"].y.numpy()
    weights = domain_weights(o.src_feats, o.f_tt, o.f_val, max_samples=ev.dev_max_samples)
    errors = (o.lg_val.argmax(1) != y_val).astype(np.float64)
    out[N.label_free("dev")] = dev_risk(weights, errors)
    out[N.label_free("devn")] = dev_normalised_risk(weights, errors)
    out[N.label_free("class_ami")] = class_ami(o.f_tt, o.lg_tt.argmax(1), data.num_known, ev.dev_max_samples)
    x_agree = data["target/train"].x[: ev.agreement_max_samples]
    views = [M.softmax(predict(model, dihedral(x_agree, v), TARGET, autocast=autocast)[0]) for v in range(1, 8)]
    out[N.label_free("agreement")] = augmentation_agreement(p_tt[: len(x_agree)], np.stack(views))
    out[N.label_free("combined")] = combined_score(source_val_acc, out[N.label_free("im")],
                                                   out[N.label_free("agreement")], data.num_known)
    return out


def fitted_rule(model: UdaNet, method: Method, data: UdaData, cfg: RunConfig, outputs: dict[str, tuple],
                protos: np.ndarray, bank: np.ndarray, autocast=contextlib.nullcontext
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], float]:
    """The unknown-class rule fitted without target labels, for evaluation and export alike.

    `outputs` maps split names to (logits, features); "tt" (target/train) is the one the threshold is fitted on.
    Returns every anomaly score and the deployed score per split, and the threshold on the deployed score. The
    emulated known reference ("known") is added when the threshold needs it and `outputs` lacks it."""
    outputs = dict(outputs)
    if needs_known_reference(method, cfg) and "known" not in outputs:
        outputs["known"] = known_reference(model, data, autocast)
    scores = {split: M.anomaly_scores(lg, f, protos, bank, model.temperature, k=cfg.eval.knn_k)
              for split, (lg, f) in outputs.items()}
    deployed = {split: deployed_score(method, cfg, scores[split], lg, f) for split, (lg, f) in outputs.items()}
    threshold = rejection_threshold(method, cfg, data.num_known, deployed["tt"], deployed.get("known", np.zeros(0)))
    return scores, deployed, threshold


def _rejection(model: UdaNet, method: Method, o: _Outputs, data: UdaData, cfg: RunConfig, num_known: int,
               autocast) -> _Rejection:
    # The emulated known reference, computed once: the "mpe" threshold reads it, and the estimated H-score too.
    outputs = {"tt": (o.lg_tt, o.f_tt), "te": (o.lg_te, o.f_te), "known": (o.lg_known, o.f_known)}
    scores, deployed, primary = fitted_rule(model, method, data, cfg, outputs, o.protos, o.src_feats, autocast)
    thresholds = {s: M.gmm_threshold(scores["tt"][s]) for s in ANOMALY_SCORES}
    return _Rejection(scores["tt"], scores["te"], thresholds, entropy_rho(method, cfg, num_known), deployed["tt"],
                      deployed["te"], primary, deployed["tt"] > primary, deployed["te"] > primary, deployed["known"])


def _emulated_metrics(o: _Outputs, rule: _Rejection, data: UdaData) -> dict[str, float]:
    """The criteria read on the emulated known reference, source labels only: emulated accuracy (an estimate of
    target accuracy on the known classes that no self-training's own confidence can raise) and the estimated
    H-score of the unknown rule as deployed."""
    y_val = data["source/val"].y.numpy()
    correct = o.lg_known.argmax(1) == y_val
    pi = unknown_fraction(rule.deployed_tt, rule.deployed_known)
    h_inputs = (correct, y_val, rule.deployed_known > rule.primary, rule.rejected_tt.mean(), pi)
    return {N.label_free("emulated_acc"): float(correct.mean()) if len(y_val) else math.nan,
            N.label_free("estimated_h"): estimated_h_score(*h_inputs),
            N.label_free("estimated_h_floored"): estimated_h_score(*h_inputs, min_unknown_frac=UNKNOWN_FRAC_FLOOR)}


def _oracle_metrics(o: _Outputs, rule: _Rejection, data: UdaData, cfg: RunConfig) -> dict[str, float]:
    """Everything under oracle/: target/test (and target/train) labels scored against predictions and the rule."""
    ev, K, shared = cfg.eval, data.num_known, data.shared
    y_te = data["target/test"].y.numpy()
    pred_te = o.lg_te.argmax(1)
    t = N.ORACLE_TARGET_TEST
    out: dict[str, float] = {}
    for k, v in M.open_set_metrics(y_te, pred_te, rule.rejected_te, K, shared).items():
        if not k.startswith("n_"):
            out[f"{t}/{k}"] = v
    # The same scores on the target/train split's labels: an independent labelled sample, so selecting on it and
    # measuring on target/test shows how much regret the test set's own noise causes (bench/selection's floor).
    tt = M.open_set_metrics(data["target/train"].y.numpy(), o.lg_tt.argmax(1), rule.rejected_tt, K, shared)
    out[N.ORACLE_TRAIN_ACC], out[N.ORACLE_TRAIN_H] = tt["acc_shared"], tt["h_score"]
    out[f"{t}/auroc"] = M.auroc_unknown(y_te, rule.deployed_te, K)  # the deployed rule's own score
    for s in ANOMALY_SCORES:
        out[f"{t}/auroc/{s}"] = M.auroc_unknown(y_te, rule.scores_te[s], K)
        out[f"{t}/h_score/{s}_gmm"] = M.open_set_metrics(y_te, pred_te, rule.scores_te[s] > rule.thresholds[s],
                                                         K, shared)["h_score"]
    # Per unknown class (e.g. lenses vs artifacts): which anomalies the deployed score can see at all.
    for u in range(K, len(data.class_names)):
        keep = (y_te < K) | (y_te == u)
        out[f"{t}/auroc_by_class/{data.class_names[u]}"] = M.auroc_unknown(y_te[keep], rule.deployed_te[keep], K)
    out[f"{t}/h_score/entropy_rho"] = M.open_set_metrics(y_te, pred_te, rule.scores_te["entropy"] > rule.rho,
                                                         K, shared)["h_score"]
    clusters = M.cluster_rejected(o.f_te, y_te, rule.rejected_te, ev.unknown_clusters)
    out[f"{t}/unknown_cluster_purity"] = clusters["purity"]
    out[f"{t}/unknown_cluster_nmi"] = clusters["nmi"]
    return out


def _accuracy_by_magnitude(o: _Outputs, data: UdaData) -> list[dict]:
    """Oracle: target/test shared-class accuracy in five r-magnitude quantile bins."""
    y_te = data["target/test"].y.numpy()
    known_mask = np.isin(y_te, data.shared)
    mags = data["target/test"].catalogue["r_mag"].to_numpy()[known_mask]
    finite = mags[np.isfinite(mags)]  # an imported stamp with no positive flux has no magnitude
    edges = np.quantile(finite, np.linspace(0, 1, 6)) if finite.size else np.array([0.0, 1.0])
    return M.accuracy_by_bin(mags, o.lg_te.argmax(1)[known_mask] == y_te[known_mask], edges)


@torch.no_grad()
def vote_alpha(model: UdaNet, f: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Dirichlet concentrations (N, A), float64, of the vote head on normalised features f (N, D); the head itself
    runs in fp32. Shared by evaluation and the exported Classifier."""
    device = model.answer_prototypes.device
    parts = [alpha_from_cosine(model.answer_logits(torch.from_numpy(f[lo : lo + batch_size]).to(device))).cpu()
             for lo in range(0, len(f), batch_size)]
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, model.vote_tree.num_answers))


def _vote_metrics(model: UdaNet, o: _Outputs, data: UdaData) -> tuple[dict[str, float], dict[str, dict]]:
    """The vote head's scores: the Dirichlet-multinomial NLL on source/val (selectable), per-question accuracies
    on source/test and, where the target has votes, under oracle/ on target/test; plus their tables."""
    out: dict[str, float] = {}
    tables: dict[str, dict] = {}
    if model.answer_prototypes is None:
        return out, tables
    tree = model.vote_tree
    val = data["source/val"].votes
    if val is not None and len(val):
        alpha = torch.from_numpy(vote_alpha(model, o.f_val))
        out[N.SOURCE_VAL_VOTE_NLL] = float(dirichlet_multinomial_nll(alpha, val, tree).mean())
    # Target votes (simulated, or imported with --target-votes, with or without class labels) are target labels:
    # scored under oracle/ only. An unlabelled target has none (Split.votes is None).
    parts = [("source/test", o.f_stest, N.SOURCE_TEST_VOTES, N.VOTES_SOURCE),
             ("target/test", o.f_te, N.ORACLE_TARGET_TEST_VOTES, N.VOTES_ORACLE)]
    for split, f, group, key in parts:
        counts = data[split].votes
        if counts is None or not len(counts):
            continue
        rep = vote_report(counts.numpy(), tree, alpha=vote_alpha(model, f))
        out.update(rep.metrics(group))
        tables[key] = rep.to_json()
    return out, tables


def evaluate(model: UdaNet, method: Method, data: UdaData, cfg: RunConfig, step: int,
             autocast=contextlib.nullcontext) -> Evaluation:
    data = data.capped(cfg.eval.split_max_samples)  # a bounded cost per evaluation, whatever the survey's size
    if model.domain_bn:
        # Exact target statistics over the unlabelled target/train split (AdaBN); needs no labels.
        reestimate_bn(model, data["target/train"].x, TARGET, autocast=autocast)
    K, names = data.num_known, data.class_names
    o = _network_outputs(model, data, cfg, autocast)
    out = _source_metrics(o, data)
    out.update(_label_free_metrics(model, o, data, cfg, out[N.SOURCE_VAL_ACC], autocast))
    rule = _rejection(model, method, o, data, cfg, K, autocast)
    out[N.REJECTED_FRAC] = float(rule.rejected_tt.mean())
    out.update(_emulated_metrics(o, rule, data))
    out[N.label_free("combined_unknown")] = combined_unknown_score(
        out[N.SOURCE_VAL_ACC], out[N.label_free("im")], out[N.label_free("agreement")],
        out[N.label_free("estimated_h_floored")], K)
    y_st = data["source/test"].y.numpy()
    conf = {N.CONFUSION_SOURCE: M.confusion(y_st, o.lg_stest.argmax(1), np.zeros(len(y_st), bool), K, names)}
    embedding = {"source": o.f_stest, "target": o.f_te}
    by_mag: list[dict] = []
    if data.has_target_labels:
        y_te = data["target/test"].y.numpy()
        out.update(_oracle_metrics(o, rule, data, cfg))
        conf[N.CONFUSION_ORACLE] = M.confusion(y_te, o.lg_te.argmax(1), rule.rejected_te, K, names)
        by_mag = _accuracy_by_magnitude(o, data)
        embedding[N.EMBEDDING_ORACLE_UNKNOWN] = y_te >= K
    vote_out, vote_tables = _vote_metrics(model, o, data)
    out.update(vote_out)
    return Evaluation(step, out, conf, by_mag, embedding, vote_tables)
