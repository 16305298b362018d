"""Stamps read from the memory-mapped pixel file when a batch needs them, stretched on the device.

A split holds row numbers, not pixels: `stamps[idx]` reads those rows of `pixels.npy` (float16 on disk) and maps
them to network inputs there and then. Trials on one node therefore share the page cache's one copy of the file,
and a trial's own memory does not grow with the data set.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Stamps", "stretch"]


def stretch(flux: torch.Tensor, softening: list[float]) -> torch.Tensor:
    """arcsinh(flux / s) / 3 with one softening s per band (nanomaggies): the same mapping for every domain, in
    training and in prediction, computed wherever `flux` lives."""
    s = torch.tensor(softening, dtype=torch.float32, device=flux.device)[None, :, None, None]
    return _asinh(flux.float() / s) / 3.0


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """asinh(x) from vectorised operations: torch's CPU asinh is a scalar loop, 2-5x slower, which showed
    once the stretch moved from load time into every batch. As accurate as torch.asinh against float64 (1e-7)
    and finite for every finite x (hypot, and a / (1 + hypot) <= 1, cannot overflow)."""
    a = x.abs()
    return torch.copysign(torch.log1p(a + a * (a / (1 + torch.hypot(a, torch.ones((), device=x.device))))), x)


class Stamps:
    """Network inputs for `rows` of a (N, C, H, W) pixel array (usually a read-only memory map).

    Indexing with a slice, an integer tensor, a list or a numpy array returns a float32 tensor (n, C, H, W) on
    `device` (an int: one stamp (C, H, W));
    `subset` and `to` return new views without reading anything.
    """

    def __init__(self, pixels: np.ndarray, rows: np.ndarray, softening: list[float],
                 device: torch.device | str = "cpu"):
        self.pixels, self.rows, self.softening = pixels, np.asarray(rows, dtype=np.int64), list(softening)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.pixels.shape[1:])

    def _rows(self, index) -> np.ndarray:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return np.atleast_1d(self.rows[index])

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):  # one stamp (C, H, W), as a tensor's x[i]
            return self[[index]][0]
        return stretch(self.flux(index), self.softening)

    def flux(self, index) -> torch.Tensor:
        """The rows' fluxes in nanomaggies (n, C, H, W), float32 on `device`, before the stretch."""
        rows = self._rows(index)
        # Read in file order (the page cache and read-ahead like it), then put the stamps back in the asked order.
        order = np.argsort(rows, kind="stable")
        flux = np.empty((len(rows), *self.pixels.shape[1:]), dtype=self.pixels.dtype)
        flux[order] = self.pixels[rows[order]]
        return torch.from_numpy(flux).to(self.device).float()

    def subset(self, index) -> Stamps:
        return Stamps(self.pixels, self._rows(index), self.softening, self.device)

    def to(self, device: torch.device | str) -> Stamps:
        return Stamps(self.pixels, self.rows, self.softening, device)
