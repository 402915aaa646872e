import math

import pytest
import torch

from canopy.model.diffusion import (
    GaussianDiffusion,
    cosine_betas,
    linear_betas,
    make_betas,
    nearest_index,
    sigmoid_betas,
)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("timesteps", [10, 100, 1000])
def test_alpha_bar_decreases_from_one_towards_zero(schedule, timesteps):
    betas = make_betas(schedule, timesteps)
    assert betas.shape == (timesteps,)
    assert torch.all(betas > 0) and torch.all(betas < 1)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])
    assert alpha_bar[0] > 0.9 and alpha_bar[-1] < 0.05


def test_linear_matches_ddpm():
    assert torch.allclose(linear_betas(1000), torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    # Other T: both ends scale by 1000 / T.
    betas = linear_betas(250)
    assert betas[0].item() == pytest.approx(4e-4) and betas[-1].item() == pytest.approx(0.08)


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    alpha_bar = torch.cumprod(1 - cosine_betas(T), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 1, 10, 250, 500, 900, 990]:
        # beta_t = 1 - abar(t+1)/abar(t): alpha_bar after step t is f(t + 1) / f(0).
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9, abs=1e-12)


def test_sigmoid_matches_closed_form():
    T = 1000
    betas = sigmoid_betas(T)
    for t in [0, 1, 500, 999]:
        expected = 1e-4 + (0.02 - 1e-4) / (1 + math.exp(-(-6 + 12 * t / (T - 1))))
        assert betas[t].item() == pytest.approx(expected, rel=1e-9)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        make_betas("cosin", 100)


def _diffusion(objective="eps", **kw):
    return GaussianDiffusion(make_betas("cosine", 100), objective=objective, **kw)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_objectives_recover_x0_and_eps(objective):
    d = _diffusion(objective)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 5, 20, 50, 90, 99])
    x_t = d.q_sample(x0, t, eps)
    # A perfect network outputs the target; the implied x0 and eps are then exact.
    x0_hat, eps_hat = d.predict_x0_eps(x_t, t, d.target(x0, t, eps))
    # fp32 rounding in x_t is amplified by 1 / sqrt(alpha_bar) when x0 comes from eps.
    tol = (1e-5 / d.sqrt_alphas_cumprod[t]).reshape(-1, 1, 1, 1) + 1e-5
    assert torch.all((x0_hat - x0).abs() <= tol)
    assert torch.allclose(eps_hat, eps, atol=1e-4)


def test_q_sample_has_the_marginal_variance():
    d = _diffusion()
    x0 = torch.full((4000, 1, 1, 1), 0.5)
    t = torch.full((4000,), 60)
    x_t = d.q_sample(x0, t, torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(1)))
    ab = d.alphas_cumprod[60].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=0.05)
    assert x_t.var().item() == pytest.approx(1 - ab, rel=0.1)


def test_min_snr_weights():
    t = torch.arange(100)
    d = _diffusion("eps", min_snr_gamma=5.0)
    snr = d.snr[t]
    w = d.loss_weight(t)
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / snr)
    assert torch.all(w <= 1) and w[-1] == 1  # noisy steps keep full weight
    dv = _diffusion("v", min_snr_gamma=5.0)
    assert torch.allclose(dv.loss_weight(t), torch.clamp(snr, max=5.0) / (snr + 1))
    assert torch.all(_diffusion().loss_weight(t) == 1)


@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_loss_uses_one_timestep_per_image(loss):
    d = _diffusion("v", loss=loss, min_snr_gamma=5.0)
    net = lambda x, t: x * 0.3 + t.float().reshape(-1, 1, 1, 1) / 100  # noqa: E731
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(3, 3, 4, 4, generator=g)
    eps = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([3, 40, 97])
    batch = d.loss(net, x0, t, eps)
    singles = [d.loss(net, x0[i : i + 1], t[i : i + 1], eps[i : i + 1]) for i in range(3)]
    assert batch.item() == pytest.approx(sum(s.item() for s in singles) / 3, rel=1e-6)


def test_timesteps_are_drawn_per_image():
    d = _diffusion()
    t = d.sample_timesteps(64, generator=torch.Generator().manual_seed(0))
    assert t.shape == (64,) and t.min() >= 0 and t.max() < 100 and len(set(t.tolist())) > 20


def test_nearest_index_picks_the_closest_entry():
    ascending = torch.tensor([-2.0, -1.0, 0.5, 3.0])
    values = torch.tensor([-5.0, -1.6, -1.4, 0.0, 1.8, 1.7, 9.0])
    assert nearest_index(ascending, values).tolist() == [0, 0, 1, 2, 3, 2, 3]


def test_lognormal_timesteps_follow_the_noise_level_distribution():
    d = GaussianDiffusion(make_betas("linear", 1000), "v", timestep_sampling="lognormal",
                          lognormal_mean=-1.2, lognormal_std=1.2)
    t = d.sample_timesteps(200_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 1000
    log_sigma = d.log_sigma[t].double()
    # The drawn timesteps' noise levels have the asked-for median and spread (the grid of
    # 1000 timesteps is fine enough for a 0.05 tolerance; the ends clamp a few draws).
    assert log_sigma.median().item() == pytest.approx(-1.2, abs=0.05)
    q16, q84 = torch.quantile(log_sigma.float()[:50_000], torch.tensor([0.16, 0.84])).tolist()
    assert (q84 - q16) / 2 == pytest.approx(1.2, abs=0.05)
    # Uniform draws spend most of their steps at sigma > 2 under the linear schedule;
    # lognormal ones few.
    uniform = GaussianDiffusion(make_betas("linear", 1000), "v").sample_timesteps(
        200_000, generator=torch.Generator().manual_seed(0))
    assert (d.log_sigma[uniform].exp() > 2).float().mean() > 0.55
    assert (log_sigma.exp() > 2).float().mean() < 0.1


def test_lognormal_timesteps_are_seeded():
    d = GaussianDiffusion(make_betas("cosine", 1000), "v", timestep_sampling="lognormal")
    first = d.sample_timesteps(64, generator=torch.Generator().manual_seed(3))
    again = d.sample_timesteps(64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert not torch.equal(first, d.sample_timesteps(64, generator=torch.Generator().manual_seed(4)))


def test_unknown_timestep_sampling_is_rejected():
    with pytest.raises(ValueError, match="timestep_sampling"):
        GaussianDiffusion(make_betas("linear", 10), timestep_sampling="edm")
