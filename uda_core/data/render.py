"""Batch renderer: intrinsic galaxies -> survey stamps in nanomaggies (torch, no per-pixel Python).

Pipeline per batch and class: analytic light profiles on a 2x oversampled grid in arcsec (so a survey's pixel
scale changes a galaxy's apparent size), per-band fluxes from component colours, Moffat PSF per band by FFT
convolution, binning to the survey's native pixels, sky + source Poisson noise from the survey depth and gain,
then (for surveys delivered on another grid, like BASS) resampling to the delivered pixel scale, which correlates
the noise as real Legacy Survey cutouts do.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .surveys import Survey

__all__ = ["render", "render_pair", "OVERSAMPLE"]

OVERSAMPLE = 2
_DEG = math.pi / 180


def _sersic_b(n: torch.Tensor) -> torch.Tensor:
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


class _Grid:
    """Sky coordinates (arcsec) of the oversampled pixel centres, shared by a sub-batch."""

    def __init__(self, size: int, step: float, dtype=torch.float32):
        c = (torch.arange(size, dtype=dtype) - (size - 1) / 2) * step
        self.y, self.x = torch.meshgrid(c, c, indexing="ij")
        self.size, self.step = size, step

    def frame(self, x0, y0, pa_deg, q):
        """Coordinates in a galaxy's frame: (major, minor/q) axes, radius and angle in its own plane."""
        dx = self.x[None] - x0[:, None, None]
        dy = self.y[None] - y0[:, None, None]
        c, s = torch.cos(pa_deg * _DEG)[:, None, None], torch.sin(pa_deg * _DEG)[:, None, None]
        u = dx * c + dy * s
        v = (-dx * s + dy * c) / q[:, None, None]
        return u, v


def _unit(img: torch.Tensor) -> torch.Tensor:
    return img / img.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)


def _sersic(grid, x0, y0, hlr, n, q, pa):
    u, v = grid.frame(x0, y0, pa, q)
    # Soften the centre by a quarter of a sub-pixel so cuspy profiles do not depend on where a pixel centre falls.
    r = torch.sqrt(u * u + v * v + (grid.step / 4) ** 2) / hlr[:, None, None]
    nn = n[:, None, None]
    return _unit(torch.exp(-_sersic_b(nn) * (r ** (1 / nn) - 1)))


def _arms(grid, x0, y0, hlr, q, pa, m, pitch_deg, phase, r0, sharpness=2.0):
    """Logarithmic-spiral pattern in the disk plane, in [0, 1], zero inside r0 (a bar or the bulge)."""
    u, v = grid.frame(x0, y0, pa, q)
    r = torch.sqrt(u * u + v * v) + 1e-3
    phi = torch.atan2(v, u)
    wind = torch.log(r / r0[:, None, None]) / torch.tan(pitch_deg * _DEG)[:, None, None]
    pattern = ((1 + torch.cos(m[:, None, None] * (phi - wind) + phase[:, None, None])) / 2) ** sharpness
    return pattern * (1 - torch.exp(-((r / r0[:, None, None]) ** 2))) * torch.exp(-r / (0.6 * hlr[:, None, None]))


def _t(a, idx):
    return torch.as_tensor(np.asarray(a)[idx], dtype=torch.float32)


def _components(cls: str, p: dict, idx: np.ndarray, grid: _Grid, pix: float):
    """Unit-flux light components of one class and the colour (offset from r, mag) each is drawn in."""
    T = lambda k: _t(p[k], idx)  # noqa: E731
    x0, y0 = T("offset_x") * pix, T("offset_y") * pix
    hlr, q, pa = T("hlr_arcsec"), T("axis_ratio"), T("pa_deg")
    bf = T("bulge_frac")
    ones = torch.ones_like(hlr)
    comps: list[tuple[torch.Tensor, torch.Tensor, str]] = []  # (image, weight of total r flux, colour set)

    def bulge_disk(x, y, h, w_total, disk_q, disk_pa):
        comps.append((_sersic(grid, x, y, h * 0.35, T("bulge_n"), torch.clamp(disk_q + 0.4, max=1.0), disk_pa),
                      w_total * bf, "bulge"))
        comps.append((_sersic(grid, x, y, h, ones, disk_q, disk_pa), w_total * (1 - bf), "disk"))

    if cls in ("elliptical", "lens"):
        comps.append((_sersic(grid, x0, y0, hlr, T("sersic_n"), q, pa), ones, "bulge"))
        if cls == "lens":
            # Singular isothermal sphere: a source at beta is seen at theta with beta = theta - theta_E theta/|theta|.
            te = T("einstein_radius")[:, None, None]
            dx, dy = grid.x[None] - x0[:, None, None], grid.y[None] - y0[:, None, None]
            rr = torch.sqrt(dx * dx + dy * dy) + 1e-4
            bx, by = dx - te * dx / rr, dy - te * dy / rr
            off, ang = T("source_offset")[:, None, None] * te, T("phase")[:, None, None]
            d = torch.sqrt((bx - off * torch.cos(ang)) ** 2 + (by - off * torch.sin(ang)) ** 2)
            arc = _unit(torch.exp(-1.678 * d / T("source_hlr")[:, None, None]))
            comps.append((arc, T("source_frac"), "accent"))
    elif cls in ("spiral", "barred_spiral"):
        arm_frac = T("arm_frac")
        comps.append((_sersic(grid, x0, y0, hlr * 0.3, T("bulge_n"), torch.clamp(q + 0.3, max=1.0), pa), bf, "bulge"))
        comps.append((_sersic(grid, x0, y0, hlr, ones, q, pa), (1 - bf) * (1 - arm_frac), "disk"))
        r0 = hlr * (T("bar_len") if cls == "barred_spiral" else 0.25 * ones)
        phase = torch.zeros_like(hlr) if cls == "barred_spiral" else T("phase")
        m = torch.full_like(hlr, 2.0) if cls == "barred_spiral" else T("arm_count")
        arms = _unit(_arms(grid, x0, y0, hlr, q, pa, m, T("arm_pitch_deg"), phase, r0) + 1e-12)
        comps.append((arms, (1 - bf) * arm_frac, "accent"))
        if cls == "barred_spiral":
            bar_q = torch.full_like(hlr, 0.25)
            comps.append((_sersic(grid, x0, y0, r0 * 0.7, 0.5 * ones, bar_q * q, pa), T("bar_frac"), "bulge"))
    elif cls == "edge_on":
        bulge_disk(x0, y0, hlr, ones, q, pa)
        u, v = grid.frame(x0, y0, pa, ones)
        thickness = (hlr * q * 0.35)[:, None, None]
        lane = 1 - T("dust_tau")[:, None, None] * torch.exp(-0.5 * (v / thickness) ** 2)
        img, w, col = comps[-1]
        comps[-1] = (_unit(img * lane), w, col)
    elif cls == "merger":
        ratio = T("companion_ratio")
        sep, ang = T("companion_sep") * hlr, T("companion_pa") * _DEG
        x1, y1 = x0 + sep * torch.cos(ang), y0 + sep * torch.sin(ang)
        w1, w2 = 1 / (1 + ratio), ratio / (1 + ratio)
        tail = T("tail_frac")
        bulge_disk(x0, y0, hlr, w1 * (1 - tail), q, pa)
        bulge_disk(x1, y1, hlr * torch.sqrt(ratio), w2 * (1 - tail), torch.clamp(q + 0.2, max=1.0), pa + 60)
        # Tidal tails: a loose, sharp two-armed pattern around the pair's centre of light.
        xc, yc = (x0 + x1 * ratio) / (1 + ratio), (y0 + y1 * ratio) / (1 + ratio)
        tails = _arms(grid, xc, yc, hlr * 4, ones, T("companion_pa"), torch.full_like(hlr, 2.0),
                      torch.full_like(hlr, 45.0), T("phase"), sep * 0.6, sharpness=6.0)
        comps.append((_unit(tails + 1e-12), tail, "accent"))
    elif cls == "ring":
        u, v = grid.frame(x0, y0, pa, q)
        rr = torch.sqrt(u * u + v * v)
        radius = (T("ring_radius") * hlr)[:, None, None]
        ring = _unit(torch.exp(-0.5 * ((rr - radius) / (0.15 * radius)) ** 2))
        nuc_x, nuc_y = x0 + 0.3 * hlr * torch.cos(T("phase")), y0 + 0.3 * hlr * torch.sin(T("phase"))
        comps.append((ring, 0.5 * ones, "accent"))
        comps.append((_sersic(grid, nuc_x, nuc_y, hlr * 0.25, 2.0 * ones, ones, pa), 0.3 * ones, "bulge"))
        comps.append((_sersic(grid, x0, y0, hlr, ones, q, pa), 0.2 * ones, "disk"))
    elif cls == "artifact":
        bulge_disk(x0, y0, hlr, ones, q, pa)
    else:  # pragma: no cover - tasks only name known morphologies
        raise ValueError(cls)
    return comps


@lru_cache(maxsize=64)
def _psf_fft(fwhm: float, beta: float, size: int, step: float) -> torch.Tensor:
    """rfft2 of a unit-sum Moffat PSF centred for circular convolution on a size x size grid."""
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    c = (torch.arange(size, dtype=torch.float64) - size // 2) * step
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    psf = (1 + (xx * xx + yy * yy) / alpha**2) ** (-beta)
    psf = torch.fft.ifftshift(psf / psf.sum())
    return torch.fft.rfft2(psf.float())


def _artifact_layer(p, idx, grid, pix, total_r, nb, survey_name: str):
    """Satellite trails and bright stars with diffraction spikes (drawn before the PSF), in random colours."""
    n = len(idx)
    kind = np.asarray(p["artifact_kind"])[idx]
    amp = _t(p["artifact_amp"], idx)
    layer = torch.zeros(n, nb, grid.size, grid.size)
    half = grid.size * grid.step / 2
    seeds = np.asarray(p["seed"])[idx]
    for i in range(n):
        if kind[i] == "column":
            continue
        rng = np.random.default_rng(_galaxy_seed(seeds[i], survey_name) + 1)  # per galaxy: batch-independent
        colour = torch.as_tensor(rng.dirichlet(np.full(nb, 0.7)), dtype=torch.float32) * nb
        px, py = rng.uniform(-0.7, 0.7, 2) * half
        if kind[i] == "trail":
            ang = rng.uniform(0, math.pi)
            d = (grid.x - px) * math.sin(ang) - (grid.y - py) * math.cos(ang)
            img = _unit(torch.exp(-0.5 * (d / 0.3) ** 2)[None])[0]
            # Trails usually cross an exposure in one or two bands only.
            bands = torch.as_tensor(rng.random(nb) < 0.5, dtype=torch.float32)
            bands[rng.integers(nb)] = 1.0
            c = colour * bands
        else:
            dx, dy = (grid.x - px).abs(), (grid.y - py).abs()
            spikes = (torch.exp(-0.5 * (torch.minimum(dx, dy) / 0.15) ** 2)
                      * torch.exp(-torch.maximum(dx, dy) / (0.25 * half)))
            core = torch.exp(-0.5 * (dx * dx + dy * dy) / grid.step**2)
            img = _unit((core + 0.02 * spikes)[None])[0]
            c = colour
        layer[i] = img[None] * (c * amp[i] * total_r[i] * 1.5)[:, None, None]
    return layer


def _galaxy_seed(seed: int, survey: str) -> int:
    return (int(seed) * 1000003 + zlib.crc32(survey.encode())) % (2**63)


def render(
    params: dict[str, np.ndarray], survey: Survey, size_px: int, bands: tuple[str, ...] | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Observe galaxies through `survey`.

    Returns stamps (N, n_bands, size_px, size_px) float32 in nanomaggies and the noiseless total flux drawn in
    each band (N, n_bands), from which catalogue magnitudes are computed. Noise is seeded per galaxy from its
    `seed` and the survey's name, so the same galaxy renders identically whatever batch it is in.
    """
    bands = bands or survey.bands
    nb = len(bands)
    n = len(params["class_name"])
    pix_out, pix = survey.pixel_arcsec, survey.draw_pixel_arcsec
    resample = survey.native_pixel_arcsec is not None
    n_native = math.ceil(size_px * pix_out / pix - 1e-6) + 4 if resample else size_px
    pad = math.ceil(1.5 * max(survey.fwhm_arcsec) / pix)  # Moffat wings beyond 1.5 FWHM are < 3% of the peak
    size = (n_native + 2 * pad) * OVERSAMPLE
    size += (-size) % 8  # FFT-friendly
    grid = _Grid(size, pix / OVERSAMPLE)
    band_idx = [survey.bands.index(b) for b in bands]
    psf_ffts = torch.stack(
        [_psf_fft(survey.fwhm_arcsec[b], survey.moffat_beta, size, pix / OVERSAMPLE) for b in band_idx]
    )
    sky = torch.tensor([survey.sky_sigma_nmgy(b) for b in band_idx])
    gain = torch.tensor([survey.gain_e_per_nmgy[b] for b in band_idx])

    out = torch.empty(n, nb, size_px, size_px)
    total_flux = np.zeros((n, nb))
    classes = np.asarray(params["class_name"])
    for cls in np.unique(classes):
        idx = np.nonzero(classes == cls)[0]
        r_flux = _t(10 ** (-0.4 * (np.asarray(params["r_mag"]) - 22.5)), idx)
        img = torch.zeros(len(idx), nb, size, size)
        for comp, weight, colour in _components(str(cls), params, idx, grid, pix_out):
            offs = torch.stack([_t(params[f"{colour}_colour_{b}"], idx) for b in bands], dim=1)
            flux = (r_flux * weight)[:, None] * 10 ** (-0.4 * offs)
            img += comp[:, None] * flux[:, :, None, None]
        total_flux[idx] = img.sum(dim=(-2, -1)).double().numpy()
        if cls == "artifact":
            img += _artifact_layer(params, idx, grid, pix, r_flux, nb, survey.name)
        img = torch.fft.irfft2(torch.fft.rfft2(img) * psf_ffts[None], s=(size, size))
        img = F.avg_pool2d(img, OVERSAMPLE) * OVERSAMPLE**2  # sum sub-pixels: flux per native pixel
        lo = (img.shape[-1] - n_native) // 2
        img = img[..., lo : lo + n_native, lo : lo + n_native]
        noise = torch.stack(
            [
                torch.randn(nb, n_native, n_native,
                            generator=torch.Generator().manual_seed(_galaxy_seed(s, survey.name)))
                for s in np.asarray(params["seed"])[idx]
            ]
        )
        sigma = torch.sqrt(sky[None, :, None, None] ** 2 + img.clamp_min(0) / gain[None, :, None, None])
        img = img + sigma * noise
        if resample:
            img = _resample(img, n_native, pix, size_px, pix_out)
        if cls == "artifact":
            _bad_columns(img, params, idx, sky)
        out[idx] = img
    return out, total_flux


def render_pair(params: dict[str, np.ndarray], survey_a: Survey, survey_b: Survey, size_px: int):
    """The same galaxies observed through two surveys (for diagnostics and tests, never for training: a real
    target survey does not come paired with the source)."""
    return render(params, survey_a, size_px)[0], render(params, survey_b, size_px)[0]


def _resample(img: torch.Tensor, n_native: int, pix: float, size_px: int, pix_out: float) -> torch.Tensor:
    """Bicubic resampling from the native grid to the delivered one, conserving surface brightness."""
    c = (torch.arange(size_px, dtype=torch.float32) - (size_px - 1) / 2) * pix_out / pix  # native px units
    norm = (2 * (c + (n_native - 1) / 2) + 1) / n_native - 1
    gy, gx = torch.meshgrid(norm, norm, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None].expand(img.shape[0], -1, -1, -1)
    out = F.grid_sample(img, grid, mode="bicubic", align_corners=False)
    return out * (pix_out / pix) ** 2


def _bad_columns(img: torch.Tensor, params: dict, idx: np.ndarray, sky: torch.Tensor) -> None:
    """Saturation bleed or hot columns: detector defects, added after the optics and noise."""
    kind = np.asarray(params["artifact_kind"])[idx]
    amp = np.asarray(params["artifact_amp"])[idx]
    seeds = np.asarray(params["seed"])[idx]
    size = img.shape[-1]
    for i in np.nonzero(kind == "column")[0]:
        rng = np.random.default_rng(int(seeds[i]) + 17)
        col = rng.integers(size // 6, size - size // 6)
        width = rng.integers(1, 3)
        level = sky * 8 * amp[i] * torch.as_tensor(rng.uniform(0.3, 1.0, img.shape[1]), dtype=torch.float32)
        img[i, :, :, col : col + width] += level[:, None, None]
