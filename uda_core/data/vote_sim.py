"""Simulated Galaxy Zoo DECaLS volunteer votes for generated galaxies.

Every galaxy gets votes down the GZ DECaLS decision tree (`uda_core.votes.GZ_DECALS`): a number of volunteers
(about 40, as GZ DECaLS retired most galaxies near 40 classifications; some fewer) all answer the first question,
each later question is answered by exactly those who gave its parent answer, and `merging` by everyone.

What volunteers answer follows from the galaxy's true parameters (`population.draw_population`) AND from how well
the survey shows them, which is the point: a shallower, worse-seeing survey shows fewer spiral arms and bars, so
the same spiral gets fewer "featured" votes there (GZ2 on SDSS vs GZ DECaLS on deeper DECaLS images found exactly
this, Walmsley et al. 2022). Two visibilities do it, each in [0, 1]:
  * resolution: a feature of size R (arcsec) is seen when R is large against the PSF (FWHM, with the pixel);
  * signal: the feature's flux (a fraction of the galaxy's) spread over the galaxy's area, against the survey's
    5-sigma point-source depth m5.
Per galaxy and question, answer probabilities are a mix of "what a volunteer who sees the feature answers" and
"what one who does not see it answers", weighted by the visibility; a Dirichlet draw around them (volunteers
disagree, more on some galaxies than others) and a multinomial per question then give integer counts.

Only numpy, vectorised over galaxies; the caller passes its own random generator, so the vote draw can use a
stream of its own and leave every pixel and catalogue column of a data set as they were.
"""

from __future__ import annotations

import numpy as np

from ..votes import GZ_DECALS, VoteTree
from .surveys import SIMULATED_BANDS, Survey

__all__ = ["simulate_votes", "vote_probabilities", "visibility_inputs", "draw_volunteers"]

# The 5-sigma depth assumes a point source; a galaxy's light is spread over more noisy pixels than the PSF's, so
# its signal-to-noise is lower by about sqrt(area ratio) (see _extended_penalty).
_SIGNAL_MID, _SIGNAL_WIDTH = 2.3, 0.6  # feature S/N margin (mag above m5-equivalent) at which half see it
_RES_MID, _RES_POWER = 1.0, 3.0  # feature size / FWHM at which half see it, and how sharp the transition is


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _resolved(size_arcsec, fwhm_eff):
    """Chance that a feature of this size is seen as structure, not blurred into the PSF: 1/(1 + (R0/R)^k) with
    R in units of the FWHM (R0 = 1: a feature as big as the seeing disk is a coin toss)."""
    ratio = np.maximum(size_arcsec / fwhm_eff, 1e-3)
    return 1.0 / (1.0 + (_RES_MID / ratio) ** _RES_POWER)


def _extended_penalty(hlr, fwhm_eff):
    """Magnitudes of S/N lost because the light covers (FWHM^2 + 4 hlr^2) / FWHM^2 PSF areas of sky noise."""
    return 1.25 * np.log10(1.0 + 4.0 * (hlr / fwhm_eff) ** 2)


def _seen(flux_frac, r_mag, hlr, m5, fwhm_eff):
    """Chance that a feature carrying `flux_frac` of the galaxy's r flux stands out of the sky noise."""
    margin = m5 - r_mag + 2.5 * np.log10(np.maximum(flux_frac, 1e-4)) - _extended_penalty(hlr, fwhm_eff)
    return _sigmoid((margin - _SIGNAL_MID) / _SIGNAL_WIDTH)


def visibility_inputs(params: dict[str, np.ndarray], survey: Survey) -> dict[str, np.ndarray]:
    """Per galaxy: the effective FWHM (arcsec), the survey depth m5 and the galaxy's PSF-blurred axis ratio.

    The band is r, or the reddest band the survey has (morphology is judged on the red, smooth stellar light; with
    no r band the r magnitude stands in for that band's, a colour term small next to the depth differences).
    """
    n = len(params["r_mag"])
    if "r" in survey.bands:
        b = survey.bands.index("r")
    else:
        b = max(range(len(survey.bands)), key=lambda i: SIMULATED_BANDS.index(survey.bands[i]))
    # A pixel of side p blurs like a box; its FWHM-equivalent (2.355 p / sqrt 12 = 0.68 p) adds in quadrature.
    fwhm_eff = np.full(n, float(np.hypot(survey.fwhm_arcsec[b], 0.68 * survey.draw_pixel_arcsec)))
    hlr = np.asarray(params["hlr_arcsec"], dtype=np.float64)
    q = np.asarray(params["axis_ratio"], dtype=np.float64)
    # Second moments add under convolution: the PSF (half-light radius FWHM/2) makes every image rounder, so a thin
    # disk of the size of the seeing looks like an in-between ellipse, not an edge-on disk.
    s = fwhm_eff / 2
    q_obs = np.sqrt((q**2 * hlr**2 + s**2) / (hlr**2 + s**2))
    return {"fwhm_eff": fwhm_eff, "m5": np.full(n, float(survey.m5[b])), "q_obs": q_obs}


def _soft_bins(x, centres, width):
    """(N, K) probabilities of K ordered answers, a Gaussian kernel of x around each answer's centre."""
    w = np.exp(-0.5 * ((x[:, None] - np.asarray(centres)[None, :]) / width) ** 2) + 1e-3
    return w / w.sum(1, keepdims=True)


def _mix(v, seen, unseen):
    """v * seen + (1 - v) * unseen, rows broadcast ((N, K) or (K,))."""
    v = v[:, None]
    return v * np.asarray(seen) + (1 - v) * np.asarray(unseen)


def vote_probabilities(params: dict[str, np.ndarray], survey: Survey) -> dict[str, np.ndarray]:
    """Per question of GZ DECaLS, (N, answers) probabilities that one volunteer asked it gives each answer."""
    cls = np.asarray(params["class_name"]).astype(str)
    n = len(cls)
    is_ = lambda *names: np.isin(cls, names)  # noqa: E731
    f = lambda key: np.asarray(params[key], dtype=np.float64)  # noqa: E731
    vis = visibility_inputs(params, survey)
    fwhm, m5, q_obs = vis["fwhm_eff"], vis["m5"], vis["q_obs"]
    r_mag, hlr, bf = f("r_mag"), f("hlr_arcsec"), f("bulge_frac")
    spiral, ring = is_("spiral", "barred_spiral"), is_("ring")

    # The light in the structure volunteers look for (render.py's weights): spiral arms carry arm_frac of the disk,
    # sharpened by arm_amp; a ring half the light; a merger's tidal tails tail_frac; a lens' arcs source_frac.
    feat_frac = np.where(spiral, (1 - bf) * f("arm_frac") * f("arm_amp"),
                         np.where(ring, 0.5, np.where(is_("merger"), f("tail_frac"), 0.0)))
    arm_vis = _resolved(hlr, fwhm) * _seen(feat_frac, r_mag, hlr, m5, fwhm)
    arm_vis = np.where(spiral | ring, arm_vis, 0.0)
    res_vis = _resolved(hlr, fwhm)  # the galaxy itself resolved (bulge vs disk, shape)
    # A bar (render.py: a flat profile of half-light radius 0.7 bar_len hlr) is seen end to end over about twice
    # that, and carries bar_frac of the light.
    bar_vis = np.where(is_("barred_spiral"), _resolved(1.4 * f("bar_len") * hlr, fwhm)
                       * _seen(f("bar_frac"), r_mag, hlr, m5, fwhm), 0.0)
    # A merger: two nuclei companion_sep hlr apart (resolved?) and faint tails (deep enough?).
    pair_vis = np.where(is_("merger"), _resolved(f("companion_sep") * hlr, fwhm), 0.0)
    tail_vis = np.where(is_("merger"), _seen(f("tail_frac"), r_mag, hlr, m5, fwhm), 0.0)
    arc_vis = np.where(is_("lens"), _resolved(f("einstein_radius"), fwhm)
                       * _seen(f("source_frac") * 0.5, r_mag, hlr, m5, fwhm), 0.0)
    # Thin in projection (after the PSF): the cue for "edge-on disk".
    thin = _sigmoid((0.42 - q_obs) / 0.06)

    p = {}
    # smooth-or-featured (smooth, featured-or-disk, artifact): disks are "featured" when their structure is seen;
    # an edge-on disk when it looks thin; ellipticals and lenses mostly smooth; artifacts mostly artifact.
    featured = np.full(n, 0.06)
    featured = np.where(spiral | ring, 0.08 + 0.84 * arm_vis, featured)
    featured = np.where(is_("edge_on"), 0.10 + 0.80 * thin, featured)
    featured = np.where(is_("merger"), 0.15 + 0.35 * pair_vis + 0.3 * tail_vis, featured)
    featured = np.where(is_("lens"), 0.06 + 0.25 * arc_vis, featured)
    artifact = np.where(is_("artifact"), 0.82, 0.02)
    featured = np.where(is_("artifact"), 0.08, featured)
    p["smooth-or-featured"] = np.stack([1 - featured - artifact, featured, artifact], 1)
    # disk-edge-on (yes, no): only a disk that still looks thin through the PSF is called edge-on.
    edge = 0.03 + 0.92 * thin
    p["disk-edge-on"] = np.stack([edge, 1 - edge], 1)
    # has-spiral-arms (yes, no): arms seen; rings (and a merger's tails) are sometimes taken for arms.
    arms = np.full(n, 0.12)
    arms = np.where(spiral, 0.12 + 0.8 * arm_vis, arms)
    arms = np.where(ring, 0.12 + 0.25 * arm_vis, arms)
    arms = np.where(is_("merger"), 0.15 + 0.3 * tail_vis, arms)
    p["has-spiral-arms"] = np.stack([arms, 1 - arms], 1)
    # bar (strong, weak, no): a bar seen is strong when it carries much light; an unseen one is "no".
    strong = _sigmoid((f("bar_frac") - 0.17) / 0.03)
    seen_bar = np.stack([0.05 + 0.75 * strong, 0.10 + 0.75 * (1 - strong), np.full(n, 0.10)], 1)
    p["bar"] = _mix(bar_vis, seen_bar, [0.02, 0.12, 0.86])
    # bulge-size (dominant, large, moderate, small, none) from the bulge's share of the light; an unresolved disk's
    # light is concentrated by the PSF, so it looks more bulge-dominated.
    bulge = np.where(ring, 0.3, np.where(is_("elliptical", "lens"), np.maximum(bf, 0.8), bf))
    bulge_seen = np.clip(bulge + 0.3 * (1 - res_vis), 0, 1)
    p["bulge-size"] = _soft_bins(bulge_seen, [0.85, 0.6, 0.4, 0.2, 0.03], 0.1)
    # how-rounded (round, in-between, cigar-shaped) from the axis ratio as seen through the PSF.
    p["how-rounded"] = _soft_bins(q_obs, [0.9, 0.62, 0.32], 0.1)
    # edge-on-bulge (boxy, none, rounded): a visible bulge is "rounded", a few say boxy; a bulgeless disk "none".
    rounded = _sigmoid((bulge - 0.15) / 0.06)
    p["edge-on-bulge"] = np.stack([np.full(n, 0.08), 0.92 * (1 - rounded), 0.92 * rounded], 1)
    # spiral-winding (tight, medium, loose) from the pitch angle (10-30 deg); blurred arms look tight.
    seen_wind = _soft_bins(f("arm_pitch_deg"), [12.0, 19.0, 27.0], 4.0)
    p["spiral-winding"] = _mix(arm_vis, seen_wind, [0.45, 0.4, 0.15])
    # spiral-arm-count (1, 2, 3, 4, more-than-4, cant-tell): the true count (barred spirals are drawn with 2 arms)
    # with some miscounting when seen, "cant-tell" (and a default guess of 2) when not.
    m = np.where(is_("barred_spiral"), 2, np.asarray(params["arm_count"])).astype(int)
    seen_count = np.zeros((n, 6))
    for k in range(1, 5):  # answer index k-1 is count k; miscounts go to the neighbouring counts
        seen_count[:, k - 1] = np.where(m == k, 0.72, np.where(np.abs(m - k) == 1, 0.08, 0.01))
    seen_count[:, 4] = np.where(m >= 4, 0.08, 0.01)
    seen_count[:, 5] = 0.06
    seen_count /= seen_count.sum(1, keepdims=True)
    p["spiral-arm-count"] = _mix(arm_vis, seen_count, [0.04, 0.30, 0.06, 0.02, 0.02, 0.56])
    # merging (none, minor-disturbance, major-disturbance, merger): a resolved pair is a merger, visible tails a
    # major disturbance; an unresolved, shallow merger looks like one disturbed galaxy at most.
    quiet = np.tile([0.88, 0.08, 0.025, 0.015], (n, 1))
    quiet[is_("artifact")] = [0.72, 0.12, 0.1, 0.06]
    pair = _mix(pair_vis, [0.05, 0.10, 0.25, 0.60], [0.40, 0.30, 0.20, 0.10])
    pair = _mix(tail_vis, pair + np.array([-0.03, -0.02, 0.05, 0.0]), pair)
    p["merging"] = np.where(is_("merger")[:, None], pair, quiet)
    return {k: v / v.sum(1, keepdims=True) for k, v in p.items()}


def draw_volunteers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Volunteers per galaxy: most galaxies near 40 (GZ DECaLS' retirement), 15% retired early with 5-30."""
    full = np.clip(np.round(rng.normal(41.0, 4.0, n)), 30, 55)
    early = rng.integers(5, 31, n)
    return np.where(rng.random(n) < 0.85, full, early).astype(np.int64)


def simulate_votes(params: dict[str, np.ndarray], survey: Survey, rng: np.random.Generator,
                   tree: VoteTree = GZ_DECALS) -> np.ndarray:
    """(N, tree.num_answers) int64 vote counts, columns `tree.columns`, for the galaxies `params` describes.

    Each question's voters are exactly its parent answer's (all volunteers for the first question and `merging`).
    Volunteers disagree: each galaxy's answer fractions are a Dirichlet draw around the probabilities with a
    per-galaxy concentration (median 20: some galaxies are ambiguous), so fractions are rarely 0 or 1.
    """
    probs = vote_probabilities(params, survey)
    n = len(params["r_mag"])
    missing = [q.name for q in tree.questions if q.name not in probs]
    if missing:  # pragma: no cover - only GZ DECaLS is modelled
        raise ValueError(f"simulate_votes models GZ DECaLS; tree {tree.name} has questions {missing}")
    volunteers = draw_volunteers(rng, n)
    concentration = np.exp(rng.normal(np.log(20.0), 0.4, n))
    counts = np.zeros((n, tree.num_answers), dtype=np.int64)
    for q, s, parent in zip(tree.questions, tree.slices, tree.parent_answer):
        p = np.maximum(probs[q.name], 1e-3)
        shares = rng.standard_gamma(concentration[:, None] * p)  # Dirichlet via normalised gammas
        total = shares.sum(1, keepdims=True)
        shares = np.where(total > 0, shares / np.where(total > 0, total, 1.0), p / p.sum(1, keepdims=True))
        voters = volunteers if parent is None else counts[:, parent]
        counts[:, s] = rng.multinomial(voters, shares)
    return counts
