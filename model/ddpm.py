"""Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
algorithm 2), in the style of a diffusers scheduler: the caller owns the loop and the noise.

    for t in scheduler.timesteps:                      # T-1, T-2, ..., 0
        out = model(x, t)
        x = scheduler.step(out, t, x, noise=...)

Each step samples the posterior q(x_{t-1} | x_t, x_0) with x_0 replaced by the network's
estimate (DDPM eq. 6-7):

    mu_t    = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0_hat
            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
    sigma^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
    x_{t-1} = mu_t + sigma z,  z ~ N(0, I), and no noise on the last step (t = 0).

Pure math: no files, no params import.
"""

from __future__ import annotations

import torch

from canopy.model.diffusion import GaussianDiffusion


class DDPMScheduler:
    def __init__(self, diffusion: GaussianDiffusion, clip: bool = True) -> None:
        self.diffusion = diffusion
        self.clip = clip
        self.timesteps = list(range(diffusion.timesteps - 1, -1, -1))
        betas = diffusion.betas.double()
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        one = torch.ones(1, dtype=torch.float64, device=betas.device)  # the diffusion may be on a GPU
        alpha_bar_prev = torch.cat([one, alpha_bar[:-1]])
        # Coefficients in float64, stored as float32 like the diffusion's buffers.
        self.coef_x0 = (alpha_bar_prev.sqrt() * betas / (1.0 - alpha_bar)).float()
        self.coef_xt = ((1.0 - betas).sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).float()
        self.sigma = ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * betas).sqrt().float()

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def needs_noise(self, t: int) -> bool:
        return t > 0

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t-1} from x_t and the network's output at (x_t, t); `noise` (like x_t) is drawn
        by the caller (so it controls seeding per image) and is needed for t > 0."""
        d = self.diffusion
        x_t = x_t.float()
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0, _ = d.predict_x0_eps(x_t, t_batch, model_output)
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)  # images live in [-1, 1]
        device = x_t.device
        mean = self.coef_x0[t].to(device) * x0 + self.coef_xt[t].to(device) * x_t
        if t == 0:
            return mean
        if noise is None:
            raise ValueError("DDPM steps with t > 0 need `noise`")
        return mean + self.sigma[t].to(device) * noise
