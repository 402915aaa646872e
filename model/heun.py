"""EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, "Elucidating the Design
Space of Diffusion-Based Generative Models", algorithm 1; NVlabs/edm generate.py edm_sampler
with S_churn = 0) as a Scheduler (model/scheduler.py), for a continuous process
(model/process.py).

In the process's own variance-exploding coordinates, x~ = x / alpha(t) at noise level
s(t) = sigma(t) / alpha(t) (EDM's process has alpha = 1: x~ = x, s = t), the probability-flow
ODE is dx~/ds = (x~ - D(x~; s)) / s. Over the noise levels t_0 > t_1 > ... > t_{N-1} of the
process's Karras spacing and t_N = 0:

    d_i      = (x~_i - D(x~_i; t_i)) / s_i                       Euler
    x~_{i+1} = x~_i + (s_{i+1} - s_i) d_i
    if t_{i+1} > 0:                                             Heun's correction
        d'   = (x~_{i+1} - D(x~_{i+1}; t_{i+1})) / s_{i+1}
        x~_{i+1} = x~_i + (s_{i+1} - s_i) (d_i + d') / 2

so N levels cost 2N - 1 network calls. The loop of model/sampling.py calls the network once
per step, so each level after the first is visited twice, as diffusers' HeunDiscreteScheduler
does: the pairs are (t_0, t_1), (t_1, t_1), (t_1, t_2), (t_2, t_2), ..., (t_{N-1}, 0), a pair
with t_prev == t being the correction of the Euler step that landed at t. `timesteps` lists
the network calls (what `sample.steps` buys: N levels, 2N - 1 calls).

Pure math: no files, no params import.
"""

from __future__ import annotations

import torch

from canopy.model.scheduler import Scheduler, continuous_times


class HeunScheduler(Scheduler):
    eta = 0.0  # deterministic (EDM's S_churn = 0)

    def __init__(self, process, steps: int, clip: bool = True, spacing: str = "karras") -> None:
        if not getattr(process, "continuous", False):
            raise ValueError("the heun sampler needs a continuous process: set "
                             "diffusion.process to edm")
        self.diffusion = process
        self.clip = clip
        self.spacing = spacing
        levels = continuous_times(process, steps, spacing, "heun")
        self.init_noise_sigma = float(process.sigma(levels[0]))
        self._pairs: list[tuple[float, float]] = []
        for i, t in enumerate(levels):
            if i > 0:
                self._pairs.append((t, t))  # the correction of the step that landed at t
            self._pairs.append((t, levels[i + 1] if i + 1 < len(levels) else 0.0))
        self.timesteps = [t for t, _ in self._pairs]
        self.reset()

    @classmethod
    def from_settings(cls, diffusion, *, steps: int, eta: float, spacing: str) -> HeunScheduler:
        if eta != 0:
            raise ValueError(f"the heun sampler is deterministic: eta must be 0, got {eta}")
        return cls(diffusion, steps, spacing=spacing)

    def pairs(self) -> list[tuple[float, float]]:
        return list(self._pairs)

    def needs_noise(self, t: float, t_prev: float) -> bool:
        return False

    def reset(self) -> None:
        # The Euler step awaiting its correction: (x~_i, d_i, s_i, t_i, t_{i+1}).
        self._pending: tuple[torch.Tensor, torch.Tensor, float, float, float] | None = None

    def _vescale(self, t: float) -> tuple[float, float]:
        """(alpha(t), s(t) = sigma(t) / alpha(t)) in float64."""
        alpha = float(self.diffusion.alpha(t))
        return alpha, float(self.diffusion.sigma(t)) / alpha

    def step(self, model_output: torch.Tensor, t: float, t_prev: float, x_t: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        x_t = x_t.float()
        x0, _ = self._predict_x0_eps(model_output, t, x_t)
        alpha, s = self._vescale(t)
        x_ve = x_t / alpha
        d = (x_ve - x0) / s
        if t_prev == t:  # Heun's correction of the pending Euler step
            if self._pending is None or self._pending[4] != t:
                raise ValueError(f"heun correction at t={t} without the Euler step to it: "
                                 "call reset() before a new run")
            x_i, d_i, s_i, _, _ = self._pending
            self._pending = None
            return alpha * (x_i + (s - s_i) * (d_i + d) / 2)
        if self._pending is not None:
            raise ValueError(f"heun step from t={t} leaves the Euler step to t="
                             f"{self._pending[4]} uncorrected: call reset() before a new run")
        if self.is_final(t_prev):
            return x0  # s_prev = 0: the Euler step lands on D itself
        alpha_prev, s_prev = self._vescale(t_prev)
        self._pending = (x_ve, d, s, t, t_prev)
        return alpha_prev * (x_ve + (s_prev - s) * d)
