"""Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
algorithm 2): every timestep, T-1 down to 0, as a Scheduler (model/scheduler.py).

Each step samples the posterior q(x_{t-1} | x_t, x_0) with x_0 replaced by the network's
estimate (DDPM eq. 6-7):

    mu_t    = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0_hat
            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
    sigma^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
    x_{t-1} = mu_t + sigma z,  z ~ N(0, I), and no noise on the last step (t = 0).

Under a continuous process (model/process.py) there are no timesteps to take one at a time:
DDPM is then ancestral sampling over `steps` noise levels of the process, DDIM's update with
eta = 1 (model/ddim.py), the posterior q(x_prev | x_t, x0_hat) of the same process.

Pure math: no files, no params import.
"""

from __future__ import annotations

import torch

from canopy.model.ddim import continuous_step
from canopy.model.diffusion import GaussianDiffusion
from canopy.model.scheduler import Scheduler, continuous_times


class DDPMScheduler(Scheduler):
    eta = 1.0  # the posterior's own noise: DDIM with eta = 1 over every timestep
    spacing = "all"

    def __init__(self, diffusion: GaussianDiffusion, clip: bool = True, steps: int | None = None,
                 spacing: str = "karras") -> None:
        self.diffusion = diffusion
        self.clip = clip
        if diffusion.continuous:
            # No timesteps to take one at a time: ancestral steps (DDIM with eta = 1, the
            # posterior's own noise) over `steps` noise levels of the process.
            self.timesteps = continuous_times(diffusion, steps or 0, spacing, "ddpm")
            self.init_noise_sigma = float(diffusion.sigma(self.timesteps[0]))
            self.spacing = spacing
            return
        self.timesteps = list(range(diffusion.timesteps - 1, -1, -1))
        betas = diffusion.betas.double()
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        one = torch.ones(1, dtype=torch.float64, device=betas.device)  # the diffusion may be on a GPU
        alpha_bar_prev = torch.cat([one, alpha_bar[:-1]])
        # Coefficients in float64, stored as float32 like the diffusion's buffers.
        self.coef_x0 = (alpha_bar_prev.sqrt() * betas / (1.0 - alpha_bar)).float()
        self.coef_xt = ((1.0 - betas).sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).float()
        self.sigma = ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * betas).sqrt().float()

    @classmethod
    def from_settings(
        cls, diffusion: GaussianDiffusion, *, steps: int, eta: float, spacing: str
    ) -> DDPMScheduler:
        if diffusion.continuous:
            return cls(diffusion, steps=steps, spacing=spacing)
        return cls(diffusion)  # every timestep, its own noise: steps, eta and spacing unused

    def needs_noise(self, t: int, t_prev: int) -> bool:
        if self.diffusion.continuous:
            return not self.is_final(t_prev)
        return t > 0

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t-1} from x_t and the network's output at (x_t, t); `noise` (like x_t) is drawn
        by the caller (so it controls seeding per image) and is needed for t > 0."""
        if self.diffusion.continuous:
            return continuous_step(self, model_output, t, t_prev, x_t.float(), 1.0, noise)
        if t_prev != t - 1:
            raise ValueError(f"DDPM steps one timestep at a time: t={t} to t_prev={t_prev}")
        x_t = x_t.float()
        x0, _ = self._predict_x0_eps(model_output, t, x_t)
        device = x_t.device
        mean = self.coef_x0[t].to(device) * x0 + self.coef_xt[t].to(device) * x_t
        if not self.needs_noise(t, t_prev):
            return mean
        if noise is None:
            raise ValueError("DDPM steps with t > 0 need `noise`")
        return mean + self.sigma[t].to(device) * noise
