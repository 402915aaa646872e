"""Preview grids of EMA samples during training (a few DDIM steps: a glance, not an eval)."""

from __future__ import annotations

import numpy as np
import torch

from canopy.imaging import contact_sheet
from canopy.model.ddim import DDIMScheduler
from canopy.model.diffusion import GaussianDiffusion
from canopy.model.images import to_uint8
from canopy.seeding import Stream, torch_seed
from canopy.train.runtime import Runtime


@torch.no_grad()
def sample_grid(
    net: torch.nn.Module,
    diffusion: GaussianDiffusion,
    runtime: Runtime,
    n: int,
    steps: int,
    size: int,
    seed: int,
) -> np.ndarray:
    """(H, W, 3) uint8 grid of n images. The starting noise is the same at every preview, so
    successive grids show the same samples sharpening."""
    gen = torch.Generator("cpu").manual_seed(torch_seed(seed, Stream.PREVIEW_NOISE))
    x = torch.randn((n, net.channels, size, size), generator=gen).to(runtime.device)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scheduler = DDIMScheduler(diffusion, min(steps, diffusion.timesteps), eta=0.0,
                              spacing="quadratic")  # as `canopy sample` by default
    for t, t_prev in scheduler.pairs():
        with runtime.autocast():
            out = net(x, torch.tensor([t], device=runtime.device))
        x = scheduler.step(out, t, t_prev, x)
    return contact_sheet(to_uint8(x).cpu().numpy())

