"""Survey emulation + AdaBN: source stamps degraded to what the target survey would have recorded.

How astronomers move a morphology classifier between surveys (e.g. simulating DES galaxies from SDSS ones): blur
each source stamp to the target's seeing, resample it to the target's pixel scale and add sky noise up to the
target's level, then train on those. It needs no target labels: the PSF widths and pixel scales come from the
survey definitions in the data set's manifest, the sky noise from its per-band sky sigma (measured on empty
stamps, or on the imported cutouts' borders). Target batch-norm statistics are re-estimated as in AdaBN, so this
is the strong simple baseline every adaptation claim is compared with.

`strength` scales every step at once (0: the source as observed, 1: the target's conditions); `prob` is the share
of source stamps degraded, so the clean ones keep the source's own detail in view.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adabn import AdaBN
from .params import EmulationParams

__all__ = ["Emulation", "SurveyGap", "survey_gap", "emulate"]

log = logging.getLogger(__name__)
_FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))


@dataclass(frozen=True)
class SurveyGap:
    """What separates the source survey's stamps from the target's, per band (label-free facts)."""

    src_pixel: float  # arcsec per pixel
    tgt_pixel: float
    src_fwhm: tuple[float, ...] | None  # arcsec per band; None when a survey definition does not give it
    tgt_fwhm: tuple[float, ...] | None
    src_sky: tuple[float, ...]  # sky sigma per pixel, nanomaggies
    tgt_sky: tuple[float, ...]


def survey_gap(manifest: dict) -> SurveyGap:
    """The gap from a data set's manifest (its `surveys` block, written by `data generate` and `data import`)."""
    s, t = manifest["surveys"]["source"], manifest["surveys"]["target"]

    def fwhm(d):
        v = (d.get("definition") or {}).get("fwhm_arcsec")
        return tuple(map(float, v)) if v else None

    gap = SurveyGap(float(s["pixel_arcsec"]), float(t["pixel_arcsec"]), fwhm(s), fwhm(t),
                    tuple(map(float, s["sky_sigma_nmgy"])), tuple(map(float, t["sky_sigma_nmgy"])))
    if gap.src_fwhm is None or gap.tgt_fwhm is None:
        log.warning("survey emulation: no PSF width for both surveys in the manifest; emulating noise and pixel "
                    "scale only")
    return gap


def _gaussian_kernels(sigma_px: list[float]) -> torch.Tensor:
    """(C, 1, k, k) normalised Gaussian kernels, one per band (sigma 0: the identity)."""
    half = max(1, math.ceil(3 * max(sigma_px)))
    r = torch.arange(-half, half + 1, dtype=torch.float32)
    kernels = []
    for s in sigma_px:
        if s <= 1e-3:
            k = torch.zeros(2 * half + 1, 2 * half + 1)
            k[half, half] = 1.0
        else:
            g = torch.exp(-0.5 * (r / s) ** 2)
            k = torch.outer(g, g)
        kernels.append(k / k.sum())
    return torch.stack(kernels)[:, None]


def emulate(flux: torch.Tensor, gap: SurveyGap, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Source fluxes (B, C, H, W) as the target survey would record them, `strength` of the way there.

    1. PSF: a Gaussian of width sqrt(fwhm_t^2 - fwhm_s^2) (times sqrt(strength)), in source pixels;
    2. pixel scale: the image shrinks by src_pixel / tgt_pixel (a coarser target pixel sees more sky per pixel),
       area-averaged with flux conserved, centred and padded to the stamp size;
    3. sky noise: Gaussian noise bringing each pixel's noise to the target's sigma (strength times the missing
       variance), knowing how steps 1-2 changed the source's own noise.
    """
    b, c, h, w = flux.shape
    out = flux.float()
    src_noise = torch.tensor(gap.src_sky, device=flux.device)
    if gap.src_fwhm and gap.tgt_fwhm:
        extra = [math.sqrt(max(t**2 - s**2, 0.0) * strength) / _FWHM_PER_SIGMA / gap.src_pixel
                 for s, t in zip(gap.src_fwhm, gap.tgt_fwhm)]
        if max(extra) > 1e-3:
            k = _gaussian_kernels(extra).to(flux.device)
            out = F.conv2d(F.pad(out, [k.shape[-1] // 2] * 4, mode="replicate"), k, groups=c)
            src_noise = src_noise * k.flatten(1).norm(dim=1)  # white noise through the kernel
    zoom = 1 + strength * (gap.src_pixel / gap.tgt_pixel - 1)
    inner = h, w
    if abs(zoom - 1) > 1e-3:
        inner = max(1, round(h * zoom)), max(1, round(w * zoom))
        area = (h / inner[0]) * (w / inner[1])  # source pixels per new pixel: flux per pixel grows by this
        small = _resample(out, inner) * area
        src_noise = src_noise * _noise_gain(h, w, *inner) * area
        top, left = (h - inner[0]) // 2, (w - inner[1]) // 2
        out = F.pad(small, [left, w - inner[1] - left, top, h - inner[0] - top]) if zoom < 1 else _crop(small, h, w)
    tgt = torch.tensor(gap.tgt_sky, device=flux.device)
    inside = torch.zeros(h, w, dtype=torch.bool, device=flux.device)
    top, left = (h - min(inner[0], h)) // 2, (w - min(inner[1], w)) // 2
    inside[top : top + min(inner[0], h), left : left + min(inner[1], w)] = True
    have = torch.where(inside[None], src_noise[:, None, None] ** 2, torch.zeros((), device=flux.device))
    add_var = (strength * (tgt[:, None, None] ** 2 - have)).clamp_min(0)  # (C, H, W)
    noise = torch.randn(out.shape, generator=gen).to(flux.device)
    return out + noise * add_var.sqrt()[None]


def _resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with an antialiasing filter when shrinking: every source pixel gives the same total weight, so a
    compact source keeps its flux wherever it falls within a pixel (plain area pooling at a non-integer ratio
    weighted pixels 0.5 / 1 / 0.5 in turn)."""
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


@functools.lru_cache(maxsize=16)
def _noise_gain(h: int, w: int, oh: int, ow: int) -> float:
    """How `_resample` scales the std of white noise from (h, w) to (oh, ow): measured once on unit noise, since
    the filter's overlap depends on the ratio."""
    noise = torch.randn(8, 1, h, w, generator=torch.Generator().manual_seed(0))
    return float(_resample(noise, (oh, ow))[..., 2:-2, 2:-2].std())


def _crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


class Emulation(AdaBN):
    name = "emulation"
    Params = EmulationParams
    transforms_source = True

    def __init__(self, params, model, num_known: int, n_target: int, **kw):
        super().__init__(params, model, num_known, n_target, **kw)
        self.gap: SurveyGap | None = None

    # The Params fields holding the emulation's strength and share: a method built on this one names its own.
    emulation_fields: tuple[str, str] = ("strength", "prob")

    def _strength_prob(self) -> tuple[float, float]:
        return tuple(getattr(self.params, f) for f in self.emulation_fields)

    def attach(self, data) -> None:
        self.gap = survey_gap(data.manifest)

    def source_flux(self, flux: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        strength, prob = self._strength_prob()
        if self.gap is None or strength == 0 or prob == 0:
            return flux
        pick = torch.rand(len(flux), generator=gen) < prob
        if not pick.any():
            return flux
        pick = pick.to(flux.device)
        out = flux.float().clone()
        out[pick] = emulate(flux[pick], self.gap, strength, gen)
        return out
