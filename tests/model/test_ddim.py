import pytest
import torch

from canopy.model.ddim import DDIMScheduler
from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.spacing import quadratic_timesteps, sampling_timesteps, trailing_timesteps


def test_trailing_spacing():
    ts = trailing_timesteps(1000, 50)
    assert ts[0] == 999 and ts[-1] == 19 and len(ts) == 50
    assert all(a - b == 20 for a, b in zip(ts, ts[1:]))
    assert trailing_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        trailing_timesteps(10, 11)


def test_quadratic_spacing_runs_from_the_noisiest_step_to_zero():
    ts = quadratic_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0
    assert ts[:3] == [999, 959, 919] and ts[-5:] == [7, 4, 2, 1, 0]
    gaps = [a - b for a, b in zip(ts, ts[1:])]
    assert all(g >= 1 for g in gaps)  # strictly decreasing, no step repeated
    assert gaps[0] > 20 > gaps[-1]  # coarse at high noise, fine at low noise
    # Dense enough that rounding collides: still `steps` distinct steps, in range.
    for timesteps, steps in [(1000, 500), (100, 99), (10, 10), (1000, 2), (1000, 1)]:
        ts = quadratic_timesteps(timesteps, steps)
        assert len(set(ts)) == steps and ts == sorted(ts, reverse=True)
        assert ts[0] == timesteps - 1 and ts[-1] == (0 if steps > 1 else timesteps - 1)
    assert quadratic_timesteps(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        quadratic_timesteps(10, 11)


def test_spacing_is_chosen_by_name():
    assert sampling_timesteps(1000, 50) == trailing_timesteps(1000, 50)
    assert sampling_timesteps(1000, 50, "quadratic") == quadratic_timesteps(1000, 50)
    d = GaussianDiffusion(make_betas("linear", 100))
    assert DDIMScheduler(d, 10, spacing="quadratic").timesteps == quadratic_timesteps(100, 10)
    with pytest.raises(ValueError, match="trailing or quadratic"):
        sampling_timesteps(1000, 50, "leading")


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["trailing", "quadratic"])
def test_oracle_step_lands_on_the_marginal(objective, spacing):
    """Deterministic DDIM with a perfect network: x_t -> sqrt(a_prev) x0 + sqrt(1 - a_prev) eps,
    and the last step returns x0."""
    d = GaussianDiffusion(make_betas("linear", 100), objective=objective)
    sched = DDIMScheduler(d, steps=5, spacing=spacing)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 1.8 - 0.9
    eps = torch.randn(2, 3, 4, 4, generator=g)
    for t, t_prev in sched.pairs():
        tt = torch.full((2,), t)
        x_t = d.q_sample(x0, tt, eps)
        x_prev = sched.step(d.target(x0, tt, eps), t, t_prev, x_t)
        if t_prev >= 0:
            expected = d.q_sample(x0, torch.full((2,), t_prev), eps)
        else:
            expected = x0
        assert torch.allclose(x_prev, expected, atol=1e-4)


def test_eta_needs_noise():
    d = GaussianDiffusion(make_betas("linear", 100))
    sched = DDIMScheduler(d, steps=4, eta=1.0)
    t, t_prev = sched.pairs()[0]
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="needs `noise`"):
        sched.step(torch.zeros_like(x), t, t_prev, x)
    out = sched.step(torch.zeros_like(x), t, t_prev, x, noise=torch.randn_like(x))
    assert out.shape == x.shape
    assert sched.sigma(t, t_prev) > 0
