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

from canopy.model.diffusion import GaussianDiffusion


class Scheduler(ABC):
    diffusion: GaussianDiffusion
    timesteps: list[int]  # strictly decreasing, from T - 1: the network sees each once
    clip: bool  # clip the x0 estimates to [-1, 1], where images live
    # What the manifest records of a run: the noise it adds (0 deterministic, 1 ancestral
    # DDPM) and how its timesteps were chosen ("all", or a name from model/spacing.py).
    eta: float
    spacing: str

    @classmethod
    @abstractmethod
    def from_settings(
        cls, diffusion: GaussianDiffusion, *, steps: int, eta: float, spacing: str
    ) -> Scheduler:
        """Built from the `sample` params, the same for every scheduler: each ignores the
        settings it has no use for and raises ValueError for those it cannot honour."""

    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) for each step, t_prev = -1 on the last."""
        return list(zip(self.timesteps, [*self.timesteps[1:], -1]))

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
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0, eps = self.diffusion.predict_x0_eps(x_t, t_batch, model_output)
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)
        return x0, eps
