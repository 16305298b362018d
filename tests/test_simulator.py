"""The renderer's physics: determinism, flux, noise, PSF, pixel scale, depth selection, resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from uda_core.data.population import draw_population, stamp_limit_fraction
from uda_core.data.render import _psf_fft, render, render_pair
from uda_core.data.surveys import SURVEYS, get_survey
from uda_core.errors import ConfigError


def _population(classes, survey="decals", seed=0, size=48):
    s = SURVEYS[survey]
    p = draw_population(np.random.default_rng(seed), classes, s, size * s.pixel_arcsec)
    p["seed"] = np.arange(len(classes)) + 1000
    return p


def _subset(p, idx):
    return {k: np.asarray(v)[idx] for k, v in p.items()}


def test_render_is_deterministic_per_galaxy_whatever_the_batch():
    p = _population(["spiral", "elliptical", "merger", "artifact", "lens", "ring", "artifact", "artifact"])
    p["artifact_kind"] = np.array(["trail"] * 4 + ["star"] * 4)
    a, _ = render(p, SURVEYS["decals"], 32)
    b, _ = render(p, SURVEYS["decals"], 32)
    assert torch.equal(a, b)
    alone, _ = render(_subset(p, [3]), SURVEYS["decals"], 32)
    assert torch.equal(alone[0], a[3])


def test_noiseless_flux_matches_catalogue_magnitude():
    p = _population(["elliptical"] * 4 + ["spiral"] * 4)
    p["hlr_arcsec"] = np.full(8, 0.6)  # compact: nothing falls off the stamp
    _, flux = render(p, SURVEYS["decals"], 48)
    r_flux = 10 ** (-0.4 * (p["r_mag"] - 22.5))
    np.testing.assert_allclose(flux[:, 1], r_flux, rtol=0.02)


@pytest.mark.parametrize("survey", ["decals", "sdss", "lsst_y1"])
def test_empty_sky_noise_matches_the_depth(survey):
    s = SURVEYS[survey]
    p = _population(["elliptical"] * 16, survey)
    p["r_mag"] = np.full(16, 40.0)  # invisible galaxy: only sky noise remains
    img, _ = render(p, s, 48)
    for b in range(3):
        assert img[:, b].std().item() == pytest.approx(s.sky_sigma_nmgy(b), rel=0.05)


def test_psf_fwhm_matches_preset():
    step = 0.05
    for fwhm in (0.7, 1.2, 1.5):
        psf = torch.fft.irfft2(_psf_fft(fwhm, 3.5, 128, step), s=(128, 128))
        area = (psf >= psf.max() / 2).sum().item() * step**2
        assert 2 * math.sqrt(area / math.pi) == pytest.approx(fwhm, rel=0.06)


def test_apparent_size_scales_with_pixel_scale():
    p = _population(["elliptical"] * 6)
    p["hlr_arcsec"] = np.full(6, 2.0)
    p["sersic_n"] = np.full(6, 1.0)
    p["r_mag"] = np.full(6, 13.0)
    sizes = {}
    yy, xx = torch.meshgrid(torch.arange(64.0) - 31.5, torch.arange(64.0) - 31.5, indexing="ij")
    radius = torch.sqrt(xx**2 + yy**2).flatten()
    order = torch.argsort(radius)
    for name in ("decals", "sdss"):
        img, _ = render(p, SURVEYS[name], 64)
        flux = img[:, 1].flatten(1)[:, order]
        # Half-light radius in pixels: where the cumulative flux in growing circles reaches half the total.
        half = (flux.cumsum(1) >= flux.sum(1, keepdim=True) / 2).float().argmax(1)
        sizes[name] = radius[order][half].mean().item()
    ratio = SURVEYS["sdss"].pixel_arcsec / SURVEYS["decals"].pixel_arcsec
    assert sizes["decals"] / sizes["sdss"] == pytest.approx(ratio, rel=0.15)


def test_deeper_survey_selects_fainter_more_distant_galaxies():
    classes = ["spiral", "elliptical"] * 200
    # SDSS and DECaLS share the main-sample limit r < 17.77 (as Galaxy Zoo's samples do): not a deeper pair.
    for shallow, deep in (("lsst_y1", "lsst_y10"), ("sdss", "stripe82")):
        a, b = _population(classes, shallow), _population(classes, deep)
        assert np.median(b["r_mag"]) > np.median(a["r_mag"]) + 0.5
        assert np.median(b["redshift"]) > np.median(a["redshift"])
        assert a["r_mag"].max() < SURVEYS[shallow].r_limit


def test_classes_overlap_in_brightness_and_size():
    p = _population(["elliptical"] * 300 + ["spiral"] * 300)
    e, s = slice(0, 300), slice(300, 600)
    # The brightness and size distributions overlap: neither is a template a summary statistic could read.
    assert abs(np.median(p["r_mag"][e]) - np.median(p["r_mag"][s])) < np.std(p["r_mag"][s])
    assert abs(np.log(np.median(p["hlr_arcsec"][e])
                      / np.median(p["hlr_arcsec"][s]))) < np.std(np.log(p["hlr_arcsec"][s]))


@pytest.mark.parametrize("survey", ["decals", "sdss"])
def test_galaxy_sizes_are_not_piled_up_at_the_stamps_limit(survey):
    # Generator 1.4 clipped half-light radii at a fifth of the stamp: 62% of the galaxies at `small` (48 px) got
    # that one size, the same number of pixels in every survey.
    assert stamp_limit_fraction(SURVEYS[survey], 48) < 0.15
    hlr = _population(["spiral", "elliptical", "merger"] * 200, survey)["hlr_arcsec"]
    assert np.unique(hlr, return_counts=True)[1].max() == 1  # no shared (clipped) value
    assert hlr.max() <= 0.5 * 48 * SURVEYS[survey].pixel_arcsec


def test_pixel_scale_sets_how_many_pixels_a_galaxy_spans():
    # DECaLS and SDSS select the same galaxies (r < 17.77): their sizes in pixels differ by the pixel scales.
    classes = ["spiral", "elliptical", "edge_on"] * 300
    size_px = {s: np.median(_population(classes, s, size=64)["hlr_arcsec"]) / SURVEYS[s].pixel_arcsec
               for s in ("decals", "sdss")}
    ratio = SURVEYS["sdss"].pixel_arcsec / SURVEYS["decals"].pixel_arcsec
    assert size_px["decals"] / size_px["sdss"] == pytest.approx(ratio, rel=0.12)


def test_bass_resampling_correlates_the_noise():
    def neighbour_corr(survey):
        p = _population(["elliptical"] * 8, survey)
        p["r_mag"] = np.full(8, 40.0)
        img, _ = render(p, SURVEYS[survey], 48)
        x = img[:, 1]
        return np.corrcoef(x[..., :-1].flatten(), x[..., 1:].flatten())[0, 1]

    assert neighbour_corr("bass_mzls") > 0.3
    from uda_core.data.store import delivered_sky_sigma

    bass = SURVEYS["bass_mzls"]
    measured = delivered_sky_sigma(bass, 48)
    assert measured[1] < 0.6 * bass.sky_sigma_nmgy(1)  # resampling to finer pixels lowers the per-pixel sigma
    assert delivered_sky_sigma(SURVEYS["decals"], 48) == [SURVEYS["decals"].sky_sigma_nmgy(b) for b in range(3)]
    assert abs(neighbour_corr("decals")) < 0.1


def test_paired_view_shows_one_galaxy_through_two_surveys():
    p = _population(["spiral"] * 4)
    p["r_mag"] = np.full(4, 18.0)
    deep, shallow = render_pair(p, SURVEYS["lsst_y10"], SURVEYS["lsst_y1"], 32)
    # Same pixels, same galaxy: the views differ by noise only, sqrt(10) larger in Y1.
    assert np.corrcoef(deep[:, 1].flatten(), shallow[:, 1].flatten())[0, 1] > 0.9
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[4:-4, 4:-4] = False  # outskirts: sky noise dominates
    diff = (deep - shallow)[:, 1][:, frame].std().item()
    sky = math.hypot(SURVEYS["lsst_y1"].sky_sigma_nmgy(1), SURVEYS["lsst_y10"].sky_sigma_nmgy(1))
    assert diff == pytest.approx(sky, rel=0.3)


def test_unknown_survey_is_a_clear_error():
    with pytest.raises(ConfigError, match="choose one of"):
        get_survey("hst")
