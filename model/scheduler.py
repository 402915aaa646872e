"""The interface every sampler implements, after diffusers' schedulers: a scheduler owns the
timesteps and the math of one update; the caller owns the loop, the network and the noise, so
that it alone decides how each image is seeded (model/sampling.py).

    scheduler.reset()                          # a new batch starts without history
    for t, t_prev in scheduler.pairs():        # t_prev = -1 on the last step: the clean image
        out = net(x, t)
        noise = draw_noise() if scheduler.needs_noise(t, t_prev) else None
        x = scheduler.step(out, t, t_prev, x, noise)

A new sampler is one module with a Scheduler subclass, and one line in model/registry.py.
Pure math: no files, no params import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from canopy.model.diffusion import GaussianDiffusion  # or a continuous model/process.py one


class Scheduler(ABC):
    diffusion: GaussianDiffusion
    timesteps: list[int]  # strictly decreasing, from T - 1: the network sees each once
    clip: bool  # clip the x0 estimates to [-1, 1], where images live
    # What the manifest records of a run: the noise it adds (0 deterministic, 1 ancestral
    # DDPM) and how its timesteps were chosen ("all", or a name from model/spacing.py).
    eta: float
    spacing: str
    # The starting noise's scale, as diffusers names it: 1 for the VP process (x_T ~ N(0, I)),
    # sigma_max for EDM's (x_T ~ N(0, sigma_max^2 I)).
    init_noise_sigma: float = 1.0

    @classmethod
    @abstractmethod
    def from_settings(
        cls, diffusion: GaussianDiffusion, *, steps: int, eta: float, spacing: str
    ) -> Scheduler:
        """Built from the `sample` params, the same for every scheduler: each ignores the
        settings it has no use for and raises ValueError for those it cannot honour."""

    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) for each step, t_prev = -1 on the last (0.0, sigma = 0, under a
        continuous process)."""
        return list(zip(self.timesteps, [*self.timesteps[1:], self.final_time]))

    @property
    def final_time(self) -> int | float:
        """The t_prev of the last step: the clean image."""
        return 0.0 if self.diffusion.continuous else -1

    def is_final(self, t_prev: int | float) -> bool:
        return t_prev <= 0 if self.diffusion.continuous else t_prev < 0

    @abstractmethod
    def needs_noise(self, t: int, t_prev: int) -> bool:
        """Whether the step from t to t_prev adds fresh noise, which the caller then passes."""

    @abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t_prev} from x_t and the network's output at (x_t, t). `noise` (like x_t) is
        required where needs_noise(t, t_prev), ignored elsewhere."""

    def reset(self) -> None:
        """Forget what was carried from step to step, before a new batch (none by default)."""

    def _predict_x0_eps(
        self, model_output: torch.Tensor, t: int, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's estimates of (x_0, eps) at (x_t, t); x_0 clipped if self.clip (eps
        left as the network implied it). x_t in float32."""
        if self.diffusion.continuous:
            x0, eps = self.diffusion.predict_x0_eps(x_t, t, model_output)
        else:
            t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
            x0, eps = self.diffusion.predict_x0_eps(x_t, t_batch, model_output)
        if self.clip:
            x0 = self.diffusion.clip_x0(x0)
        return x0, eps


def continuous_times(diffusion, steps: int, spacing: str, sampler: str) -> list[float]:
    """The noise levels a sampler visits under a continuous process (Karras spacing only)."""
    if spacing != "karras":
        raise ValueError(f"{sampler} under a continuous process steps at karras spacing, got "
                         f"spacing {spacing!r}: set sample.spacing to karras")
    return diffusion.sampling_times(steps)
