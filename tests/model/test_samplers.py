"""DDPM and DDIM steps against an exact denoiser for Gaussian data.

If x_0 ~ N(mu, s^2) per pixel, then x_t ~ N(sqrt(a) mu, a s^2 + 1 - a) (a = alpha_bar_t) and the
ideal noise prediction is E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
A correct sampler driven by it must return samples with mean mu and std s.
"""

from __future__ import annotations

import pytest
import torch

from model.ddim import DDIMScheduler
from model.ddpm import DDPMScheduler
from model.diffusion import GaussianDiffusion, make_betas

MU, STD = 0.3, 0.2


def exact_eps(diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int) -> torch.Tensor:
    a = diffusion.alphas_cumprod[t].double()
    x = x_t.double()
    return ((1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD**2 + 1 - a)).float()


def run_ddpm(diffusion, n=20000, seed=0):
    scheduler = DDPMScheduler(diffusion, clip=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 1, generator=gen)
    for t in scheduler.timesteps:
        noise = torch.randn(x.shape, generator=gen) if scheduler.needs_noise(t) else None
        x = scheduler.step(exact_eps(diffusion, x, t), t, x, noise)
    return x


def run_ddim(diffusion, steps, eta, n=20000, seed=0):
    scheduler = DDIMScheduler(diffusion, steps, eta, clip=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 1, generator=gen)
    for t, t_prev in scheduler.pairs():
        noise = torch.randn(x.shape, generator=gen) if eta > 0 and t_prev >= 0 else None
        x = scheduler.step(exact_eps(diffusion, x, t), t, t_prev, x, noise)
    return x


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_ddpm_recovers_the_data_distribution(schedule):
    diffusion = GaussianDiffusion(make_betas(schedule, 1000))
    x = run_ddpm(diffusion)
    assert abs(x.mean().item() - MU) < 0.006
    assert abs(x.std().item() - STD) < 0.006


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_all_steps_recovers_the_data_distribution(eta):
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    x = run_ddim(diffusion, 1000, eta)
    assert abs(x.mean().item() - MU) < 0.006
    assert abs(x.std().item() - STD) < 0.006


def test_ddim_error_shrinks_with_more_steps():
    """Few deterministic steps under-disperse narrow data (a discretisation error of the ODE),
    and the error falls steadily as steps are added."""
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    errors = [abs(run_ddim(diffusion, steps, 0.0).std().item() - STD) for steps in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2]
    assert all(abs(run_ddim(diffusion, steps, 0.0).mean().item() - MU) < 0.006 for steps in (10, 50))


def test_ddpm_step_equals_ddim_eta_1_over_all_steps():
    """With every timestep and eta = 1, DDIM's sigma is DDPM's posterior std (Song et al. 2021)."""
    diffusion = GaussianDiffusion(make_betas("cosine", 50))
    ddpm, ddim = DDPMScheduler(diffusion), DDIMScheduler(diffusion, 50, eta=1.0)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for t, t_prev in ddim.pairs():
        step_noise = noise if t > 0 else None
        torch.testing.assert_close(ddpm.step(out, t, x, step_noise),
                                   ddim.step(out, t, t_prev, x, step_noise), rtol=1e-4, atol=1e-5)


def test_ddpm_needs_noise_except_on_the_last_step():
    diffusion = GaussianDiffusion(make_betas("linear", 10))
    scheduler = DDPMScheduler(diffusion)
    assert scheduler.timesteps == list(range(9, -1, -1))
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="need"):
        scheduler.step(torch.zeros_like(x), 5, x)
    assert torch.equal(scheduler.step(torch.zeros_like(x), 0, x), x)  # eps 0 at t=0: x0 = x
