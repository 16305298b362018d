"""The method seam (own heads, loss names, views, source transforms, own unknown rule, exported state) and the
methods built on it: survey emulation, OVANet, the open-set oracle; and the label-free MPE rejection threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uda_core.data.dataset import load_dataset
from uda_core.evaluation.metrics import gmm_threshold
from uda_core.evaluation.rejection import mpe_threshold, unknown_fraction
from uda_core.methods import METHODS, PARAMS, Method
from uda_core.methods.base import MethodError
from uda_core.methods.emulation import SurveyGap, emulate, survey_gap
from uda_core.methods.ovanet import ova_entropy, ova_probs, ova_source_loss
from uda_core.models import build_model
from uda_core.train import CHECKPOINT_FILE, _labelled_target_rows, train


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_dataset(tiny_folder)


# --- the contract -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_weights_only_losses_it_names(name):
    from uda_core.config import build_config

    cfg = build_config({"method": {"name": name}, "model": {"width": 4, "depth": 2, "feature_dim": 8}})
    model = build_model(cfg.model, 3, 6)
    METHODS[name](cfg.method.parsed(), model, 6, 10).check_weights()


def test_a_weight_for_a_missing_loss_and_a_loss_without_weight_are_errors(tiny_config, tiny, tmp_path, monkeypatch):
    class Misspelt(Method):
        name = "misspelt"

        def weights(self):
            return {**super().weights(), "source_c": 1.0}

    class Unweighted(Method):
        name = "unweighted"

        def losses(self, batch):
            return {**super().losses(batch), "extra": batch.xs.mean()}

    for name, cls in (("misspelt", Misspelt), ("unweighted", Unweighted)):
        monkeypatch.setitem(METHODS, name, cls)
        monkeypatch.setitem(PARAMS, name, cls.Params)
    cfg = tiny_config("source_only")
    cfg.method.name = "misspelt"
    with pytest.raises(MethodError, match="source_c"):
        train(cfg, lambda *a: None, tmp_path / "a", data=tiny)

    cfg.method.name = "unweighted"
    with pytest.raises(MethodError, match="extra"):
        train(cfg, lambda *a: None, tmp_path / "b", data=tiny)


def test_views_heads_and_source_transform_reach_the_method(tiny_config, tiny, tmp_path, monkeypatch):
    seen = {}

    class Probe(Method):
        name = "probe"
        uses_target = True
        views = 3
        transforms_source = True

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.heads["probe"] = torch.nn.Linear(self.model.embed.out_features, 1)

        def attach(self, data):
            seen["attached"] = data.folder

        def source_flux(self, flux, gen):
            seen["flux_max"] = float(flux.abs().max())
            return flux * 0  # every source stamp blank: visible in the batch

        def losses(self, batch):
            seen["views"] = [v.shape for v in batch.xt_views]
            seen["distinct"] = not torch.equal(batch.xt_views[0], batch.xt_views[1])
            seen["xs_zero"] = bool((batch.xs == 0).all())
            out = super().losses(batch)
            out["source_ce"] = out["source_ce"] + self.heads["probe"](self.model(batch.xt)[1]).pow(2).mean()
            return out

    monkeypatch.setitem(METHODS, "probe", Probe)
    monkeypatch.setitem(PARAMS, "probe", Probe.Params)
    cfg = tiny_config("source_only")
    cfg.method.name = "probe"
    train(cfg, lambda *a: None, tmp_path, data=tiny)
    assert seen["attached"] == tiny.folder
    assert seen["flux_max"] > 0 and seen["xs_zero"]  # fluxes went in before the stretch, the result came out
    assert seen["views"] == [(16, *tiny["target/train"].x.shape[1:])] * 2 and seen["distinct"]
    state = torch.load(tmp_path / "checkpoints/step_0000004" / CHECKPOINT_FILE, weights_only=True)
    assert "heads.probe.weight" in state["method"]
    # The head was optimised with the network: it moved from its initial value and the optimiser holds its state.
    network = build_model(cfg.model, tiny.in_channels, tiny.num_known)
    assert len(state["optimizer"]["state"]) == len(list(network.parameters())) + 2


# --- survey emulation ---------------------------------------------------------------------------------------------

GAP = SurveyGap(src_pixel=0.262, tgt_pixel=0.396, src_fwhm=(1.2,), tgt_fwhm=(1.4,), src_sky=(0.01,), tgt_sky=(0.05,))


def test_emulated_noise_reaches_the_target_sky_and_strength_zero_is_identity():
    g = torch.Generator().manual_seed(0)
    sky = torch.randn(64, 1, 48, 48, generator=g) * GAP.src_sky[0]
    out = emulate(sky, GAP, 1.0, g)
    inner = out[:, :, 12:36, 12:36]  # the resampled source area, away from the padding's edge
    assert inner.std().item() == pytest.approx(GAP.tgt_sky[0], rel=0.05)
    assert out[:, :, :4].std().item() == pytest.approx(GAP.tgt_sky[0], rel=0.05)  # the padding: target sky alone
    assert torch.equal(emulate(sky, GAP, 0.0, g), sky)


def test_emulation_blurs_to_the_target_psf_shrinks_by_the_pixel_ratio_and_keeps_the_flux():
    g = torch.Generator().manual_seed(0)
    point = torch.zeros(1, 1, 64, 64)
    point[0, 0, 32, 32] = 100.0
    quiet = SurveyGap(0.262, 0.262, (0.0,), (1.4,), (0.0,), (0.0,))  # same pixels, no noise: PSF alone
    img = emulate(point, quiet, 1.0, g)[0, 0]
    row = img[32] / img[32].max()
    fwhm_px = int((row >= 0.5).sum())
    assert fwhm_px * 0.262 == pytest.approx(1.4, abs=0.3)
    assert img.sum().item() == pytest.approx(100.0, rel=1e-3)
    shrink = SurveyGap(0.2, 0.4, None, None, (0.0,), (0.0,))  # pixels twice as coarse: the image halves
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((yy - 31.5) ** 2 + (xx - 31.5) ** 2) / (2 * 6.0**2))[None, None]
    small = emulate(blob, shrink, 1.0, g)[0, 0]

    def rms_radius(img):
        return math.sqrt(float((img * ((yy - 31.5) ** 2 + (xx - 31.5) ** 2)).sum() / img.sum()))

    assert rms_radius(small) / rms_radius(blob[0, 0]) == pytest.approx(0.5, abs=0.03)
    assert small.sum().item() == pytest.approx(blob.sum().item(), rel=1e-3)
    # DECaLS -> SDSS pixels (48 -> 32 px): a point source keeps its flux wherever it falls within a pixel.
    decals_sdss = SurveyGap(0.262, 0.396, None, None, (0.0,), (0.0,))
    sums = []
    for y, x in ((24, 24), (24, 25), (25, 25)):
        point = torch.zeros(1, 1, 48, 48)
        point[0, 0, y, x] = 1.0
        sums.append(emulate(point, decals_sdss, 1.0, g).sum().item())
    assert sums == pytest.approx([1.0] * 3, rel=0.02)


def test_survey_gap_comes_from_the_manifest(tiny):
    gap = survey_gap(tiny.manifest)
    s, t = tiny.manifest["surveys"]["source"], tiny.manifest["surveys"]["target"]
    assert gap.src_pixel == s["pixel_arcsec"] and gap.tgt_sky == tuple(t["sky_sigma_nmgy"])
    assert gap.tgt_fwhm == tuple(t["definition"]["fwhm_arcsec"])


# --- OVANet ---------------------------------------------------------------------------------------------------------

def test_ova_losses_match_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5, 8, generator=g), torch.tensor([0, 3, 1, 2, 3])
    p = ova_probs(logits)
    assert torch.allclose(p.sum(1), torch.ones(5, 4))
    pos, neg, ent = [], [], []
    for i in range(5):
        pos.append(-math.log(p[i, 1, y[i]] + 1e-8))
        neg.append(max(-math.log(p[i, 0, k] + 1e-8) for k in range(4) if k != y[i]))
        ent.append(np.mean([-sum(p[i, j, k] * math.log(p[i, j, k] + 1e-8) for j in range(2)) for k in range(4)]))
    assert ova_source_loss(p, y).item() == pytest.approx(0.5 * (np.mean(pos) + np.mean(neg)), rel=1e-5)
    assert ova_entropy(p).item() == pytest.approx(np.mean(ent), rel=1e-5)


def test_ovanet_rule_is_deployed_and_exported(tiny_config, tiny, tmp_path):
    from uda_core.inference import Classifier, export_classifier

    reports = []
    cfg = tiny_config("ovanet")
    cfg.method.params = {"emulation_strength": 1.0}  # OVANet on emulated source stamps: both seams at once
    last = train(cfg, lambda ev, ck: reports.append(ck), tmp_path, data=tiny)
    assert {"train/ova", "train/ova_entropy"} <= set(last.metrics)
    assert 0.0 <= last.metrics["oracle/target_test/auroc"] <= 1.0
    meta = export_classifier(reports[-1], tmp_path / "clf", tiny)
    assert meta["rejection"]["score"] == "method" and meta["rejection"]["threshold"] == 0.5
    assert meta["format"]["version"] == 3  # code that cannot read a method's own rule refuses the folder by name
    clf = Classifier.load(tmp_path / "clf", device="cpu")
    flux = tiny.capped(cfg.eval.split_max_samples)["target/train"].x.flux(slice(None)).numpy()
    out = clf.predict(flux, views=1)
    # The deployed flag is the exported head's "not the predicted class" probability above 0.5, as in the trial.
    assert np.array_equal(out["unknown"], out["anomaly_score"] > 0.5)
    assert out["unknown"].mean() == pytest.approx(last.metrics["label_free/rejected_frac"], abs=1e-6)


def test_open_set_oracle_trains_on_unknown_labels(tiny_config, tiny, tmp_path):
    rows = _labelled_target_rows(tiny_config("open_set_oracle"), tiny, "all+unknown")
    y = tiny["target/train"].y[rows]
    assert (y >= tiny.num_known).any() and len(rows) == int(torch.isin(
        tiny["target/train"].y, torch.tensor(tiny.shared)).sum() + (tiny["target/train"].y >= tiny.num_known).sum())
    last = train(tiny_config("open_set_oracle"), lambda *a: None, tmp_path, data=tiny)
    assert math.isfinite(last.metrics["train/target_ova"])


# --- contrastive ---------------------------------------------------------------------------------------------------

def test_nt_xent_matches_a_naive_loop():
    from uda_core.methods.contrastive import nt_xent

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    terms = []
    for i in range(8):
        pos = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        terms.append(-(z[i] @ z[pos] / 0.2) + torch.logsumexp(torch.stack([z[i] @ z[j] / 0.2 for j in others]), 0))
    assert nt_xent(a, b, 0.2).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_contrastive_trains_on_two_target_views_and_resumes_bit_for_bit(tiny_config, tiny, tmp_path):
    cfg = tiny_config("contrastive")
    last = train(cfg, lambda *a: None, tmp_path / "full", data=tiny)
    assert math.isfinite(last.metrics["train/contrastive"])
    train(cfg, lambda *a: None, tmp_path / "resumed", resume_from=tmp_path / "full/checkpoints/step_0000002", data=tiny)
    full, resumed = (torch.load(tmp_path / f"{r}/checkpoints/step_0000004" / CHECKPOINT_FILE, weights_only=True)
                     for r in ("full", "resumed"))
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert torch.equal(full["method"]["heads.projection.0.weight"], resumed["method"]["heads.projection.0.weight"])


# --- the label-free threshold ---------------------------------------------------------------------------------------

def test_mpe_finds_the_unknown_share_and_does_not_split_a_unimodal_score():
    rng = np.random.default_rng(0)
    known = rng.normal(0, 1, 20000)
    # 15% unknowns whose scores overlap the known ones: the bound is tight only where few unknowns score low.
    mixed = np.concatenate([rng.normal(0, 1, 17000), rng.normal(2, 1, 3000)])
    assert unknown_fraction(mixed, known) == pytest.approx(0.15, abs=0.02)
    t = mpe_threshold(mixed, known)
    assert (mixed > t).mean() == pytest.approx(0.15, abs=0.02)
    alike = rng.normal(0, 1, 20000)  # no unknowns, one mode: the mixture fit still cuts it, MPE does not
    assert (alike > mpe_threshold(alike, known)).mean() < 0.05
    assert (alike > gmm_threshold(alike)).mean() > 0.2
