"""The spectral preconditioning: EDM's skip connection as the Wiener filter of the data's power
spectrum, so the denoiser keeps, with no help from the network, whatever noise leaves readable.

EDM's denoiser is D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with the scalar
c_skip = sigma_data^2 / (sigma_data^2 + sigma^2): the best *linear* estimate of x_0 from x when
every pixel is an independent variable of variance sigma_data^2. Images are not: their power is
concentrated in the low frequencies. In a 64 px tile the mean colour (the DC coefficient, which
carries 4,096 pixels' worth of signal) still stands well above noise of sigma 20, where the
scalar c_skip is 0.0025. The network must then learn to carry the tile's overall colour and
layout through on its own, at noise levels that training rarely draws; it learns too little
of it and pulls every tile towards the average one (docs/benchmarks.md, "Why every sample looks
alike").

Here the skip is the Wiener filter of a stationary Gaussian with the train tiles' power spectrum
P(f) (per channel, radially averaged, in the standardised units where the mean of P is 1):

    c_skip(f) = P(f) / (P(f) + sigma^2)                 applied in the Fourier domain
    c_out^2   = mean_f P(f) sigma^2 / (P(f) + sigma^2)   the Wiener estimate's error per pixel
    c_in      = 1 / sqrt(1 + sigma^2)                    as EDM with sigma_data = 1

so the network's target (x_0 - c_skip x) / c_out has unit variance at every noise level when the
data is that Gaussian, and what the network learns is the part of the image that is not. With a
flat spectrum (P = 1 everywhere) this is EDM's preconditioning with sigma_data = 1 exactly. The
loss weight stays lambda = 1 / c_out^2 (the squared error of F against its target).

The spectrum is measured at the tile size n; an image of another size m (crop training) reads it
at the same frequency in cycles per pixel, and its DC power, m^2 Var(mean), as if its mean varied
as much as a tile's (the best guess without measuring crops; the network corrects the rest).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class SpectralSkip:
    """The Wiener filter of a radially averaged power spectrum, for images of any size.

    `radial[c][r]` is channel c's mean power at radius r (integer frequency units of the
    `tile_size` px tiles; r = 0 is the DC coefficient), in standardised units."""

    def __init__(self, tile_size: int, radial: Sequence[Sequence[float]]) -> None:
        if tile_size < 2:
            raise ValueError(f"tile_size must be at least 2, got {tile_size}")
        profile = torch.tensor([list(map(float, row)) for row in radial], dtype=torch.float64)
        if profile.ndim != 2 or profile.shape[1] < 2 or not bool((profile > 0).all()):
            raise ValueError("the power spectrum needs, per channel, at least two positive "
                             "radial bins")
        self.tile_size = tile_size
        self.radial = profile
        self._grids: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, spectrum: Mapping[str, Any]) -> SpectralSkip:
        return cls(int(spectrum["tile_size"]), spectrum["radial"])

    # --- the spectrum on an image's frequency grid -----------------------------------------
    def power(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(P on the rfft2 grid (C, H, W//2+1), P on the full fft2 grid (C, H, W)), float64."""
        key = (height, width)
        if key not in self._grids:
            self._grids[key] = (self._power_on(height, width, half=True),
                                self._power_on(height, width, half=False))
        return self._grids[key]

    def _power_on(self, height: int, width: int, half: bool) -> torch.Tensor:
        fy = torch.fft.fftfreq(height, dtype=torch.float64).reshape(-1, 1)
        fx = (torch.fft.rfftfreq(width, dtype=torch.float64) if half
              else torch.fft.fftfreq(width, dtype=torch.float64)).reshape(1, -1)
        # radius in the tiles' frequency units (cycles per tile of tile_size px)
        radius = (fy**2 + fx**2).sqrt() * self.tile_size
        last = self.radial.shape[1] - 1
        r = radius.clamp(max=last)
        lo = r.floor().long().clamp(max=last - 1)
        frac = r - lo
        power = self.radial[:, lo] * (1 - frac) + self.radial[:, lo + 1] * frac
        # the DC coefficient is N x Var(image mean): scale the tiles' by the pixel count
        dc = self.radial[:, 0] * (height * width) / self.tile_size**2
        power[:, 0, 0] = dc
        return power

    # --- the preconditioning ---------------------------------------------------------------
    def c_out(self, sigma: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """sqrt(mean_f P sigma^2 / (P + sigma^2)) per level of `sigma` (1-D), float64."""
        _, full = self.power(height, width)
        s2 = sigma.double().reshape(-1, 1, 1, 1) ** 2
        p = full.unsqueeze(0)
        return (p * s2 / (p + s2)).mean(dim=(1, 2, 3)).sqrt()

    def skip(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """c_skip(f) applied to x (B, C, H, W) at one level per image (`sigma` of B or 1
        entries): the Wiener estimate of x_0, float32."""
        height, width = x.shape[-2:]
        half, _ = self.power(height, width)
        s2 = sigma.double().reshape(-1, 1, 1, 1) ** 2
        p = half.unsqueeze(0)
        gain = (p / (p + s2)).to(device=x.device, dtype=torch.float32)
        spectrum = torch.fft.rfft2(x.float(), norm="ortho")
        return torch.fft.irfft2(spectrum * gain, s=(height, width), norm="ortho")

