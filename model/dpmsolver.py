"""DPM-Solver++(2M) sampling steps (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", algorithm 2) as a Scheduler (model/scheduler.py).

A deterministic multistep solver of the diffusion ODE in its data-prediction (x0) form: each
step reuses the previous step's x0 estimate for a second-order update, so it costs one network
call per step like DDIM, with a global error that falls as 1/steps^2 instead of 1/steps. Use it
for the fewest steps at a given quality. Same timestep spacings as DDIM (model/spacing.py).

Pure math: no files, no params import.
"""

from __future__ import annotations

import math

import torch

from canopy.model.diffusion import GaussianDiffusion
from canopy.model.scheduler import Scheduler, continuous_times
from canopy.model.spacing import sampling_timesteps


class DPMSolverMultistepScheduler(Scheduler):
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

    Under a continuous process (model/process.py) the same formulas with alpha_t, sigma_t
    the process's alpha(t), sigma(t) at the noise levels of its Karras spacing; the last step,
    to sigma = 0, is the first-order one as above.

    The x0 estimate (and the timestep it was made at) is state carried from one step to the
    next: reset() before each new run. A run's last step clears it too, and a step that does
    not continue where the previous one landed is refused rather than extrapolated from
    another run's history.
    """

    eta = 0.0  # an ODE solver: no noise after the start

    def __init__(
        self, diffusion: GaussianDiffusion, steps: int, clip: bool = True, spacing: str = "trailing"
    ) -> None:
        self.diffusion = diffusion
        self.clip = clip
        self.spacing = spacing
        if diffusion.continuous:
            # The same solver in the process's alpha(t), sigma(t) at its noise levels.
            self.timesteps = continuous_times(diffusion, steps, spacing, "dpmpp2m")
            self.init_noise_sigma = float(diffusion.sigma(self.timesteps[0]))
            self.reset()
            return
        self.timesteps = sampling_timesteps(diffusion.timesteps, steps, spacing)
        # lambda_t in float64 from the betas (like model/ddpm.py), coefficients computed from
        # it in float64 and used as float32 like the diffusion's buffers.
        alpha_bar = torch.cumprod(1.0 - diffusion.betas.double(), dim=0)
        self._lambda = (0.5 * (alpha_bar.log() - (1.0 - alpha_bar).log())).tolist()
        self._alpha_bar = alpha_bar.tolist()
        self.reset()

    @classmethod
    def from_settings(
        cls, diffusion: GaussianDiffusion, *, steps: int, eta: float, spacing: str
    ) -> DPMSolverMultistepScheduler:
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
        if self.is_final(t_prev):
            return 0.0, 1.0, 0.0  # a_prev = 1: x_prev = x0_hat
        if self.diffusion.continuous:
            sigma_t, lambda_t = self._sigma_lambda(t)
            sigma_prev, lambda_prev = self._sigma_lambda(t_prev)
            alpha_prev = float(self.diffusion.alpha(t_prev))
            h = lambda_prev - lambda_t
            lambda_last = None if t_last is None else self._sigma_lambda(t_last)[1]
        else:
            a_t, a_prev = self._alpha_bar[t], self._alpha_bar[t_prev]
            sigma_t, sigma_prev = math.sqrt(1 - a_t), math.sqrt(1 - a_prev)
            alpha_prev = math.sqrt(a_prev)
            h = self._lambda[t_prev] - self._lambda[t]
            lambda_t = self._lambda[t]
            lambda_last = None if t_last is None else self._lambda[t_last]
        c_x = sigma_prev / sigma_t
        c_d = -alpha_prev * math.expm1(-h)  # -alpha_prev (e^{-h} - 1) > 0
        if t_last is None:
            return c_x, c_d, 0.0
        r = (lambda_t - lambda_last) / h
        return c_x, c_d * (1 + 1 / (2 * r)), -c_d / (2 * r)

    def _sigma_lambda(self, t: float) -> tuple[float, float]:
        """(sigma_t, lambda_t = log(alpha_t / sigma_t)) of a continuous process, float64."""
        alpha, sigma = float(self.diffusion.alpha(t)), float(self.diffusion.sigma(t))
        return sigma, math.log(alpha / sigma)

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
        if self._last_x0 is not None and not self.is_final(t_prev):
            x_prev = x_prev + c_1 * self._last_x0
        if self.is_final(t_prev):
            self.reset()  # the run is over
        else:
            self._last_x0, self._last_t, self._landed_at = x0, t, t_prev
        return x_prev
