"""The samplers as they were before the continuous process (main at e34ebc2), kept verbatim as
the reference that tests/model/test_legacy_bytes.py holds today's discrete samplers to: exports of
the VP process must sample byte-identically."""

from __future__ import annotations

import math

import torch

from canopy.model.spacing import sampling_timesteps


class _LegacyBase:
    """model/scheduler.py's Scheduler as it was: pairs() and the clipped x0 estimate."""

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.timesteps, [*self.timesteps[1:], -1]))

    def reset(self) -> None:
        pass

    def _predict_x0_eps(self, model_output, t, x_t):
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0, eps = self.diffusion.predict_x0_eps(x_t, t_batch, model_output)
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)
        return x0, eps

class LegacyDDIMScheduler(_LegacyBase):
    """One DDIM update from t to t_prev < t (Song et al. 2021, eq. 12 and 16):

        x0_hat = the network's estimate of x_0 (clipped to [-1, 1]); eps_hat re-derived from it
        sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
        x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z

    with a = alpha_bar and, past the last step (t_prev = -1), a_prev = 1 so that x_prev = x0_hat.
    """

    def __init__(
        self,
        diffusion,
        steps: int,
        eta: float = 0.0,
        clip: bool = True,
        spacing: str = "trailing",
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.diffusion = diffusion
        self.timesteps = sampling_timesteps(diffusion.timesteps, steps, spacing)
        self.eta = eta
        self.clip = clip
        self.spacing = spacing

    @classmethod
    def from_settings(
        cls, diffusion, *, steps: int, eta: float, spacing: str
    ) -> LegacyDDIMScheduler:
        return cls(diffusion, steps, eta, spacing=spacing)

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return self.eta > 0 and t_prev >= 0

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

class LegacyDDPMScheduler(_LegacyBase):
    eta = 1.0  # the posterior's own noise: DDIM with eta = 1 over every timestep
    spacing = "all"

    def __init__(self, diffusion, clip: bool = True) -> None:
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

    @classmethod
    def from_settings(
        cls, diffusion, *, steps: int, eta: float, spacing: str
    ) -> LegacyDDPMScheduler:
        return cls(diffusion)  # every timestep, its own noise: steps, eta and spacing unused

    def needs_noise(self, t: int, t_prev: int) -> bool:
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

class LegacyDPMSolverMultistepScheduler(_LegacyBase):
    """DPM-Solver++(2M) from t to t_prev < t. With a = alpha_bar,

        alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t / sigma_t)

    (the half log-SNR, decreasing in t) and x0_hat = the network's estimate of x_0 at (x_t, t)
    (clipped to [-1, 1]), the diffusion ODE in data-prediction form has the exact solution, its
    linear part integrated analytically (Lu et al. 2022),

        x_t' = sigma_t' / sigma_t x_t + sigma_t' int_{lambda_t}^{lambda_t'} e^lambda x0_hat dlambda

    Steps t_0 = T-1 > t_1 > ... of the schedule, h_i = lambda_{t_i} - lambda_{t_{i-1}} > 0
    (algorithm 2):

      first step (no history): the first-order update, which is exactly a DDIM (eta = 0) step
        x_{t_1} = sigma_{t_1} / sigma_{t_0} x_{t_0} - alpha_{t_1} (e^{-h_1} - 1) x0_hat_0
      later steps: a linear extrapolation in lambda from the last two x0 estimates
        r_i = h_{i-1} / h_i
        D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}
        x_{t_i} = sigma_{t_i} / sigma_{t_{i-1}} x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D_i

    The last step (t_prev = -1, the clean image) is treated as DDIM treats it, a_prev = 1:
    sigma_prev = 0 so lambda_prev = +inf, h = inf and r = 0, where the second-order formula is
    undefined; the first-order update there gives x_prev = alpha_prev x0_hat = x0_hat. That is
    also what diffusers' "lower_order_final" with final_sigmas_type "zero" does. Being DDIM's
    last step, it is also DDIM's error there: with few steps (10 of T = 1000 jump from t = 99)
    that one-step denoise, not the solver, limits the sharpness of the result.

    The x0 estimate (and the timestep it was made at) is state carried from one step to the
    next: reset() before each new run. A run's last step clears it too, and a step that does
    not continue where the previous one landed is refused rather than extrapolated from
    another run's history.
    """

    eta = 0.0  # an ODE solver: no noise after the start

    def __init__(
        self, diffusion, steps: int, clip: bool = True, spacing: str = "trailing"
    ) -> None:
        self.diffusion = diffusion
        self.timesteps = sampling_timesteps(diffusion.timesteps, steps, spacing)
        self.clip = clip
        self.spacing = spacing
        # lambda_t in float64 from the betas (like model/ddpm.py), coefficients computed from
        # it in float64 and used as float32 like the diffusion's buffers.
        alpha_bar = torch.cumprod(1.0 - diffusion.betas.double(), dim=0)
        self._lambda = (0.5 * (alpha_bar.log() - (1.0 - alpha_bar).log())).tolist()
        self._alpha_bar = alpha_bar.tolist()
        self.reset()

    @classmethod
    def from_settings(
        cls, diffusion, *, steps: int, eta: float, spacing: str
    ) -> LegacyDPMSolverMultistepScheduler:
        if eta != 0:
            raise ValueError(f"DPM-Solver++(2M) is deterministic: eta must be 0, got {eta}")
        return cls(diffusion, steps, spacing=spacing)

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return False

    def reset(self) -> None:
        """Forget the previous x0 estimate: the next step is a first step."""
        self._last_x0: torch.Tensor | None = None
        self._last_t: int | None = None  # the timestep _last_x0 was estimated at
        self._landed_at: int | None = None  # the t_prev of the last step

    def coefficients(self, t: int, t_prev: int, t_last: int | None) -> tuple[float, float, float]:
        """(c_x, c_0, c_1) in float64 for x_prev = c_x x_t + c_0 x0_hat_t + c_1 x0_hat_{t_last};
        t_last is the timestep of the previous x0 estimate, None for a first-order step."""
        if t_prev < 0:
            return 0.0, 1.0, 0.0  # a_prev = 1: x_prev = x0_hat
        a_t, a_prev = self._alpha_bar[t], self._alpha_bar[t_prev]
        sigma_t, sigma_prev = math.sqrt(1 - a_t), math.sqrt(1 - a_prev)
        alpha_prev = math.sqrt(a_prev)
        h = self._lambda[t_prev] - self._lambda[t]
        c_x = sigma_prev / sigma_t
        c_d = -alpha_prev * math.expm1(-h)  # -alpha_prev (e^{-h} - 1) > 0
        if t_last is None:
            return c_x, c_d, 0.0
        r = (self._lambda[t] - self._lambda[t_last]) / h
        return c_x, c_d * (1 + 1 / (2 * r)), -c_d / (2 * r)

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t_prev} from x_t and the network's output at (x_t, t); no noise is used."""
        if self._landed_at is not None and self._landed_at != t:
            raise ValueError(
                f"DPM-Solver++ step from t={t} does not continue the previous step (which landed "
                f"at t={self._landed_at}): call reset() before a new run"
            )
        x_t = x_t.float()
        # The data-prediction form integrates the clipped x0 as it is: that is why the paper
        # pairs it with thresholding.
        x0, _ = self._predict_x0_eps(model_output, t, x_t)
        c_x, c_0, c_1 = (torch.tensor(c, dtype=torch.float64).float().to(x_t.device)
                         for c in self.coefficients(t, t_prev, self._last_t))
        x_prev = c_x * x_t + c_0 * x0
        if self._last_x0 is not None and t_prev >= 0:
            x_prev = x_prev + c_1 * self._last_x0
        if t_prev < 0:
            self.reset()  # the run is over
        else:
            self._last_x0, self._last_t, self._landed_at = x0, t, t_prev
        return x_prev

