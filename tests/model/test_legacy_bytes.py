"""The discrete (VP) samplers give the same bits as before the continuous process was added
(tests/model/legacy_samplers.py holds their earlier code): today's exports sample
byte-identically."""

from __future__ import annotations

import pytest
import torch

from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.registry import make_scheduler

from .legacy_samplers import (
    LegacyDDIMScheduler,
    LegacyDDPMScheduler,
    LegacyDPMSolverMultistepScheduler,
)


def run(scheduler, diffusion_steps_seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(diffusion_steps_seed)
    x = torch.randn(2, 3, 8, 8, generator=g)
    scheduler.reset()
    for t, t_prev in scheduler.pairs():
        out = torch.tanh(1.7 * x + 0.01 * t)  # a stand-in network, of x and t
        noise = torch.randn(x.shape, generator=g) if scheduler.needs_noise(t, t_prev) else None
        x = scheduler.step(out, t, t_prev, x, noise)
    return x


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("name, eta, spacing, legacy", [
    ("ddim", 0.0, "quadratic", lambda d: LegacyDDIMScheduler(d, 7, 0.0, spacing="quadratic")),
    ("ddim", 1.0, "trailing", lambda d: LegacyDDIMScheduler(d, 7, 1.0, spacing="trailing")),
    ("ddpm", 1.0, "quadratic", lambda d: LegacyDDPMScheduler(d)),
    ("dpmpp2m", 0.0, "quadratic",
     lambda d: LegacyDPMSolverMultistepScheduler(d, 7, spacing="quadratic")),
    ("dpmpp2m", 0.0, "trailing",
     lambda d: LegacyDPMSolverMultistepScheduler(d, 7, spacing="trailing")),
])
def test_discrete_samplers_keep_their_bits(name, eta, spacing, legacy, schedule, objective):
    diffusion = GaussianDiffusion(make_betas(schedule, 50), objective)
    now = make_scheduler(name, diffusion, steps=7, eta=eta, spacing=spacing)
    before = legacy(diffusion)
    assert now.pairs() == before.pairs()
    assert torch.equal(run(now), run(before))
