"""Gaussian diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): noise
schedules, the forward process q(x_t | x_0), training targets and the loss. Pure math.

Notation: beta_t is the noise added at step t (t = 0 .. T-1), alpha_t = 1 - beta_t and
alpha_bar_t = prod_{s <= t} alpha_s, so that

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                (DDPM eq. 4)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SCHEDULES = ("linear", "cosine", "sigmoid")
OBJECTIVES = ("eps", "v")
LOSSES = ("l2", "l1")
TIMESTEP_SAMPLINGS = ("uniform", "lognormal")


def linear_betas(timesteps: int) -> torch.Tensor:
    """DDPM (Ho et al. 2020, sec. 4): beta rises linearly from 1e-4 to 0.02 over T = 1000 steps.
    For other T both ends scale by 1000 / T (Nichol & Dhariwal 2021, sec. 3.2 note) so that
    alpha_bar_T stays near zero."""
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17):

        alpha_bar(t) = f(t) / f(0),  f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2
        beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t), clipped to 0.999 (the singularity at t = T)
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=0.0, max=0.999)


def sigmoid_betas(timesteps: int) -> torch.Tensor:
    """GeoDiff (Xu et al. 2022, sec. 5) as in the Annotated Diffusion Model: beta follows a
    sigmoid between the linear schedule's ends,

        beta_t = beta_1 + (beta_T - beta_1) * sigmoid(-6 + 12 t / (T - 1))
    """
    scale = 1000.0 / timesteps
    start, end = scale * 1e-4, scale * 0.02
    x = torch.linspace(-6.0, 6.0, timesteps, dtype=torch.float64)
    return (torch.sigmoid(x) * (end - start) + start).clamp(max=0.999)


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """float64 betas of length `timesteps` for a schedule name."""
    makers = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
    if schedule not in makers:
        raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if timesteps < 2:
        raise ValueError(f"timesteps must be >= 2, got {timesteps}")
    return makers[schedule](timesteps)


class GaussianDiffusion(nn.Module):
    """The forward process and the training loss. Buffers follow the module's device.

    Objectives (what the network predicts):
      eps: the noise (DDPM eq. 14).
      v:   v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022, "Progressive
           Distillation", sec. 4), better conditioned near t = 0 and t = T.
    Training timesteps (`timestep_sampling`):
      uniform:   t ~ U{0 .. T-1} (DDPM). With the linear schedule 60% of those steps have
                 sigma = sqrt((1 - alpha_bar) / alpha_bar) > 2, images almost pure noise,
                 where there is little left to learn.
      lognormal: the noise level that EDM trains on (Karras et al. 2022, "Elucidating the
                 Design Space of Diffusion-Based Generative Models", sec. 5 and table 1):
                 ln(sigma) ~ N(P_mean, P_std^2), mapped to the timestep whose sigma_t is
                 nearest in ln(sigma). The same network calls, spent where the loss can fall.
    Min-SNR weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", eq. 12-13): with SNR(t) = alpha_bar / (1 - alpha_bar), the per-image loss is
    scaled by min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v, so the many
    easy low-noise steps no longer dominate the gradient.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        objective: str = "eps",
        loss: str = "l2",
        min_snr_gamma: float | None = None,
        timestep_sampling: str = "uniform",
        lognormal_mean: float = -1.2,
        lognormal_std: float = 1.2,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: use one of {', '.join(LOSSES)}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"unknown timestep_sampling {timestep_sampling!r}: use one of "
                             f"{', '.join(TIMESTEP_SAMPLINGS)}")
        if lognormal_std <= 0:
            raise ValueError(f"lognormal_std must be positive, got {lognormal_std}")
        betas = betas.to(torch.float64)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        self.timesteps = len(betas)
        self.timestep_sampling = timestep_sampling
        self.lognormal_mean = lognormal_mean
        self.lognormal_std = lognormal_std
        self.objective = objective
        self.loss_type = loss
        # The data space (model/process.py DataSpace) when the data is standardised: x_0
        # estimates are clipped to its image of [-1, 1] and samples decoded with it.
        self.data_space = None
        self.min_snr_gamma = min_snr_gamma
        # Computed in float64, stored in float32 (what the network works in).
        for name, value in {
            "betas": betas,
            "alphas_cumprod": alpha_bar,
            "sqrt_alphas_cumprod": alpha_bar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alpha_bar).sqrt(),
            "snr": alpha_bar / (1.0 - alpha_bar),
            # ln(sigma_t), rising with t: where a drawn noise level falls among the timesteps
            "log_sigma": 0.5 * (torch.log1p(-alpha_bar) - torch.log(alpha_bar)),
        }.items():
            self.register_buffer(name, value.float(), persistent=False)

    continuous = False  # integer timesteps 0 .. T-1 (model/process.py has a continuous one)

    def clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x_0 estimates clipped to where images live: [-1, 1], or its standardised image."""
        return x0.clamp(-1.0, 1.0) if self.data_space is None else self.data_space.clip(x0)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """A sample in the data space -> an image in [-1, 1] (the identity without stats)."""
        return x if self.data_space is None else self.data_space.decode(x)

    def denoiser(self, net: nn.Module) -> nn.Module:
        """The network as the samplers call it: the network itself, given (x_t, t)."""
        return net

    def _at(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, 1) to broadcast over images."""
        return values[t].reshape(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps              (DDPM eq. 4)"""
        return self._at(self.sqrt_alphas_cumprod, t) * x0 + self._at(
            self.sqrt_one_minus_alphas_cumprod, t
        ) * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.objective == "eps":
            return noise
        # v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
        return self._at(self.sqrt_alphas_cumprod, t) * noise - self._at(
            self.sqrt_one_minus_alphas_cumprod, t
        ) * x0

    def predict_x0_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) implied by the network's output at x_t.

        eps: x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
        v:   x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v,
             eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v
        """
        a = self._at(self.sqrt_alphas_cumprod, t)
        s = self._at(self.sqrt_one_minus_alphas_cumprod, t)
        out = model_output.float()
        if self.objective == "eps":
            return (x_t - s * out) / a, out
        return a * x_t - s * out, s * x_t + a * out

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-image weight: 1, or the min-SNR weight for the objective."""
        if self.min_snr_gamma is None:
            return torch.ones_like(t, dtype=torch.float32)
        snr = self.snr[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        return clipped / snr if self.objective == "eps" else clipped / (snr + 1.0)

    def loss(
        self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean over the batch of the (weighted) per-image l2 or l1 error on the target.
        `t` holds one timestep per image: a batch covers many noise levels at once."""
        x_t = self.q_sample(x0, t, noise)
        # The condition rows only for a conditioned network (model/condition.py); the error
        # is computed in fp32 under autocast.
        prediction = (model(x_t, t) if cond is None else model(x_t, t, cond)).float()
        target = self.target(x0, t, noise)
        if self.loss_type == "l2":
            per_pixel = F.mse_loss(prediction, target, reduction="none")
        else:
            per_pixel = F.l1_loss(prediction, target, reduction="none")
        per_image = per_pixel.mean(dim=(1, 2, 3))
        return (per_image * self.loss_weight(t)).mean()

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """One timestep per image, drawn as `timestep_sampling` says (class docstring)."""
        if self.timestep_sampling == "uniform":
            return torch.randint(0, self.timesteps, (batch,), generator=generator, device=device)
        z = torch.randn(batch, generator=generator, device=device)
        log_sigma = self.lognormal_mean + self.lognormal_std * z
        return nearest_index(self.log_sigma.to(device), log_sigma)


def nearest_index(ascending: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The index of the entry of the rising `ascending` nearest to each of `values`."""
    right = torch.searchsorted(ascending, values.to(ascending.dtype)).clamp(1, len(ascending) - 1)
    left = right - 1
    nearer_left = (values - ascending[left]).abs() <= (ascending[right] - values).abs()
    return torch.where(nearer_left, left, right)
