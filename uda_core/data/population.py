"""Intrinsic galaxy catalogues: physical parameters drawn per class, selected by a survey's depth.

Each galaxy gets an absolute magnitude and a physical size from overlapping, class-dependent distributions, a
redshift drawn in proportion to comoving volume, and colours from a red/blue population mixture whose mixing
fraction (not the colour itself) depends on the class. Apparent magnitude and angular size then follow from a
flat LCDM cosmology, so a deeper survey sees fainter, smaller, more distant galaxies, and no class has a colour
or size template a classifier could read off summary statistics. A galaxy keeps its physical size in every
survey (nothing clips it to the stamp), so a survey's pixel scale and seeing decide how resolved it looks.

The output is a dict of equal-length numpy arrays (one row per galaxy), the renderer's only input.
"""

from __future__ import annotations

import numpy as np

from .surveys import SIMULATED_BANDS, Survey

__all__ = ["draw_population", "BANDS_ALL", "Cosmology", "stamp_limit_fraction"]

BANDS_ALL = SIMULATED_BANDS  # u, g, r, i, z, y: every band band_magnitudes gives a colour for
_ARCSEC_PER_RAD = 206264.806


class Cosmology:
    """Flat LCDM distances on a redshift grid (H0 = 70, Om = 0.3); enough for apparent sizes and magnitudes."""

    def __init__(self, h0: float = 70.0, om: float = 0.3, zmax: float = 3.0, n: int = 3001):
        self.z = np.linspace(0.0, zmax, n)
        ez = np.sqrt(om * (1 + self.z) ** 3 + (1 - om))
        dz = self.z[1] - self.z[0]
        integrand = 1.0 / ez
        comoving = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) * dz / 2)])
        self.dc_mpc = 299792.458 / h0 * comoving
        self.dvdz = self.dc_mpc**2 / ez  # up to a constant

    def distance_modulus(self, z: np.ndarray) -> np.ndarray:
        dl = np.interp(z, self.z, self.dc_mpc) * (1 + z)
        return 5 * np.log10(np.maximum(dl, 1e-6) * 1e6 / 10)

    def arcsec_per_kpc(self, z: np.ndarray) -> np.ndarray:
        da_kpc = np.interp(z, self.z, self.dc_mpc) / (1 + z) * 1e3
        return _ARCSEC_PER_RAD / np.maximum(da_kpc, 1e-3)

    def z_max_for(self, abs_mag: float, app_mag: float) -> float:
        """Largest redshift at which a galaxy of `abs_mag` is still brighter than `app_mag` (k-correction incl.)."""
        m = abs_mag + self.distance_modulus(self.z[1:]) + _kcorr(self.z[1:])
        ok = np.nonzero(m < app_mag)[0]
        return float(self.z[1:][ok[-1]]) if len(ok) else float(self.z[1])


_COSMO = Cosmology()


def _kcorr(z):
    # A smooth, class-independent r-band k-correction: redshifting pushes flux out of the band.
    return 2.5 * np.log10(1 + z) + 0.5 * z


# Per class: mean and sd of the absolute r magnitude, fraction of "red" stellar populations.
# Means differ by less than the scatter on purpose (no brightness shortcut).
_CLASS_POP = {
    "elliptical": dict(m_mean=-21.2, m_sd=0.9, p_red=0.62),
    "spiral": dict(m_mean=-21.0, m_sd=0.9, p_red=0.40),
    "barred_spiral": dict(m_mean=-21.1, m_sd=0.9, p_red=0.48),
    "edge_on": dict(m_mean=-21.0, m_sd=0.9, p_red=0.50),
    "merger": dict(m_mean=-21.3, m_sd=0.9, p_red=0.45),
    "ring": dict(m_mean=-21.0, m_sd=0.9, p_red=0.50),
    "lens": dict(m_mean=-21.6, m_sd=0.7, p_red=0.62),
    "artifact": dict(m_mean=-21.0, m_sd=1.0, p_red=0.50),
}


def _colours(rng: np.random.Generator, n: int, red: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(n, 3) colours g-r, r-i, i-z; red and blue sequences overlap through their scatter and redden with z."""
    g_r = np.where(red, rng.normal(0.72, 0.12, n), rng.normal(0.45, 0.16, n)) + 0.9 * z
    r_i = np.where(red, rng.normal(0.40, 0.08, n), rng.normal(0.25, 0.10, n)) + 0.5 * z
    i_z = np.where(red, rng.normal(0.30, 0.08, n), rng.normal(0.15, 0.10, n)) + 0.3 * z
    return np.stack([g_r, r_i, i_z], axis=1)


def band_magnitudes(r_mag: np.ndarray, colours: np.ndarray) -> dict[str, np.ndarray]:
    g = r_mag + colours[:, 0]
    i = r_mag - colours[:, 1]
    z = i - colours[:, 2]
    # u and y follow from the neighbouring colours instead of new random draws, so every g/r/i/z value (and every
    # existing data set) stays as it was. u-g = 0.35 + 1.5 (g-r) puts the red sequence near 1.5 and the blue cloud
    # near 1.0 at low redshift (SDSS colours), and, like g-r, reddens with z; z-y = 0.5 (i-z) gives about 0.15
    # (red) and 0.08 (blue), the small z-y colours of galaxies.
    u = g + 0.35 + 1.5 * colours[:, 0]
    y = z - 0.5 * colours[:, 2]
    return {"u": u, "g": g, "r": r_mag, "i": i, "z": z, "y": y}


# A cutout catalogue holds the galaxies its stamps show whole enough to classify: a galaxy whose half-light radius
# exceeds half the stamp width is left out (redrawn). This limit, not a clip, keeps each galaxy's physical size, so
# a survey's pixel scale sets how many pixels it spans. A clip at a fifth of the stamp bound for 62% of the
# galaxies at `small` and gave them the same size in pixels in every survey (generator 1.4).
_STAMP_HLR_FRACTION = 0.5
_MIN_HLR_ARCSEC = 0.25


def _sizes(rng, abs_mag: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Half-light radii (arcsec) from one size-luminosity relation with 0.2 dex scatter for every class.

    Real disks are somewhat larger than spheroids at fixed luminosity, but a class-dependent size would let a
    size measurement alone classify (bench/shortcuts measured it); light profiles carry the morphology here."""
    log_re = 0.56 - 0.26 * (abs_mag + 21) + rng.normal(0, 0.2, len(z))
    return np.maximum(10**log_re * _COSMO.arcsec_per_kpc(z), _MIN_HLR_ARCSEC)


def _draw_selected(rng, cls: str, n: int, survey: Survey, max_hlr_arcsec: float):
    """Draw `n` galaxies of one class that the survey's magnitude limits and the stamp's size limit select."""
    pop = _CLASS_POP[cls]
    z_hi = _COSMO.z_max_for(pop["m_mean"] - 3 * pop["m_sd"], survey.r_limit)
    z_lo = max(_COSMO.z_max_for(pop["m_mean"] + 3 * pop["m_sd"], survey.r_bright), 0.005)
    grid = (_COSMO.z > z_lo) & (_COSMO.z < z_hi)
    zs, w = _COSMO.z[grid], _COSMO.dvdz[grid]
    cdf = np.cumsum(w) / w.sum()
    drawn = []
    have = 0
    for _ in range(200):
        m = max(4 * (n - have), 64)
        z = np.interp(rng.random(m), cdf, zs)
        abs_mag = rng.normal(pop["m_mean"], pop["m_sd"], m)
        app = abs_mag + _COSMO.distance_modulus(z) + _kcorr(z)
        hlr = _sizes(rng, abs_mag, z)
        keep = (app < survey.r_limit) & (app > survey.r_bright) & (hlr <= max_hlr_arcsec)
        drawn.append(np.stack([z, app, abs_mag, hlr])[:, keep])
        have += int(keep.sum())
        if have >= n:
            break
    z, app, abs_mag, hlr = np.concatenate(drawn, axis=1)[:, :n]
    if len(z) < n:  # pragma: no cover - the limits above always admit galaxies
        raise RuntimeError(f"could not select {n} {cls} galaxies for survey {survey.name}")
    return z, app, abs_mag, hlr


def draw_population(
    rng: np.random.Generator, classes: list[str], survey: Survey, stamp_arcsec: float
) -> dict[str, np.ndarray]:
    """Intrinsic parameters for one galaxy per entry of `classes`, as seen (selected) by `survey`."""
    n = len(classes)
    cls = np.asarray(classes)
    cols = {k: np.zeros(n) for k in ("redshift", "r_mag", "abs_mag_r", "hlr_arcsec")}
    max_hlr = stamp_arcsec * _STAMP_HLR_FRACTION
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        z, app, abs_mag, hlr = _draw_selected(rng, str(c), len(idx), survey, max_hlr)
        cols["redshift"][idx], cols["r_mag"][idx] = z, app
        cols["abs_mag_r"][idx], cols["hlr_arcsec"][idx] = abs_mag, hlr

    p_red = np.array([_CLASS_POP[c]["p_red"] for c in cls])
    red = rng.random(n) < p_red
    # Bulge and disk have their own colours: bulges are redder than the disk they sit in.
    disk_col = _colours(rng, n, red, cols["redshift"])
    bulge_col = _colours(rng, n, rng.random(n) < np.maximum(p_red, 0.6), cols["redshift"])
    # Accents (spiral knots, lensed sources, tidal tails) are blue; artifacts get arbitrary colours below.
    accent_col = _colours(rng, n, np.zeros(n, bool), cols["redshift"]) - 0.15

    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    out = dict(cols)
    out.update(
        class_name=cls,
        sersic_n=np.round(u(2.5, 5.5), 1),
        bulge_n=np.round(u(1.5, 4.5), 1),
        bulge_frac=u(0.0, 0.55),
        axis_ratio=u(0.35, 1.0),
        pa_deg=u(0.0, 180.0),
        arm_count=rng.choice([2, 2, 2, 3, 4], n),
        arm_pitch_deg=u(10.0, 30.0),
        arm_amp=u(0.5, 0.9),
        arm_frac=u(0.35, 0.65),
        bar_frac=u(0.10, 0.25),
        bar_len=u(0.5, 0.9),
        dust_tau=np.where(rng.random(n) < 0.6, u(0.2, 0.7), 0.0),
        companion_sep=u(1.2, 3.0),
        companion_ratio=u(0.25, 1.0),
        companion_pa=u(0.0, 360.0),
        tail_frac=u(0.08, 0.2),
        ring_radius=u(1.2, 2.4),
        einstein_radius=u(1.0, 2.2),
        source_offset=u(0.0, 0.45),
        source_hlr=u(0.15, 0.4),
        source_frac=u(0.2, 0.45),
        artifact_kind=rng.choice(["trail", "star", "column"], n),
        artifact_amp=u(0.2, 1.5),
        offset_x=u(-0.5, 0.5),
        offset_y=u(-0.5, 0.5),
        phase=u(0.0, 2 * np.pi),
    )
    # Class-specific shapes: ellipticals span round to cigar; edge-on disks are thin; spirals are seen more face-on.
    is_ = lambda c: cls == c  # noqa: E731
    out["axis_ratio"] = np.where(is_("elliptical") | is_("lens"), u(0.3, 1.0), out["axis_ratio"])
    out["axis_ratio"] = np.where(is_("edge_on"), u(0.08, 0.2), out["axis_ratio"])
    out["axis_ratio"] = np.where(is_("spiral") | is_("barred_spiral") | is_("ring"), u(0.5, 1.0), out["axis_ratio"])
    out["bulge_frac"] = np.where(is_("elliptical") | is_("lens"), u(0.75, 1.0), out["bulge_frac"])
    out["bulge_frac"] = np.where(is_("spiral") | is_("barred_spiral"), u(0.0, 0.4), out["bulge_frac"])
    out["sersic_n"] = np.where(out["bulge_frac"] < 0.75, 1.0, out["sersic_n"])
    for name, col in (("disk", disk_col), ("bulge", bulge_col), ("accent", accent_col)):
        for b, mag in band_magnitudes(np.zeros(n), col).items():
            out[f"{name}_colour_{b}"] = mag  # magnitude offset relative to r
    # Per-band total magnitudes are measured by the renderer from the light it actually draws.
    return out


def stamp_limit_fraction(survey: Survey, stamp_px: int, n: int = 4000, seed: int = 0) -> float:
    """Fraction of a survey's magnitude-selected galaxies (universal task, source mix) too large for its stamps:
    those the stamp's size limit leaves out."""
    from .store import _sample_classes
    from .tasks import get_task

    rng = np.random.default_rng(seed)
    classes = _sample_classes(rng, get_task("universal").source_priors, n)
    hlr = draw_population(rng, classes, survey, np.inf)["hlr_arcsec"]
    return float(np.mean(hlr > stamp_px * survey.pixel_arcsec * _STAMP_HLR_FRACTION))
