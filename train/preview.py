"""Preview grids of EMA samples during training (a few DDIM steps: a glance, not an eval)."""

from __future__ import annotations

import numpy as np
import torch

from canopy.imaging import contact_sheet
from canopy.model.ddim import DDIMScheduler
from canopy.model.diffusion import GaussianDiffusion
from canopy.model.sampling import sample_images
from canopy.seeding import Stream, torch_seed
from canopy.train.runtime import Runtime


def sample_grid(
    net: torch.nn.Module,
    diffusion: GaussianDiffusion,
    runtime: Runtime,
    n: int,
    steps: int,
    size: int,
    seed: int,
) -> np.ndarray:
    """(H, W, 3) uint8 grid of n images, drawn by the loop of `canopy sample`. The starting
    noise is the same at every preview, so successive grids show the same samples sharpening."""
    if diffusion.continuous:  # the process's own spacing; the network wrapped in its denoiser
        scheduler = DDIMScheduler(diffusion, steps, eta=0.0, spacing="karras")
    else:
        scheduler = DDIMScheduler(diffusion, min(steps, diffusion.timesteps), eta=0.0,
                                  spacing="quadratic")  # as `canopy sample` by default
    seeds = [torch_seed(seed, Stream.PREVIEW_NOISE, i) for i in range(n)]
    images = sample_images(diffusion.denoiser(net), scheduler, seeds, (net.channels, size, size),
                           runtime.device, runtime.amp_dtype, runtime.channels_last)
    return contact_sheet(images.numpy())
