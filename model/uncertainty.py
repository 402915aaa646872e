"""A learned loss weight per noise level: EDM2's uncertainty weighting.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 5
and appendix B.2, after Kendall & Gal 2018: training minimises, per image,

    L / exp(u(sigma)) + u(sigma)

where L is EDM's weighted denoising loss at the image's noise level and u is a tiny network of
the noise level alone. For a fixed network the best u(sigma) is ln E[L | sigma], so every noise
level ends up contributing about equally to the gradient: the levels whose loss is small
(the lowest noise, where fine texture is finished, and the highest, where the layout is set)
are no longer drowned out by the middle ones, without changing which levels are drawn.

u is only a training device: the denoiser does not use it, and the export does not carry it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# EDM2's sizes: 128 random Fourier features of c_noise, then one linear layer.
FOURIER_CHANNELS = 128
# The features are fixed, not learned; drawn from their own generator so that building this
# module leaves the global RNG (which draws the network's initial weights) untouched.
FOURIER_SEED = 0


class NoiseLevelUncertainty(nn.Module):
    """u(c_noise): random Fourier features of EDM's c_noise = ln(sigma) / 4, then a linear
    layer. The layer starts at zero, so the first steps train exactly as the fixed weighting
    does and u then moves towards ln E[L | sigma]."""

    def __init__(self, channels: int = FOURIER_CHANNELS) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(FOURIER_SEED)
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels, generator=gen))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=gen))
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        """ln of the expected loss at each noise level: (B,) from c_noise (B,), in float32."""
        features = (torch.outer(c_noise.float(), self.freqs) + self.phases).cos() * math.sqrt(2)
        return self.linear(features).reshape(-1)


def weighted(per_image_loss: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """L / exp(u) + u per image: the loss the network and u minimise together."""
    return per_image_loss / log_variance.exp() + log_variance
