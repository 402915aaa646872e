"""DDIM sampling steps (Song et al. 2021, "Denoising Diffusion Implicit Models") as a Scheduler
(model/scheduler.py), over timesteps spaced by model/spacing.py.

eta = 0 is deterministic DDIM; eta = 1 with as many steps as training timesteps is ancestral
DDPM sampling (Ho et al. 2020, algorithm 2). Pure math: no files, no params import.
"""

from __future__ import annotations

import math

import torch

from canopy.model.diffusion import GaussianDiffusion
from canopy.model.scheduler import Scheduler, continuous_times
from canopy.model.spacing import sampling_timesteps


class DDIMScheduler(Scheduler):
    """One DDIM update from t to t_prev < t (Song et al. 2021, eq. 12 and 16):

        x0_hat = the network's estimate of x_0 (clipped to [-1, 1]); eps_hat re-derived from it
        sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
        x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z

    with a = alpha_bar and, past the last step (t_prev = -1), a_prev = 1 so that x_prev = x0_hat.

    Under a continuous process (model/process.py) the same update in the process's own
    alpha(t), sigma(t), over the noise levels of its Karras spacing, the network's output
    being the denoiser's x_0 estimate:

        x0_hat = D(x_t; t) (clipped), eps_hat = (x_t - alpha_t x0_hat) / sigma_t
        s      = eta sigma_prev sqrt(1 - (alpha_t sigma_prev / (alpha_prev sigma_t))^2)
        x_prev = alpha_prev x0_hat + sqrt(sigma_prev^2 - s^2) eps_hat + s z

    (with alpha^2 = a and sigma^2 = 1 - a this is the formula above), and x_prev = x0_hat at
    sigma_prev = 0. eta = 1 is ancestral sampling (model/ddpm.py uses it so).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int,
        eta: float = 0.0,
        clip: bool = True,
        spacing: str = "trailing",
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.diffusion = diffusion
        if diffusion.continuous:
            self.timesteps = continuous_times(diffusion, steps, spacing, "ddim")
            self.init_noise_sigma = float(diffusion.sigma(self.timesteps[0]))
        else:
            self.timesteps = sampling_timesteps(diffusion.timesteps, steps, spacing)
        self.eta = eta
        self.clip = clip
        self.spacing = spacing

    @classmethod
    def from_settings(
        cls, diffusion: GaussianDiffusion, *, steps: int, eta: float, spacing: str
    ) -> DDIMScheduler:
        return cls(diffusion, steps, eta, spacing=spacing)

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return self.eta > 0 and not self.is_final(t_prev)

    def _alpha_bar(self, t: int) -> torch.Tensor:
        ab = self.diffusion.alphas_cumprod
        return ab[t] if t >= 0 else torch.ones((), dtype=ab.dtype, device=ab.device)

    def sigma(self, t: int, t_prev: int) -> torch.Tensor:
        a_t, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
        return self.eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t_prev} from x_t and the network's output at (x_t, t). `noise` (like x_t) is
        needed when eta > 0; the caller draws it so that it controls seeding per image."""
        d = self.diffusion
        x_t = x_t.float()
        if d.continuous:
            return continuous_step(self, model_output, t, t_prev, x_t, self.eta, noise)
        x0, eps = self._predict_x0_eps(model_output, t, x_t)
        if self.clip:
            # Re-deriving eps from the clipped x0 keeps the two consistent with x_t.
            a = d.sqrt_alphas_cumprod[t]
            s = d.sqrt_one_minus_alphas_cumprod[t]
            eps = (x_t - a * x0) / s
        a_prev = self._alpha_bar(t_prev)
        sigma = self.sigma(t, t_prev)
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if self.needs_noise(t, t_prev):
            if noise is None:
                raise ValueError("eta > 0 needs `noise` for the stochastic part of the step")
            x_prev = x_prev + sigma * noise
        return x_prev


def continuous_step(scheduler: Scheduler, model_output: torch.Tensor, t: float, t_prev: float,
                    x_t: torch.Tensor, eta: float, noise: torch.Tensor | None) -> torch.Tensor:
    """DDIM's update under a continuous process (DDIMScheduler's docstring), coefficients in
    float64 from the process's alpha(t), sigma(t)."""
    process = scheduler.diffusion
    x0, eps = scheduler._predict_x0_eps(model_output, t, x_t)
    a_t, s_t = float(process.alpha(t)), float(process.sigma(t))
    if scheduler.clip:
        eps = (x_t - a_t * x0) / s_t  # consistent with the clipped x0
    if scheduler.is_final(t_prev):
        return x0
    a_prev, s_prev = float(process.alpha(t_prev)), float(process.sigma(t_prev))
    ratio = (a_t * s_prev) / (a_prev * s_t)
    s = eta * s_prev * math.sqrt(max(0.0, 1 - ratio**2))
    x_prev = a_prev * x0 + math.sqrt(max(0.0, s_prev**2 - s**2)) * eps
    if s > 0:
        if noise is None:
            raise ValueError("eta > 0 needs `noise` for the stochastic part of the step")
        x_prev = x_prev + s * noise
    return x_prev
