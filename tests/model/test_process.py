"""The continuous noise process (model/process.py): EDM's preconditioning, continuous noise
levels, the samplers under it on a denoiser known in closed form, the data space, and the one
builder's defaults."""

from __future__ import annotations

import math

import pytest
import torch

from canopy.model.process import (
    DIFFUSION_DEFAULTS,
    DataSpace,
    EDMProcess,
    build_process,
    karras_sigmas,
    process_config,
    resolve_sigma_data,
)
from canopy.model.registry import make_scheduler
from canopy.model.sampling import sample_images


def test_the_builder_defaults_are_the_schemas():
    from canopy.model.params import DiffusionParams

    schema = DiffusionParams().model_dump(mode="json")
    assert DIFFUSION_DEFAULTS == schema


def test_preconditioning_follows_edm_table_1():
    p = EDMProcess(sigma_data=0.5)
    sigma = torch.tensor([0.002, 0.5, 80.0])
    c_skip, c_out, c_in, c_noise = p.coefficients(sigma)
    s, sd = sigma.double(), 0.5
    assert torch.allclose(c_skip.double(), sd**2 / (s**2 + sd**2))
    assert torch.allclose(c_out.double(), s * sd / (s**2 + sd**2).sqrt())
    assert torch.allclose(c_in.double(), 1 / (s**2 + sd**2).sqrt())
    assert torch.allclose(c_noise.double(), 1000 * s.log() / 4)
    # unit variance of the network's input for data of std sigma_data, at every level
    assert torch.allclose((c_in.double() ** 2) * (sd**2 + s**2), torch.ones(3, dtype=torch.float64))


def test_a_perfect_network_has_zero_loss_and_denoises_exactly():
    """A network that outputs its effective target makes D = x_0 exactly: the loss and the
    denoiser are two views of one preconditioning."""
    p = EDMProcess(sigma_data=0.7)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sigma = p.sample_timesteps(4, generator=g)

    def oracle(x_in, c_noise):
        c_skip, c_out, c_in, _ = (c.reshape(-1, 1, 1, 1) for c in p.coefficients(sigma))
        x = x_in / c_in
        return (x0 - c_skip * x) / c_out

    assert p.loss(oracle, x0, sigma, noise).item() < 1e-9
    assert torch.allclose(p.denoise(oracle, x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma), x0,
                          atol=1e-4)


def test_noise_levels_are_drawn_continuously_from_the_lognormal():
    p = EDMProcess(lognormal_mean=-0.4, lognormal_std=1.1)
    sigma = p.sample_timesteps(20000, generator=torch.Generator().manual_seed(1))
    logs = sigma.log()
    assert sigma.dtype == torch.float32 and len(torch.unique(sigma)) > 19990  # no snapping
    assert abs(logs.mean().item() + 0.4) < 0.03 and abs(logs.std().item() - 1.1) < 0.03


def test_karras_sigmas_run_from_max_to_min():
    s = karras_sigmas(18, 0.002, 80.0)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(s, s[1:]))


class GaussianOracle(torch.nn.Module):
    """The exact denoiser for data ~ N(0, sd^2 I): D(x; sigma) = sd^2 / (sd^2 + sigma^2) x."""

    channels = 3

    def __init__(self, sd: float) -> None:
        super().__init__()
        self.sd = sd

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = t.reshape(-1, 1, 1, 1).double()
        return (self.sd**2 / (self.sd**2 + sigma**2) * x.double()).float()


def _final_std(name: str, steps: int, sd: float = 0.4, eta: float = 0.0) -> float:
    process = EDMProcess(sigma_data=sd, sigma_min=0.002, sigma_max=80.0)
    scheduler = make_scheduler(name, process, steps=steps, eta=eta, spacing="karras")
    scheduler.clip = False  # Gaussian data is unbounded
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g) * scheduler.init_noise_sigma
    net = GaussianOracle(sd)
    for t, t_prev in scheduler.pairs():
        noise = torch.randn(x.shape, generator=g) if scheduler.needs_noise(t, t_prev) else None
        x = scheduler.step(net(x, torch.tensor([t])), t, t_prev, x, noise)
    return x.std().item()


@pytest.mark.parametrize("name, steps, tol", [("heun", 50, 0.02), ("dpmpp2m", 100, 0.02),
                                              ("ddim", 400, 0.02), ("ddpm", 400, 0.05)])
def test_samplers_recover_the_data_std_with_an_exact_denoiser(name, steps, tol):
    """From N(0, sigma_max^2) noise, the ODE (and the ancestral chain) with the exact
    denoiser of N(0, sd^2) data ends at std sd."""
    assert abs(_final_std(name, steps) / 0.4 - 1) < tol


@pytest.mark.parametrize("levels", [1, 2, 6, 18])
def test_heun_is_edms_algorithm(levels):
    """The scheduler, through the sampling loop's pairs, gives what EDM's edm_sampler loop
    (S_churn = 0) gives on the scalar ODE of Gaussian data, step for step."""
    sd = 0.4
    scheduler = make_scheduler("heun", EDMProcess(sigma_data=sd), steps=levels, eta=0.0,
                               spacing="karras")
    scheduler.clip = False
    assert len(scheduler.timesteps) == 2 * levels - 1  # network calls
    net = GaussianOracle(sd)
    x = torch.full((1, 3, 1, 1), 80.0, dtype=torch.float64).float()
    for t, t_prev in scheduler.pairs():
        x = scheduler.step(net(x, torch.tensor([t])), t, t_prev, x)

    ts = [*karras_sigmas(levels, 0.002, 80.0), 0.0]
    ref = 80.0
    for t, t_next in zip(ts, ts[1:]):  # NVlabs/edm generate.py edm_sampler
        d = (ref - sd**2 / (sd**2 + t**2) * ref) / t
        nxt = ref + (t_next - t) * d
        if t_next > 0:
            d2 = (nxt - sd**2 / (sd**2 + t_next**2) * nxt) / t_next
            nxt = ref + (t_next - t) * (d + d2) / 2
        ref = nxt
    assert x.flatten()[0].item() == pytest.approx(ref, rel=1e-5)


def test_data_space_round_trip_and_clip_bounds():
    space = DataSpace([-0.5, 0.1, 0.0], [0.25, 0.5, 1.0])
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert torch.allclose(space.decode(space.encode(x)), x, atol=1e-6)
    assert torch.allclose(space.decode(space.clip(torch.full((1, 3, 1, 1), 1e3))).flatten(),
                          torch.ones(3))
    assert torch.allclose(space.decode(space.clip(torch.full((1, 3, 1, 1), -1e3))).flatten(),
                          -torch.ones(3))
    with pytest.raises(ValueError, match="positive std"):
        DataSpace([0.0], [0.0])


def test_sampling_decodes_standardised_samples():
    """sample_images maps the final x_0 back through the export's stats: a net whose x_0 is
    the data space's image of a grey value comes back as that grey value."""
    config = process_config({"process": "edm", "standardize": True}, "linear",
                            {"mean": [-0.5, 0.0, 0.5], "std": [0.2, 0.3, 0.4]})
    process = build_process(config)
    target = process.data_space.encode(torch.full((1, 3, 4, 4), 0.2))

    class Constant(torch.nn.Module):
        channels = 3

        def forward(self, x, t):
            return target.expand_as(x)

    scheduler = make_scheduler("ddim", process, steps=3, eta=0.0, spacing="karras")
    images = sample_images(Constant(), scheduler, [0, 1], (3, 4, 4), torch.device("cpu"))
    assert (images == round((0.2 + 1) * 127.5)).all()


def test_sigma_data_auto():
    stats = {"mean": [0, 0, 0], "std": [0.3, 0.4, 0.5]}
    assert resolve_sigma_data("auto", True, stats) == 1.0
    assert resolve_sigma_data("auto", False, stats) == pytest.approx(math.sqrt(0.5 / 3))
    assert resolve_sigma_data("auto", False, None) == 0.5
    assert resolve_sigma_data(0.25, True, stats) == 0.25


def test_an_old_config_builds_todays_discrete_process():
    """An export config of before the processes (no new keys) builds the VP process with the
    settings it recorded and no data space."""
    old = {"diffusion": {"timesteps": 50, "objective": "v", "loss": "l2", "min_snr_gamma": None,
                         "timestep_sampling": "lognormal", "lognormal_mean": -0.5,
                         "lognormal_std": 1.6}, "schedule": "cosine"}
    process = build_process(old)
    assert not process.continuous and process.data_space is None
    assert process.timesteps == 50 and process.objective == "v"
    assert process.lognormal_mean == -0.5


def test_learned_weighting_starts_as_the_fixed_loss_and_learns_the_log_loss_per_level():
    from canopy.model.uncertainty import NoiseLevelUncertainty, weighted

    u = NoiseLevelUncertainty()
    c_noise = torch.linspace(-1.5, 1.0, 64)
    assert torch.equal(u(c_noise), torch.zeros(64))  # L / e^0 + 0 = L: today's loss at step 0
    # A loss that depends on the noise level (small at both ends, as EDM's does): minimising
    # L / e^u + u over u alone must reach u = ln L at every level.
    per_level = 0.02 + 0.5 * torch.exp(-4 * c_noise**2)
    opt = torch.optim.Adam(u.parameters(), lr=0.02)
    for _ in range(1500):
        opt.zero_grad()
        weighted(per_level, u(c_noise)).mean().backward()
        opt.step()
    assert torch.allclose(u(c_noise), per_level.log(), atol=0.1)


def test_the_edm_loss_with_a_zero_uncertainty_equals_the_fixed_loss():
    from canopy.model.uncertainty import NoiseLevelUncertainty

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    process = EDMProcess(sigma_data=1.0)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0])
    network = lambda x, t: net(x)  # noqa: E731 - the process calls net(x, c_noise)
    fixed = process.loss(network, x0, sigma, noise)
    assert torch.equal(process.loss(network, x0, sigma, noise, uncertainty=NoiseLevelUncertainty()),
                       fixed)


def test_a_plain_lognormal_draws_exactly_as_before():
    process = EDMProcess(sigma_data=1.0, lognormal_mean=-0.5, lognormal_std=1.6)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    drawn = process.sample_timesteps(1000, generator=gen_a)
    assert torch.equal(drawn, (-0.5 + 1.6 * torch.randn(1000, generator=gen_b)).exp())


def test_a_mixture_of_noise_levels_draws_each_component_in_its_share():
    process = EDMProcess(sigma_data=1.0, lognormal_mean=[-0.5, 3.0], lognormal_std=[0.3, 0.3],
                         lognormal_weights=[0.7, 0.3])
    log_sigma = process.sample_timesteps(20_000, generator=torch.Generator().manual_seed(0)).log()
    high = log_sigma > 1.25  # halfway: the components are 12 stds apart
    assert abs(high.float().mean().item() - 0.3) < 0.015
    assert abs(log_sigma[high].mean().item() - 3.0) < 0.02
    assert abs(log_sigma[~high].std().item() - 0.3) < 0.01


@pytest.mark.parametrize("kw, message", [
    ({"lognormal_mean": [0.0, 1.0], "lognormal_std": [1.0]}, "same number of entries"),
    ({"lognormal_mean": [0.0, 1.0], "lognormal_std": [1.0, 1.0], "lognormal_weights": [1.0]},
     "one positive weight per component"),
    ({"lognormal_mean": [0.0, 1.0], "lognormal_std": [1.0, -1.0]}, "must be positive"),
])
def test_a_bad_mixture_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        EDMProcess(sigma_data=1.0, **kw)


def test_a_spectral_model_conditioned_on_region_records_each_class_stats_in_class_order():
    spectrum = {"tile_size": 8, "radial": [[[1, 0, 0], [0, 1, 0], [0, 0, 1]]] * 2}
    region = {"mean": [0.1, 0.1, 0.1], "std": [0.5, 0.5, 0.5], "spectrum": spectrum}
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "spectrum": spectrum,
             "regions": {"b": region, "a": {"mean": [0, 0, 0], "std": [1, 1, 1]}}}
    region_with_dct = {**region, "mirror_spectrum": spectrum}  # etl measures both
    stats["regions"]["b"] = region_with_dct
    config = process_config({"process": "edm", "standardize": True,
                             "preconditioning": "spectral"}, "linear", stats, ["a", "b", "c"])
    # each class's stats hold the spectrum the periodic border uses, not the DCT's it does not
    assert config["data_stats"]["class_stats"] == [stats["regions"]["a"], region, None]
    unconditioned = process_config({"process": "edm", "standardize": True,
                                    "preconditioning": "spectral"}, "linear", stats)
    assert "class_stats" not in unconditioned["data_stats"]
    del stats["regions"]
    with pytest.raises(ValueError, match="each region's power spectrum"):
        process_config({"process": "edm", "standardize": True, "preconditioning": "spectral"},
                       "linear", stats, ["a"])


def test_the_mirror_border_takes_the_tiles_dct_spectrum_for_all_tiles_and_each_class():
    periodic = {"tile_size": 8, "radial": [[[1, 0, 0], [0, 1, 0], [0, 0, 1]]] * 2}
    mirrored = {"tile_size": 8, "radial": [[[2, 0, 0], [0, 2, 0], [0, 0, 2]]] * 2}
    region = {"mean": [0.1] * 3, "std": [0.5] * 3, "spectrum": periodic,
              "mirror_spectrum": mirrored}
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "spectrum": periodic,
             "mirror_spectrum": mirrored, "regions": {"a": region}}
    diffusion = {"process": "edm", "standardize": True, "preconditioning": "spectral",
                 "spectral_border": "mirror"}
    config = process_config(diffusion, "linear", stats, ["a"])
    assert config["data_stats"]["spectrum"] == mirrored
    assert config["data_stats"]["class_stats"] == [{"mean": region["mean"], "std": region["std"],
                                                    "spectrum": mirrored}]
    assert process_config({**diffusion, "spectral_border": "periodic"}, "linear",
                          stats)["data_stats"]["spectrum"] == periodic
    del stats["mirror_spectrum"]
    with pytest.raises(ValueError, match="spectral_border mirror needs.*re-run `canopy etl`"):
        process_config(diffusion, "linear", stats)


class _Refuses(torch.nn.Module):
    channels = 3

    def forward(self, x, t):
        raise AssertionError("the network was asked above network_sigma_max")


class _Ones(torch.nn.Module):
    channels = 3

    def forward(self, x, t):
        return torch.ones_like(x)


def test_above_network_sigma_max_the_denoiser_is_the_skip_and_the_network_is_not_run():
    bounded = EDMProcess(sigma_data=1.0, network_sigma_max=80.0)
    free = EDMProcess(sigma_data=1.0)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 200
    high = torch.tensor([200.0])
    skip = bounded.precondition(x, high)[0]
    assert torch.equal(bounded.denoise(_Refuses(), x, high), skip)
    low = torch.tensor([80.0])  # the bound itself is asked
    assert torch.equal(bounded.denoise(_Ones(), x, low), free.denoise(_Ones(), x, low))
    # one level per image: each image by its own, whatever the batch
    levels = torch.tensor([10.0, 200.0, 80.0, 81.0])
    mixed = bounded.denoise(_Ones(), x, levels)
    assert torch.equal(mixed[1], bounded.precondition(x[1:2], levels[1:2])[0][0])
    assert torch.equal(mixed[0], free.denoise(_Ones(), x[:1], levels[:1])[0])
    assert torch.equal(bounded.denoise(_Ones(), x[3:], levels[3:]), mixed[3:])


def test_above_network_sigma_max_training_gives_the_network_no_gradient():
    process = EDMProcess(sigma_data=1.0, network_sigma_max=80.0)
    net = torch.nn.Conv2d(3, 3, 1)
    net.channels = 3
    wrapped = lambda x, t: net(x)  # noqa: E731
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    process.loss(wrapped, x0, torch.tensor([300.0, 500.0]), noise).backward()
    assert net.weight.grad is None or not net.weight.grad.any()
    process.loss(wrapped, x0, torch.tensor([300.0, 5.0]), noise).backward()
    assert net.weight.grad.any()


def test_network_sigma_max_is_recorded_and_needs_the_continuous_process():
    from canopy.model.params import DiffusionParams

    edm = {"process": "edm", "standardize": True, "timestep_sampling": "lognormal"}
    assert "network_sigma_max" not in DiffusionParams(**edm).config()
    config = process_config({**edm, "network_sigma_max": 80.0}, "linear",
                            {"mean": [0.0] * 3, "std": [1.0] * 3})
    assert build_process(config).network_sigma_max == 80.0
    with pytest.raises(ValueError, match="network_sigma_max needs process edm"):
        DiffusionParams(network_sigma_max=80.0)


class _Records(torch.nn.Module):
    """Returns zeros and keeps what it was given."""
    channels = 3

    def forward(self, x, t):
        self.seen = x.clone()
        return torch.zeros_like(x[:, :3])


def _spectral_process(**kw) -> EDMProcess:
    from canopy.model.spectral import SpectralSkip

    radial = [[[p, 0.5 * p, 0.2 * p], [0.5 * p, p, 0.5 * p], [0.2 * p, 0.5 * p, p]]
              for p in (50.0, 8.0, 3.0, 1.0, 0.5, 0.3, 0.2)]
    return EDMProcess(sigma_data=1.0, spectral=SpectralSkip(8, radial), **kw)


def test_with_skip_input_the_network_reads_the_skips_estimate_beside_the_noisy_image():
    process = _spectral_process(skip_input=True)
    x0 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor([0.3, 2.0, 20.0])
    x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    skipped, _, c_in, _ = process.precondition(x, sigma)
    net = _Records()
    assert torch.equal(process.denoise(net, x, sigma), skipped)  # a zero network adds nothing
    assert net.seen.shape == (3, 6, 8, 8)
    assert torch.equal(net.seen[:, :3], c_in * x) and torch.equal(net.seen[:, 3:], skipped)
    process.loss(net, x0, sigma, noise)  # training reads the same
    assert torch.equal(net.seen[:, 3:], skipped)
    plain = _spectral_process()
    plain.denoise(net, x, sigma)
    assert net.seen.shape == (3, 3, 8, 8)


def test_skip_input_is_recorded_builds_a_network_of_twice_the_input_and_needs_edm():
    from canopy.model.params import DiffusionParams
    from canopy.model.process import build

    edm = {"process": "edm", "standardize": True, "timestep_sampling": "lognormal"}
    assert "skip_input" not in DiffusionParams(**edm).config()  # older exports keep theirs
    assert DiffusionParams(**edm, skip_input=True).config()["skip_input"] is True
    stats = {"mean": [0.0] * 3, "std": [1.0] * 3}
    model = {"dim": 8, "dim_mults": [1, 2]}
    with_input = {"model": model, **process_config({**edm, "skip_input": True}, "linear", stats)}
    net, process = build(with_input)
    assert net.init_conv.in_channels == 6 and net.channels == 3 and process.skip_input
    net, process = build({"model": model, **process_config(edm, "linear", stats)})
    assert net.init_conv.in_channels == 3 and not process.skip_input
    with pytest.raises(ValueError, match="skip_input needs process edm"):
        DiffusionParams(skip_input=True)


def test_the_network_input_keeps_the_images_channels_last_layout():
    """A channels-last network handed a contiguous input would run every later layer in that
    layout (slower on the CPU)."""
    process = _spectral_process(skip_input=True)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    sigma = torch.tensor([1.0])
    skipped, _, c_in, _ = process.precondition(x, sigma)
    joined = process.network_input(x, skipped, c_in)
    assert joined.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(joined[:, 3:], skipped)
    plain = process.network_input(x.contiguous(), skipped, c_in)
    assert plain.is_contiguous() and torch.equal(plain, joined)
