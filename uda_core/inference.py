"""A trained classifier outside its training run: export a checkpoint to portable files, load them, predict.

An exported classifier is a folder of two files, so loading it never unpickles code:
  weights.safetensors  the network's weights, the source feature bank the kNN anomaly score needs and, for a
                       method with its own unknown rule, its heads (`method.*`, e.g. OVANet's one-vs-all classifiers)
  config.json          the run config, bands, stamp size, pixel scales, preprocessing, class names, the
                       unknown-class rule (score and threshold) fitted without target labels exactly as the sweep's
                       evaluation fitted it (the method's own, or eval's on the target/train split and emulated
                       source/val stamps), and the Galaxy Zoo decision tree of the vote head
                       (`vote_tree`, VoteTree.to_dict; null or absent for a model without one)

`Classifier.predict` maps flux stamps of the target survey to per-class probabilities, a predicted class, an
unknown flag, an anomaly score and an uncertainty (plus, with a vote head, Dirichlet concentrations, expected vote
fractions and per-question uncertainties, which `vote_columns` names); `evaluate_classifier` re-scores an exported
classifier on a data set with the same code a trial uses, so a registry can compare models on equal terms.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data.dataset import UdaData, preprocess
from .errors import DataError
from .evaluate import (OWN_SCORE, Evaluation, deployed_score_name, dihedral, evaluate, fitted_rule, has_own_rule,
                       predict, vote_alpha)
from .evaluation import metrics as M
from .methods import Method, get_method
from .models import SOURCE, TARGET, UdaNet, build_model
from .votes import VoteTree, dirichlet_entropy, expected_fractions, tree_from_dict

__all__ = ["Classifier", "export_classifier", "evaluate_classifier", "vote_columns", "WEIGHTS", "CONFIG", "FORMAT"]

log = logging.getLogger(__name__)
WEIGHTS, CONFIG = "weights.safetensors", "config.json"
# Version 3 adds a method's own unknown rule (rejection score "method", its heads as `method.*` tensors); version 2
# the vote head (config "vote_tree"). A model is written with the lowest version that holds it, so older
# code keeps loading it, while a vote model is refused by name there instead of failing on unexpected weights.
FORMAT = {"name": "galaxy-uda-classifier", "version": 3}
_BANK = "source_features"
PIXEL_SCALE_RTOL = 0.02  # resampled cutouts quote 0.262 vs DECam's 0.263: within tolerance


def export_classifier(checkpoint_dir: Path, out: Path, data: UdaData | None = None) -> dict:
    """Write weights.safetensors + config.json for a core checkpoint (step_XXXXXXX or a Tune checkpoint folder)."""
    from safetensors.torch import save_file

    from .train import CHECKPOINT_FILE, autocast_factory, load_data, vote_tree_for

    checkpoint_dir = Path(checkpoint_dir)
    cfg = RunConfig.model_validate_json((checkpoint_dir / "config.json").read_text())
    state = torch.load(checkpoint_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    data = (data or load_data(cfg, progress=False)).capped(cfg.eval.split_max_samples)  # the rows evaluate() read
    tree = vote_tree_for(cfg, data)  # the vote head's answers, so its weights load and are saved
    model = build_model(cfg.model, data.in_channels, data.num_known, tree)
    model.load_state_dict(state["model"])
    method = get_method(cfg.method.name)(cfg.method.parsed(), model, data.num_known, len(data["target/train"]))
    method.load_export_state(state["method"])  # its own heads (OVANet's one-vs-all classifiers)
    # The same inputs and code evaluate() uses: BN statistics as saved right after the evaluation, the first
    # max_source_features source/train stamps as the kNN bank, and evaluation's fitted_rule on target/train.
    autocast = autocast_factory(cfg.train.precision, torch.device("cpu"))
    _, bank = predict(model, data["source/train"].x[: cfg.eval.max_source_features], SOURCE, autocast=autocast)
    protos = torch.nn.functional.normalize(model.prototypes.detach().float(), dim=1).numpy()
    _, _, threshold = fitted_rule(model, method, data, cfg,
                                  {"tt": predict(model, data["target/train"].x, TARGET, autocast=autocast)},
                                  protos, bank, autocast)
    surveys = data.manifest["surveys"]
    meta = {
        "format": {**FORMAT, "version": 3 if has_own_rule(method) else 2 if tree is not None else 1},
        "run_config": json.loads(cfg.model_dump_json()),
        "bands": data.bands, "stamp_px": data.stamp_px, "softening": data.softening,
        "class_names": data.class_names, "num_known": data.num_known,
        "source_survey": surveys["source"]["name"], "target_survey": surveys["target"]["name"],
        "pixel_arcsec": surveys["target"]["pixel_arcsec"],
        "rejection": {"score": deployed_score_name(method, cfg), "threshold": float(threshold),
                      "knn_k": cfg.eval.knn_k},
        "step": int(state["step"]),
        "data_fingerprint": data.manifest.get("fingerprint"),
        "vote_tree": tree.to_dict() if tree is not None else None,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.contiguous() for k, v in state["model"].items()}
    tensors[_BANK] = torch.from_numpy(np.ascontiguousarray(bank))
    tensors.update({f"method.{k}": v.contiguous() for k, v in method.export_state().items()})
    save_file(tensors, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(meta, indent=1))
    return meta


@dataclass
class Classifier:
    meta: dict
    model: UdaNet
    source_features: np.ndarray
    device: torch.device
    autocast: object
    method: Method  # its own unknown score and heads (rejection score "method"); nothing else of training

    @classmethod
    def load(cls, folder: Path | str, device: str = "auto", precision: str | None = None) -> "Classifier":
        """`precision` defaults to the training run's, so predictions match the sweep's own evaluation."""
        from safetensors.torch import load_file

        from .train import autocast_factory, resolve_device

        folder = Path(folder)
        try:
            meta = json.loads((folder / CONFIG).read_text())
            tensors = load_file(str(folder / WEIGHTS))
        except (OSError, ValueError) as e:
            raise DataError(f"{folder}: not an exported classifier ({type(e).__name__}: {e}); "
                            f"it needs {WEIGHTS} and {CONFIG} written by export_classifier") from None
        if meta.get("format", {}).get("name") != FORMAT["name"] or meta["format"].get("version", 0) > FORMAT["version"]:
            raise DataError(f"{folder / CONFIG}: format {meta.get('format')} is not {FORMAT} or older; "
                            "upgrade galaxy-uda-sweeps")
        cfg = RunConfig.model_validate(meta["run_config"])
        # Exports older than the vote head have no "vote_tree": no head, as before.
        tree = tree_from_dict(meta["vote_tree"]) if meta.get("vote_tree") else None
        model = build_model(cfg.model, len(meta["bands"]), meta["num_known"], tree)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        model.eval()
        dev = resolve_device(cfg.train.device if device == "auto" else device)
        model = model.to(dev).to(memory_format=torch.channels_last)
        method = get_method(cfg.method.name)(cfg.method.parsed(), model, meta["num_known"], 0)
        method.load_export_state({k[7:]: v.to(dev) for k, v in tensors.items() if k.startswith("method.")})
        return cls(meta, model, tensors[_BANK].numpy(), dev, autocast_factory(precision or cfg.train.precision, dev),
                   method)

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"][: self.meta["num_known"]]

    @property
    def vote_tree(self) -> VoteTree | None:
        """The Galaxy Zoo decision tree the vote head predicts, or None for a model without one."""
        return self.model.vote_tree

    def check_input(self, bands: list[str], stamp_shape: tuple[int, ...], pixel_arcsec: float | None,
                    where: str) -> None:
        """One clear error when an input cannot be what the model was trained on (before any prediction)."""
        m = self.meta
        want = (len(m["bands"]), m["stamp_px"], m["stamp_px"])
        problems = []
        if list(bands) != list(m["bands"]):
            problems.append(f"bands {list(bands)} but the model needs {m['bands']} in that order")
        if tuple(stamp_shape) != want:
            problems.append(f"stamps of shape {tuple(stamp_shape)} but the model needs {want} (bands, H, W): "
                            f"cut {m['stamp_px']}x{m['stamp_px']} px cutouts")
        if pixel_arcsec is None:
            log.warning("%s does not record its pixel scale; assuming %.3f\"/px (%s)",
                        where, m["pixel_arcsec"], m["target_survey"])
        elif abs(pixel_arcsec / m["pixel_arcsec"] - 1) > PIXEL_SCALE_RTOL:
            problems.append(f"pixel scale {pixel_arcsec:.4f}\"/px but the model was trained on {m['target_survey']} at "
                            f"{m['pixel_arcsec']:.4f}\"/px: resample the cutouts (e.g. Legacy Survey pixscale=)")
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems))

    @torch.no_grad()
    def predict(self, flux: np.ndarray, views: int = 8, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Per-stamp outputs for (N, bands, H, W) nanomaggy stamps of the target survey.

        probs (N, K) come from the plain view, exactly as in evaluation. `uncertainty` is the mutual information
        between the prediction and the view over `views` dihedral transforms (rotations, then flips): 0 when every
        view agrees, up to ln K. With views=1 it is 0.

        With a vote head (`vote_tree`) there are also, for the tree's A answers and Q questions:
          vote_alpha (N, A)          Dirichlet concentrations in (1, 101), averaged over the views
          vote_fraction (N, A)       the expected vote fraction of each answer within its question, from vote_alpha
          vote_entropy (N, Q)        the differential entropy of each question's Dirichlet at vote_alpha: how
                                     unsure the model is of the vote fractions (low when concentrated; may be < 0)
          vote_fraction_std (N, Q)   the spread of the expected fractions over the views: per question, the root
                                     mean square over its answers of each answer's std across views (0 with views=1)
        Ye et al. (2024) take the spread over 25 MC-dropout passes; our networks have no dropout, so the dihedral
        views, equally valid images of the same galaxy, play that role.
        """
        if views not in (1, 2, 4, 8):
            raise ValueError("views must be 1, 2, 4 or 8 (dihedral transforms)")
        flux = np.asarray(flux, dtype=np.float32)
        if flux.ndim != 4 or flux.shape[1:] != (len(self.meta["bands"]), self.meta["stamp_px"], self.meta["stamp_px"]):
            self.check_input(self.meta["bands"], flux.shape[1:], self.meta["pixel_arcsec"], "input array")
        x = preprocess(flux, self.meta["softening"]).to(self.device).contiguous(memory_format=torch.channels_last)
        per_view = []
        for v in range(views):
            per_view.append(predict(self.model, dihedral(x, v), TARGET, batch_size, self.autocast))
        logits, feats = per_view[0]
        p_views = np.stack([M.softmax(lg) for lg, _ in per_view])  # (V, N, K)
        probs = p_views[0]
        rule = self.meta["rejection"]
        protos = torch.nn.functional.normalize(self.model.prototypes.detach().float(), dim=1).cpu().numpy()
        if rule["score"] == OWN_SCORE:
            score = self.method.anomaly(logits, feats)
        else:
            score = M.anomaly_scores(logits, feats, protos, self.source_features,
                                     self.model.temperature, k=rule["knn_k"])[rule["score"]]
        mean_p = p_views.mean(0)
        mutual_info = M.entropy(mean_p) - np.mean([M.entropy(p) for p in p_views], axis=0)
        pred = probs.argmax(1)
        out = {
            "probs": probs.astype(np.float32),
            "predicted": pred,
            "unknown": score > rule["threshold"],
            "anomaly_score": score.astype(np.float32),
            "entropy": M.entropy(probs).astype(np.float32),
            "uncertainty": np.maximum(mutual_info, 0).astype(np.float32),
            "predicted_prob_std": p_views[:, np.arange(len(pred)), pred].std(0).astype(np.float32),
        }
        tree = self.vote_tree
        if tree is not None:
            a_views = np.stack([vote_alpha(self.model, f) for _, f in per_view])  # (V, N, A), float64
            alpha = a_views.mean(0)
            frac_views = np.stack([expected_fractions(a, tree) for a in a_views])  # (V, N, A)
            var = frac_views.var(0)
            out.update({
                "vote_alpha": alpha.astype(np.float32),
                "vote_fraction": expected_fractions(alpha, tree).astype(np.float32),
                "vote_entropy": dirichlet_entropy(alpha, tree).astype(np.float32),
                "vote_fraction_std": np.stack([np.sqrt(var[:, s].mean(1)) for s in tree.slices], 1).astype(np.float32),
            })
        return out


def vote_columns(out: dict[str, np.ndarray], tree: VoteTree | None) -> dict[str, np.ndarray]:
    """The vote outputs of `Classifier.predict` as named columns (empty without a vote head), in this order:
    `{question}_{answer}_alpha` and `{question}_{answer}_fraction` per answer (the catalogue's answer names,
    tree.columns), then `{question}_entropy` and `{question}_fraction_std` per question."""
    if tree is None:
        return {}
    cols = {}
    for i, c in enumerate(tree.columns):
        cols[f"{c}_alpha"] = out["vote_alpha"][:, i]
    for i, c in enumerate(tree.columns):
        cols[f"{c}_fraction"] = out["vote_fraction"][:, i]
    for j, q in enumerate(tree.questions):
        cols[f"{q.name}_entropy"] = out["vote_entropy"][:, j]
    for j, q in enumerate(tree.questions):
        cols[f"{q.name}_fraction_std"] = out["vote_fraction_std"][:, j]
    return cols


def evaluate_classifier(folder: Path | str, data: UdaData, scoring: RunConfig) -> Evaluation:
    """Re-score an exported classifier on `data` with the trial's evaluation code and `scoring`'s eval settings.

    The model keeps its own method (its rho) but the data and evaluation settings are the caller's, so two
    classifiers scored by the same call are compared on equal terms.
    """
    clf = Classifier.load(folder, device="cpu")
    meta, model = clf.meta, clf.model
    if (list(meta["bands"]) != list(data.bands) or meta["stamp_px"] != data.stamp_px
            or meta["class_names"] != data.class_names):
        raise DataError(f"{folder}: trained on bands {meta['bands']}, {meta['stamp_px']} px, "
                        f"classes {meta['class_names']}; "
                        f"the data set {data.folder} has {data.bands}, {data.stamp_px} px, "
                        f"{data.class_names}: not comparable")
    own = RunConfig.model_validate(meta["run_config"])
    cfg = own.model_copy(update={"eval": scoring.eval, "data": scoring.data})
    return evaluate(model, clf.method, data, cfg, meta["step"])
