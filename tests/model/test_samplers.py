"""DDPM, DDIM and DPM-Solver++(2M) steps against an exact denoiser for Gaussian data.

If x_0 ~ N(mu, s^2) per pixel, then x_t ~ N(sqrt(a) mu, a s^2 + 1 - a) (a = alpha_bar_t) and the
ideal noise prediction is E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
A correct sampler driven by it must return samples with mean mu and std s.

The deterministic samplers solve the probability-flow ODE, whose exact solution is known here:
each x_t keeps its standard score, x_t = sqrt(a_t) mu + sqrt(a_t s^2 + 1 - a_t) z, z fixed along
the path. So their discretisation error can be measured per sample, against that solution.
"""

from __future__ import annotations

import pytest
import torch

from canopy.model.ddim import DDIMScheduler
from canopy.model.ddpm import DDPMScheduler
from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.dpmsolver import DPMSolverMultistepScheduler

MU, STD = 0.3, 0.2


def exact_eps(diffusion: GaussianDiffusion, x_t: torch.Tensor, t: int) -> torch.Tensor:
    a = diffusion.alphas_cumprod[t].double()
    x = x_t.double()
    return ((1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD**2 + 1 - a)).float()


def run_ddpm(diffusion, n=20000, seed=0):
    scheduler = DDPMScheduler(diffusion, clip=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 1, generator=gen)
    for t, t_prev in scheduler.pairs():
        noise = torch.randn(x.shape, generator=gen) if scheduler.needs_noise(t, t_prev) else None
        x = scheduler.step(exact_eps(diffusion, x, t), t, t_prev, x, noise)
    return x


def run_ddim(diffusion, steps, eta, n=20000, seed=0):
    scheduler = DDIMScheduler(diffusion, steps, eta, clip=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, 1, generator=gen)
    for t, t_prev in scheduler.pairs():
        noise = torch.randn(x.shape, generator=gen) if scheduler.needs_noise(t, t_prev) else None
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
        torch.testing.assert_close(ddpm.step(out, t, t_prev, x, step_noise),
                                   ddim.step(out, t, t_prev, x, step_noise), rtol=1e-4, atol=1e-5)


def test_ddpm_needs_noise_except_on_the_last_step():
    diffusion = GaussianDiffusion(make_betas("linear", 10))
    scheduler = DDPMScheduler(diffusion)
    assert scheduler.timesteps == list(range(9, -1, -1))
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="need"):
        scheduler.step(torch.zeros_like(x), 5, 4, x)
    assert torch.equal(scheduler.step(torch.zeros_like(x), 0, -1, x), x)  # eps 0 at t=0: x0 = x


def exact_ode(diffusion: GaussianDiffusion, x: torch.Tensor, t_from: int, t_to: int
              ) -> torch.Tensor:
    """The exact probability-flow ODE solution from x at t_from to t_to (float64)."""
    a = diffusion.alphas_cumprod.double()
    z = (x.double() - a[t_from].sqrt() * MU) / (a[t_from] * STD**2 + 1 - a[t_from]).sqrt()
    return a[t_to].sqrt() * MU + (a[t_to] * STD**2 + 1 - a[t_to]).sqrt() * z


def run_deterministic(scheduler, n=20000, seed=0, stop_at=None):
    """(x_T, x) for DDIM (eta 0) or DPM-Solver++: x is the sample, or x at t = stop_at."""
    diffusion = scheduler.diffusion
    x_T = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed))
    x = x_T
    for t, t_prev in scheduler.pairs():
        x = scheduler.step(exact_eps(diffusion, x, t), t, t_prev, x)
        if t_prev == stop_at:
            break
    return x_T, x


def ode_error(scheduler, t_stop=99):
    """Max |x - exact ODE solution| at t_stop: the solver's own error, before the last step
    (which both samplers take the same way, straight to the x0 estimate)."""
    assert t_stop in scheduler.timesteps  # 10, 20, 40 trailing steps of 1000 all pass 99
    x_T, x = run_deterministic(scheduler, n=2000, stop_at=t_stop)
    t_first = scheduler.timesteps[0]
    return (x.double() - exact_ode(scheduler.diffusion, x_T, t_first, t_stop)).abs().max().item()


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_dpmpp2m_recovers_the_data_distribution(schedule):
    """Measured std errors at 50 steps: linear 0.010, cosine 0.001, sigmoid 0.006 (DDIM: 0.025,
    0.013, 0.013). Most of what is left is the last step, which jumps from t = 19 straight to
    the x0 estimate E[x_0 | x_t] (narrower than the data) exactly as DDIM does."""
    diffusion = GaussianDiffusion(make_betas(schedule, 1000))
    _, x = run_deterministic(DPMSolverMultistepScheduler(diffusion, 50, clip=False))
    assert abs(x.mean().item() - MU) < 0.006
    assert abs(x.std().item() - STD) < 0.012
    for steps in (10, 20, 50):  # closer to the data's std than DDIM at each step count
        _, dpm = run_deterministic(DPMSolverMultistepScheduler(diffusion, steps, clip=False))
        _, ddim = run_deterministic(DDIMScheduler(diffusion, steps, 0.0, clip=False))
        assert abs(dpm.std().item() - STD) < abs(ddim.std().item() - STD)
        assert abs(dpm.mean().item() - MU) < 0.006


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dpmpp2m_is_more_accurate_than_ddim_at_the_same_step_count(schedule):
    """Measured at t = 99 (linear): 10 steps 0.027 vs DDIM 0.066, 20 steps 0.0079 vs 0.035,
    40 steps 0.0021 vs 0.018."""
    diffusion = GaussianDiffusion(make_betas(schedule, 1000))
    for steps in (10, 20, 40):
        dpm = ode_error(DPMSolverMultistepScheduler(diffusion, steps, clip=False))
        ddim = ode_error(DDIMScheduler(diffusion, steps, 0.0, clip=False))
        assert dpm < ddim / 2, (steps, dpm, ddim)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dpmpp2m_error_shrinks_with_more_steps_at_second_order(schedule):
    """Doubling the steps divides DPM-Solver++(2M)'s error by about 4 (second order: measured
    3.4 and 3.8 on linear, 5.2 and 5.9 on cosine) and DDIM's by about 2 (first order), so the
    test tells the second-order update from a first-order one."""
    diffusion = GaussianDiffusion(make_betas(schedule, 1000))
    dpm = [ode_error(DPMSolverMultistepScheduler(diffusion, s, clip=False)) for s in (10, 20, 40)]
    ddim = [ode_error(DDIMScheduler(diffusion, s, 0.0, clip=False)) for s in (10, 20, 40)]
    assert dpm[0] / dpm[1] > 3 and dpm[1] / dpm[2] > 3, dpm
    assert 1.5 < ddim[0] / ddim[1] < 2.5 and 1.5 < ddim[1] / ddim[2] < 2.5, ddim
    samples = [run_deterministic(DPMSolverMultistepScheduler(diffusion, s, clip=False))[1]
               for s in (10, 20, 40, 80)]
    errors = [abs(x.std().item() - STD) for x in samples]
    assert errors[0] > errors[1] > errors[2] > errors[3]


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_dpmpp2m_first_step_and_last_step_equal_ddim_steps(objective):
    """Without history the update is first order, which is exactly DDIM with eta = 0 (the
    first-order DPM-Solver is DDIM, Lu et al. 2022), clipping included; the second step uses
    the history and differs."""
    diffusion = GaussianDiffusion(make_betas("cosine", 100), objective=objective)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g)
    out = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)]
    dpm, ddim = DPMSolverMultistepScheduler(diffusion, 10), DDIMScheduler(diffusion, 10)
    (t0, t1), (_, t2) = dpm.pairs()[:2]
    x1 = dpm.step(out[0], t0, t1, x)
    torch.testing.assert_close(x1, ddim.step(out[0], t0, t1, x), rtol=1e-5, atol=1e-5)
    x2 = dpm.step(out[1], t1, t2, x1)
    assert (x2 - ddim.step(out[1], t1, t2, x1)).abs().max() > 1e-2
    t_last = dpm.timesteps[-1]
    dpm.reset()
    torch.testing.assert_close(dpm.step(out[0], t_last, -1, x), ddim.step(out[0], t_last, -1, x))


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_dpmpp2m_oracle_steps_land_on_the_marginal(objective):
    """With a perfect network for one x_0 (every x0 estimate the same), the second-order
    combination of two estimates is that x_0 again and each step lands on q(x_t' | x_0, eps);
    the last step returns x_0."""
    d = GaussianDiffusion(make_betas("linear", 100), objective=objective)
    sched = DPMSolverMultistepScheduler(d, steps=5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 1.8 - 0.9
    eps = torch.randn(2, 3, 4, 4, generator=g)
    x = d.q_sample(x0, torch.full((2,), sched.timesteps[0]), eps)
    for t, t_prev in sched.pairs():
        x = sched.step(d.target(x0, torch.full((2,), t), eps), t, t_prev, x)
        expected = d.q_sample(x0, torch.full((2,), t_prev), eps) if t_prev >= 0 else x0
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-4)


def test_dpmpp2m_state_starts_clean_for_each_run():
    """The previous x0 estimate is state: a finished run clears it, reset() clears an
    unfinished one, and a step that does not continue the last one is refused."""
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    scheduler = DPMSolverMultistepScheduler(diffusion, 10, clip=False)
    first = run_deterministic(scheduler, n=100)[1]
    assert torch.equal(run_deterministic(scheduler, n=100)[1], first)  # the same, not continued
    run_deterministic(scheduler, n=100, seed=1, stop_at=scheduler.timesteps[4])  # interrupted
    (t, t_prev), *_ = scheduler.pairs()
    x = torch.zeros(100, 1, 1, 1)
    with pytest.raises(ValueError, match="reset"):
        scheduler.step(exact_eps(diffusion, x, t), t, t_prev, x)
    scheduler.reset()
    assert torch.equal(run_deterministic(scheduler, n=100)[1], first)
    fresh = DPMSolverMultistepScheduler(diffusion, 10, clip=False)
    assert torch.equal(run_deterministic(fresh, n=100)[1], first)


def test_schedulers_follow_the_diffusion_onto_another_device():
    """Sampling on a GPU moves the diffusion there before the schedulers are built (found on
    an H200: DDPM's constructor mixed CPU and CUDA tensors). The meta device stands in for the
    GPU here: a CPU tensor mixed into the math raises a device error."""
    diffusion = GaussianDiffusion(make_betas("cosine", 100)).to("meta")
    x = torch.empty(2, 3, 4, 4, device="meta")
    out = torch.empty_like(x)
    ddpm = DDPMScheduler(diffusion)
    assert ddpm.step(out, 50, 49, x, torch.empty_like(x)).device.type == "meta"
    ddim = DDIMScheduler(diffusion, 10, eta=1.0)
    t, t_prev = ddim.pairs()[0]
    assert ddim.step(out, t, t_prev, x, torch.empty_like(x)).device.type == "meta"
    # DPM-Solver++ reads its coefficients as Python floats (.tolist(), which meta tensors
    # cannot do); it ran on CUDA on the H200 (bench/bench_sample.py).
