"""Survey presets: the published numbers that make one survey's images differ from another's.

Sources are listed in `shared/research/data.md` section 2. Depths are 5-sigma point-source AB magnitudes;
fluxes are in nanomaggies (m = 22.5 - 2.5 log10 f), the unit of SDSS and Legacy Survey images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Survey", "SURVEYS", "get_survey"]

# Effective number of pixels under a point source for a Gaussian-like PSF: n_eff = 2.266 (FWHM / pix)^2.
_NEFF_COEFF = 2.266


@dataclass(frozen=True)
class Survey:
    name: str
    pixel_arcsec: float
    bands: tuple[str, ...]
    fwhm_arcsec: tuple[float, ...]
    m5: tuple[float, ...]
    # Electrons per nanomaggy over the total exposure: sets the source Poisson noise.
    gain_e_per_nmgy: tuple[float, ...]
    # The morphology sample is what the survey sees well: r brighter than this (AB mag).
    r_limit: float
    # Surveys whose cutouts are resampled (BASS: 0.454"/px native, delivered at 0.262"/px) are drawn natively.
    native_pixel_arcsec: float | None = None
    r_bright: float = 14.0
    moffat_beta: float = 3.5

    @property
    def draw_pixel_arcsec(self) -> float:
        return self.native_pixel_arcsec or self.pixel_arcsec

    def sky_sigma_nmgy(self, band_index: int) -> float:
        """Per-pixel sky sigma implied by the 5-sigma depth: 10^(-0.4 (m5 - 22.5)) / (5 sqrt(n_eff))."""
        pix = self.draw_pixel_arcsec
        n_eff = _NEFF_COEFF * (self.fwhm_arcsec[band_index] / pix) ** 2
        return 10 ** (-0.4 * (self.m5[band_index] - 22.5)) / (5.0 * math.sqrt(n_eff))


def _gain(zeropoint_e_per_s: float, exposure_s: float) -> float:
    """Electrons per nanomaggy from a zero point (mag giving 1 e-/s) and an exposure."""
    return 10 ** (0.4 * (zeropoint_e_per_s - 22.5)) * exposure_s


# The morphology-sample limit sits 5.6 mag above each survey's r depth, so each survey selects its own
# population: GZ DECaLS' r < 17.77 for DECaLS (23.4 - 5.6 = 17.8), a shallower limit for SDSS, fainter and more
# distant galaxies for Stripe 82 and LSST.
_LIMIT_OFFSET = 5.6

SURVEYS: dict[str, Survey] = {
    s.name: s
    for s in [
        Survey(
            "decals",
            0.262,
            ("g", "r", "z"),
            (1.3, 1.2, 1.1),
            (24.0, 23.4, 22.5),
            (_gain(26.6, 166), _gain(26.7, 134), _gain(26.2, 200)),
            r_limit=23.4 - _LIMIT_OFFSET,
        ),
        Survey(
            "sdss",
            0.396,
            ("g", "r", "z"),
            (1.5, 1.4, 1.3),
            (22.2, 22.2, 20.5),
            (_gain(26.3, 53.9), _gain(26.5, 53.9), _gain(24.7, 53.9)),
            r_limit=22.2 - _LIMIT_OFFSET,
        ),
        Survey(
            "stripe82",
            0.396,
            ("g", "r", "z"),
            (1.2, 1.1, 1.1),
            (25.1, 24.6, 22.8),
            (_gain(26.3, 53.9 * 20), _gain(26.5, 53.9 * 20), _gain(24.7, 53.9 * 20)),
            r_limit=24.6 - _LIMIT_OFFSET,
        ),
        Survey(
            "bass_mzls",
            0.262,
            ("g", "r", "z"),
            (1.60, 1.42, 1.04),
            (24.2, 23.6, 23.0),
            (_gain(25.92, 300), _gain(25.81, 300), _gain(26.4, 300)),
            r_limit=23.6 - _LIMIT_OFFSET,
            native_pixel_arcsec=0.454,
        ),
        Survey(
            "lsst_y1",
            0.2,
            ("g", "r", "i"),
            (0.77, 0.73, 0.71),
            (26.2, 26.2, 25.8),
            # Total exposure: 15 s visits, Y1 = a tenth of Y10's 200/460/460 visits in g/r/i.
            (_gain(28.30, 300), _gain(28.13, 690), _gain(27.79, 690)),
            r_limit=26.2 - _LIMIT_OFFSET,
        ),
        Survey(
            "lsst_y10",
            0.2,
            ("g", "r", "i"),
            (0.77, 0.73, 0.71),
            (27.45, 27.5, 27.0),
            (_gain(28.30, 3000), _gain(28.13, 6900), _gain(27.79, 6900)),
            r_limit=27.5 - _LIMIT_OFFSET,
        ),
    ]
}


def get_survey(name: str) -> Survey:
    try:
        return SURVEYS[name]
    except KeyError:
        raise ConfigError(
            f"unknown survey {name!r}; choose one of {sorted(SURVEYS)} (presets in uda_core/data/surveys.py)"
        ) from None
