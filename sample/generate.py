"""The images of `canopy sample`: image i is seeded by (seed, i) alone, whatever the batch, and
drawn by the sampling loop that the training previews share (model/sampling.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from canopy.errors import UserError
from canopy.model.sampling import NonFiniteImages, sample_images
from canopy.model.scheduler import Scheduler
from canopy.seeding import Stream, torch_seed


def generate(net: torch.nn.Module, scheduler: Scheduler, indices: Sequence[int], seed: int,
             shape: tuple[int, int, int], device: torch.device,
             amp_dtype: torch.dtype | None, progress: bool = False,
             channels_last: bool = False, conditions: torch.Tensor | None = None,
             guidance: float = 1.0, guide: torch.nn.Module | None = None,
             autoguidance: float = 1.0,
             guide_sigmas: tuple[float, float] = (0.0, float("inf"))) -> torch.Tensor:
    """Images `indices` as a uint8 tensor (B, H, W, C) on the CPU; a conditioned network's
    images under their condition rows `conditions` with classifier-free `guidance`; with
    `guide`, autoguided by weight `autoguidance` at the noise levels in `guide_sigmas`
    (model/sampling.py)."""
    seeds = [torch_seed(seed, Stream.SAMPLE_NOISE, i) for i in indices]
    with tqdm(total=len(scheduler.timesteps), desc="steps", leave=False,
              disable=not progress) as bar:
        try:
            return sample_images(net, scheduler, seeds, shape, device, amp_dtype, channels_last,
                                 on_step=bar.update, refuse_non_finite=True,
                                 conditions=conditions, guidance=guidance, guide=guide,
                                 autoguidance=autoguidance, guide_sigmas=guide_sigmas)
        except NonFiniteImages as err:
            # A black image written in place of a sample would pass for one: refuse instead.
            lost = [indices[i] for i in err.positions]
            raise UserError(f"the network produced NaN or infinite values for image(s) {lost[:5]}"
                            f"{' ...' if len(lost) > 5 else ''}: the weights are damaged or "
                            "training diverged; re-run `canopy train`") from None
