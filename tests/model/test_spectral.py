"""The spectral preconditioning (model/spectral.py): EDM's with a flat spectrum, the Wiener
filter's error as c_out says, colours kept together, and the spectrum read at other sizes."""

from __future__ import annotations

import math

import pytest
import torch

from canopy.model.process import EDMProcess
from canopy.model.spectral import (
    ClassSpectralSkip,
    MixtureSpectralSkip,
    SpectralSkip,
    spectral_skip,
)

SIZE = 8
BINS = 7  # radii 0 .. round(8 / sqrt(2)) = 6
# the colour covariance of imagery: the channels move together
COLOURS = torch.tensor([[1.0, 0.9, 0.8], [0.9, 1.0, 0.9], [0.8, 0.9, 1.0]], dtype=torch.float64)


def _spectrum(colours: torch.Tensor = COLOURS) -> SpectralSkip:
    """Most power at the low frequencies, as in images, with one colour covariance at every
    frequency; each channel's power averages 1 over the plane (unit variance per pixel, as
    standardised data)."""
    radial = torch.stack([(100.0 / (1 + r) ** 3 + 0.01) * colours for r in range(BINS)])
    mean = SpectralSkip(SIZE, radial.tolist()).power(SIZE, SIZE, half=False)[..., 0, 0].mean()
    return SpectralSkip(SIZE, (radial / mean).tolist())


def _gaussian_field(skip: SpectralSkip, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Stationary Gaussian images of the cross-power spectrum `skip` holds: white noise shaped
    by U sqrt(lambda) at each frequency (orthonormal DFT, so E[X_f X_f^H] = P(f))."""
    values, vectors = skip.eigen(SIZE, SIZE)
    white = torch.fft.rfft2(torch.randn(batch, 3, SIZE, SIZE, generator=generator,
                                        dtype=torch.float64), norm="ortho")
    shaped = torch.einsum("hwdc,bchw->bdhw", vectors.to(torch.complex128), white * values.sqrt())
    return torch.fft.irfft2(shaped, s=(SIZE, SIZE), norm="ortho").float()


def test_a_flat_spectrum_is_edms_preconditioning_with_unit_sigma_data():
    flat = EDMProcess(sigma_data=1.0, spectral=SpectralSkip(SIZE, [torch.eye(3).tolist()] * BINS))
    scalar = EDMProcess(sigma_data=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, SIZE, SIZE, generator=g)
    sigma = torch.tensor([0.01, 0.7, 5.0, 60.0])

    def net(x_in, c_noise):
        return torch.tanh(x_in) + c_noise.reshape(-1, 1, 1, 1) / 1000

    assert torch.allclose(flat.denoise(net, x, sigma), scalar.denoise(net, x, sigma), atol=1e-5)
    noise = torch.randn(x.shape, generator=g)
    assert torch.allclose(flat.loss(net, x, sigma, noise), scalar.loss(net, x, sigma, noise),
                          rtol=1e-5)


def test_a_perfect_network_has_zero_loss_and_denoises_exactly():
    p = EDMProcess(sigma_data=1.0, spectral=_spectrum())
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, SIZE, SIZE, generator=g), torch.randn(4, 3, SIZE, SIZE, generator=g)
    sigma = torch.tensor([0.05, 1.0, 10.0, 80.0])
    x = x0 + sigma.reshape(-1, 1, 1, 1) * noise

    def oracle(x_in, c_noise):
        skipped, c_out, _, _ = p.precondition(x, sigma)
        return (x0 - skipped) / c_out

    assert p.loss(oracle, x0, sigma, noise).item() < 1e-9
    assert torch.allclose(p.denoise(oracle, x, sigma), x0, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.3, 2.0, 5.0])
def test_the_wiener_skip_errs_by_c_out_and_beats_the_scalar_skip(sigma):
    """On Gaussian images of the spectrum, the skip alone (a network that outputs zero) has
    the error c_out^2 says, so the network's target has unit variance; the scalar skip errs
    more, most of all on the images' mean colour."""
    skip = _spectrum()
    g = torch.Generator().manual_seed(2)
    x0 = _gaussian_field(skip, 4000, g)
    assert x0.var().item() == pytest.approx(1.0, rel=0.05)
    x = x0 + sigma * torch.randn(x0.shape, generator=g)
    level = torch.tensor([sigma])
    estimate = skip.skip(x, level)
    error = (estimate - x0).pow(2).mean().item()
    assert error == pytest.approx(skip.c_out(level, SIZE, SIZE).item() ** 2, rel=0.05)
    scalar = x / (1 + sigma**2)
    assert error < (scalar - x0).pow(2).mean().item()
    mean_error = (estimate - x0).mean(dim=(2, 3)).pow(2).mean().item()
    assert mean_error < 0.7 * (scalar - x0).mean(dim=(2, 3)).pow(2).mean().item()


def test_colours_that_move_together_are_estimated_together():
    """Grey images (one value in all three channels): the cross-power filter returns grey
    estimates through any noise, where a filter per channel would draw a hue from each
    channel's own noise."""
    grey = torch.ones(3, 3, dtype=torch.float64) + 1e-6 * torch.eye(3, dtype=torch.float64)
    joint = _spectrum(grey)
    per_channel = SpectralSkip(SIZE, [torch.diag(torch.diagonal(m)).tolist() for m in joint.radial])
    g = torch.Generator().manual_seed(3)
    x0 = _gaussian_field(joint, 500, g)
    x = x0 + 5.0 * torch.randn(x0.shape, generator=g)
    level = torch.tensor([5.0])

    def hue(images):  # how far each pixel is from grey
        return (images - images.mean(dim=1, keepdim=True)).pow(2).mean().item()

    assert hue(x0) < 1e-4
    assert hue(joint.skip(x, level)) < 1e-3
    assert hue(per_channel.skip(x, level)) > 100 * hue(joint.skip(x, level))


def test_the_spectrum_is_read_at_the_same_frequency_on_a_crop():
    skip = _spectrum()
    full = skip.power(SIZE, SIZE, half=False)
    assert torch.allclose(full[0, 1], skip.radial[1])  # the table at integer radii
    assert torch.allclose(full[2, 0], skip.radial[2])
    crop = skip.power(SIZE // 2, SIZE // 2, half=False)
    # one cycle per 4 px crop is two per 8 px tile; the DC holds a quarter of the pixels
    assert torch.allclose(crop[0, 1], skip.radial[2])
    assert torch.allclose(crop[0, 0], skip.radial[0] / 4)
    assert skip.power(SIZE // 2, SIZE // 2).shape == (SIZE // 2, SIZE // 4 + 1, 3, 3)


@pytest.mark.parametrize("radial, message", [
    ([torch.eye(3).tolist()], "at least two radial bins"),
    ([[1.0, 1.0]] * 3, "at least two radial bins"),
    ([[[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]] * 2, "must be symmetric"),
])
def test_a_bad_spectrum_is_refused(radial, message):
    with pytest.raises(ValueError, match=message):
        SpectralSkip(SIZE, radial)


def test_the_skip_is_fp32_under_autocast_and_the_same_whatever_the_batch():
    skip = _spectrum()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, SIZE, SIZE, generator=g)
    level = torch.tensor([0.01])
    plain = skip.skip(x, level)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = skip.skip(x, level)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)
    assert torch.equal(skip.skip(x[2:3], level), plain[2:3])


# --- one filter per class ------------------------------------------------------------------

def _class_skip() -> tuple[SpectralSkip, ClassSpectralSkip, torch.Tensor]:
    """Two classes of their own mean colour and power (the second darker and flatter), and the
    filter of both together."""
    unconditional = _spectrum()
    means = torch.tensor([[0.8, 0.7, 0.6], [-0.9, -0.8, -0.9]])
    bright = SpectralSkip(SIZE, (unconditional.radial * 0.3).tolist())
    dark = SpectralSkip(SIZE, (unconditional.radial * 0.1).tolist())
    return unconditional, ClassSpectralSkip(unconditional, [(means[0].tolist(), bright),
                                                            (means[1].tolist(), dark)]), means


def test_each_class_is_estimated_about_its_own_mean_and_the_filter_errs_by_its_c_out():
    """Gaussian images of class 1: its own filter's estimate is unbiased and errs by its c_out;
    the filter of all classes, blind to the class, errs more, most at high noise, where the
    class filter's estimate is the class's mean colour."""
    unconditional, per_class, means = _class_skip()
    g = torch.Generator().manual_seed(5)
    x0 = _gaussian_field(per_class.filters[2], 2000, g) + means[1].reshape(1, 3, 1, 1)
    cond = torch.tensor([[1.0]])
    for sigma in (0.5, 3.0, 40.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        level = torch.tensor([sigma])
        estimate = per_class.skip(x, level, cond)
        error = (estimate - x0).pow(2).mean().item()
        c_out = per_class.c_out(level, SIZE, SIZE, cond)
        assert error == pytest.approx(c_out.item() ** 2, rel=0.08)
        assert error < (unconditional.skip(x, level) - x0).pow(2).mean().item()
    # sigma 40: the estimate is the class's colour
    assert torch.allclose(estimate.mean(dim=(0, 2, 3)), means[1], atol=0.05)


def test_images_without_a_class_take_the_filter_of_all_tiles():
    unconditional, per_class, _ = _class_skip()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 3, SIZE, SIZE, generator=g)
    level = torch.tensor([0.2, 1.0, 7.0])
    nan = torch.full((3, 1), float("nan"))
    for cond in (None, nan, torch.tensor([[2.0], [-1.0], [5.0]])):  # none, dropped, unknown
        assert torch.allclose(per_class.skip(x, level, cond), unconditional.skip(x, level),
                              atol=1e-6)
        assert torch.allclose(per_class.c_out(level, SIZE, SIZE, cond),
                              unconditional.c_out(level, SIZE, SIZE))
    assert per_class.filter_index(torch.tensor([[0.0], [float("nan")], [1.0], [2.0]]),
                                  torch.device("cpu")).tolist() == [1, 0, 2, 0]


def test_each_image_takes_its_own_class_and_the_same_bits_whatever_the_batch():
    _, per_class, _ = _class_skip()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, SIZE, SIZE, generator=g)
    level = torch.tensor([0.5, 2.0, 2.0, 30.0])
    cond = torch.tensor([[0.0], [1.0], [float("nan")], [1.0]])
    together = per_class.skip(x, level, cond)
    for i in range(4):
        alone = per_class.skip(x[i:i + 1], level[i:i + 1], cond[i:i + 1])
        assert torch.equal(alone, together[i:i + 1])
    c_out = per_class.c_out(level, SIZE, SIZE, cond)
    assert c_out.shape == (4,) and c_out[1] != c_out[2]
    # one condition row for the batch (the samplers' groups) is every row that condition
    assert torch.equal(per_class.skip(x, level, cond[1:2]),
                       per_class.skip(x, level, cond[1:2].expand(4, 1)))


def test_class_stats_are_read_in_the_units_of_the_data_standardised_with_all_tiles():
    radial = (_spectrum().radial).tolist()
    spectrum = {"tile_size": SIZE, "radial": radial}
    stats = {"mean": [0.1, 0.2, 0.3], "std": [0.2, 0.2, 0.4], "spectrum": spectrum,
             "class_stats": [
                 {"mean": [0.1, 0.2, 0.3], "std": [0.2, 0.2, 0.4], "spectrum": spectrum},
                 {"mean": [0.5, 0.2, 0.1], "std": [0.1, 0.2, 0.2], "spectrum": spectrum},
                 None]}
    skip = spectral_skip(stats)
    assert isinstance(skip, ClassSpectralSkip) and len(skip.filters) == 4
    assert torch.equal(skip.means[1], torch.zeros(3))  # a class like all tiles: unchanged
    assert torch.allclose(skip.filters[1].radial, skip.filters[0].radial)
    assert torch.allclose(skip.means[2], torch.tensor([2.0, 0.0, -0.5]))
    ratio = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    assert torch.allclose(skip.filters[2].radial, skip.filters[0].radial * torch.outer(ratio, ratio))
    assert skip.filters[3] is skip.filters[0] and torch.equal(skip.means[3], torch.zeros(3))
    del stats["class_stats"]
    assert isinstance(spectral_skip(stats), SpectralSkip)


def test_the_denoiser_routes_each_condition_row_to_its_class_filter():
    _, per_class, means = _class_skip()
    p = EDMProcess(sigma_data=1.0, spectral=per_class)
    x = torch.zeros(3, 3, SIZE, SIZE)
    sigma = torch.tensor([80.0])

    def silent(x_in, c_noise, cond=None):
        return torch.zeros_like(x_in)

    cond = torch.tensor([[0.0], [1.0], [float("nan")]])
    out = p.denoise(silent, x, sigma, cond).mean(dim=(2, 3))
    # at sigma 80 the noisy image says little even of the DC: each estimate is its class's
    # colour, and nothing for the image without one
    assert torch.allclose(out, torch.stack([means[0], means[1], torch.zeros(3)]), atol=0.01)


# --- the border ----------------------------------------------------------------------------

def _window_of_a_larger_field(skip: SpectralSkip, batch: int, generator: torch.Generator
                              ) -> torch.Tensor:
    """SIZE-px windows of stationary Gaussian images of `skip`'s spectrum four times their
    side: what a tile of a larger scene is, not periodic (its opposite borders unrelated)."""
    side = 4 * SIZE
    values, vectors = skip.eigen(side, side, pixels=SIZE * SIZE)
    white = torch.fft.rfft2(torch.randn(batch, 3, side, side, generator=generator,
                                        dtype=torch.float64), norm="ortho")
    shaped = torch.einsum("hwdc,bchw->bdhw", vectors.to(torch.complex128), white * values.sqrt())
    return torch.fft.irfft2(shaped, s=(side, side), norm="ortho")[..., :SIZE, :SIZE].float()


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_the_mirror_border_estimates_the_outermost_pixels_from_their_own_neighbours(sigma):
    """A tile is a window of a larger scene: the periodic filter blends each border pixel with
    the opposite border, the mirror one with its own neighbours, so it errs less there (and
    inside it is the same filter)."""
    periodic = _spectrum()
    mirror = SpectralSkip(SIZE, periodic.radial.tolist(), mirror=True)
    g = torch.Generator().manual_seed(7)
    x0 = _window_of_a_larger_field(periodic, 256, g)
    x = x0 + sigma * torch.randn(x0.shape, generator=g)
    level = torch.tensor([sigma])
    border = torch.ones(SIZE, SIZE, dtype=torch.bool)
    border[1:-1, 1:-1] = False

    def border_error(skip: SpectralSkip) -> float:
        return float(((skip.skip(x, level) - x0) ** 2)[..., border].mean())

    assert border_error(mirror) < 0.95 * border_error(periodic)


def test_the_mirror_border_keeps_the_batch_bits_and_a_flat_spectrum_is_edms_skip():
    periodic = _spectrum()
    mirror = SpectralSkip(SIZE, periodic.radial.tolist(), mirror=True)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 3, SIZE, SIZE, generator=g)
    level = torch.tensor([1.5])
    assert torch.equal(mirror.skip(x[1:2], level), mirror.skip(x, level)[1:2])
    # with a flat spectrum both are EDM's scalar skip
    flat = SpectralSkip(SIZE, [torch.eye(3).tolist()] * BINS, mirror=True)
    assert torch.allclose(flat.skip(x, level), x / (1 + 1.5**2), atol=1e-6)


def test_the_border_is_chosen_by_the_config_and_older_configs_keep_the_periodic_one():
    from canopy.model.params import DiffusionParams
    from canopy.model.process import build_process

    stats = {"mean": [0.0] * 3, "std": [1.0] * 3,
             "spectrum": {"tile_size": SIZE, "radial": _spectrum().radial.tolist()}}
    base = {"process": "edm", "standardize": True, "preconditioning": "spectral"}
    config = {"diffusion": base, "schedule": "linear", "data_stats": stats}
    assert not build_process(config).spectral.mirror
    mirrored = {**config, "diffusion": {**base, "spectral_border": "mirror"}}
    assert build_process(mirrored).spectral.mirror
    # the default is left out of the recorded config, so earlier exports' configs are unchanged
    assert "spectral_border" not in DiffusionParams(**base, timestep_sampling="lognormal").config()
    with pytest.raises(ValueError, match="spectral_border applies to preconditioning spectral"):
        DiffusionParams(process="edm", standardize=True, timestep_sampling="lognormal",
                        spectral_border="mirror")


# --- the tile-mean prior -----------------------------------------------------------------

def _two_clusters(generator: torch.Generator) -> torch.Tensor:
    """Tile means in two tight clusters of colour (e.g. two sites), none between them."""
    centre = torch.tensor([0.6, 0.2, -0.1], dtype=torch.float64)
    spread = torch.randn(400, 3, generator=generator, dtype=torch.float64) * 0.05
    return torch.cat([centre + spread[:200], -centre + spread[200:]])


def test_the_tile_mean_prior_is_the_posterior_mean_of_its_kernel_density():
    from canopy.model.spectral import TileMeanPrior

    g = torch.Generator().manual_seed(5)
    means = _two_clusters(g)
    prior = TileMeanPrior(means.tolist(), bandwidth=0.3)
    noisy = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.5
    pixels, sigma = 64, torch.tensor([0.3, 2.0, 8.0, 40.0])
    got = prior.posterior_mean(noisy.float(), sigma, pixels).double()
    # the same estimate written out in the colour space itself: each kernel N(m_i, H) with H
    # the bandwidth's square times the means' covariance; y ~ N(m, s^2 I)
    bandwidth = torch.cov(means.T) * 0.3**2
    for row, level in enumerate(sigma.double()):
        s2 = level**2 / pixels
        spread = bandwidth + s2 * torch.eye(3, dtype=torch.float64)
        log_w = torch.distributions.MultivariateNormal(means, spread).log_prob(noisy[row])
        weights = torch.softmax(log_w, dim=0)
        gain = bandwidth @ torch.linalg.inv(spread)
        each = means + (noisy[row] - means) @ gain.T
        expected = (weights[:, None] * each).sum(0)
        assert torch.allclose(got[row], expected, atol=1e-5)


def test_the_tile_mean_prior_reads_low_noise_means_and_takes_the_nearer_cluster_at_high():
    from canopy.model.spectral import TileMeanPrior

    means = _two_clusters(torch.Generator().manual_seed(6))
    prior = TileMeanPrior(means.tolist())
    near_first = torch.tensor([[0.2, 0.05, -0.05]])
    # readable: the mean itself
    low = prior.posterior_mean(near_first, torch.tensor([1e-3]), 4096)
    assert torch.allclose(low, near_first, atol=1e-5)
    # half-readable: pulled to the nearer cluster, where the Gaussian prior pulls it towards
    # the average of all tiles (between the clusters, a colour no tile has)
    middle = prior.posterior_mean(near_first, torch.tensor([20.0]), 4096)
    first = means[:200].mean(0).float()
    distance = torch.linalg.vector_norm
    assert distance(middle - first) < 0.5 * distance(near_first - first)
    # unreadable: the average of all tile means
    high = prior.posterior_mean(near_first, torch.tensor([1e4]), 4096)
    assert torch.allclose(high, means.mean(0, keepdim=True).float(), atol=1e-3)


def test_the_skip_with_the_tile_mean_prior_changes_the_tile_mean_alone_whatever_the_batch():
    from canopy.model.spectral import TileMeanPrior

    g = torch.Generator().manual_seed(7)
    prior = TileMeanPrior(_two_clusters(g).tolist())
    plain = _spectrum()
    skip = SpectralSkip(SIZE, plain.radial.tolist(), mean_prior=prior)
    x = _gaussian_field(plain, 5, g) + torch.randn(5, 3, SIZE, SIZE, generator=g) * 3.0
    level = torch.tensor([3.0])
    got, wiener = skip.skip(x, level), plain.skip(x, level)
    expected_mean = prior.posterior_mean(x.mean(dim=(-2, -1)), level, SIZE * SIZE)
    assert torch.allclose(got.mean(dim=(-2, -1)), expected_mean, atol=1e-5)
    centred = wiener - wiener.mean(dim=(-2, -1), keepdim=True)
    assert torch.allclose(got - got.mean(dim=(-2, -1), keepdim=True), centred, atol=1e-5)
    assert torch.equal(skip.skip(x[3:4], level), got[3:4])
    per_image = torch.tensor([0.5, 1.0, 3.0, 9.0, 27.0])
    batched = skip.skip(x, per_image)
    assert torch.equal(skip.skip(x[1:2], per_image[1:2]), batched[1:2])


def test_the_tile_mean_prior_comes_from_the_config_and_needs_the_tiles_means():
    from canopy.model.params import DiffusionParams
    from canopy.model.process import build_process, process_config

    means = _two_clusters(torch.Generator().manual_seed(8))
    stats = {"mean": [0.1, 0.0, -0.1], "std": [0.5, 0.5, 0.5],
             "spectrum": {"tile_size": SIZE, "radial": _spectrum().radial.tolist()},
             "tile_means": (means * 0.5 + torch.tensor([0.1, 0.0, -0.1])).tolist()}
    base = {"process": "edm", "standardize": True, "preconditioning": "spectral"}
    assert build_process(process_config(base, "linear", stats)).spectral.mean_prior is None
    with_prior = process_config({**base, "mean_prior": "tiles"}, "linear", stats)
    assert with_prior["data_stats"]["tile_means"] == stats["tile_means"]
    prior = build_process(with_prior).spectral.mean_prior
    # read in the standardised units of the data
    assert torch.allclose(prior.points @ prior.basis.T, means, atol=1e-6)
    lacking = {k: v for k, v in stats.items() if k != "tile_means"}
    with pytest.raises(ValueError, match="re-run `canopy etl`"):
        process_config({**base, "mean_prior": "tiles"}, "linear", lacking)
    with pytest.raises(ValueError, match="without a condition"):
        process_config({**base, "mean_prior": "tiles"}, "linear", stats, classes=["a", "b"])
    assert "mean_prior" not in DiffusionParams(**base, timestep_sampling="lognormal").config()
    with pytest.raises(ValueError, match="mean_prior applies to preconditioning spectral"):
        DiffusionParams(process="edm", standardize=True, timestep_sampling="lognormal",
                        mean_prior="tiles")


def test_the_bandwidth_is_scotts_on_one_gaussian_and_narrower_on_clusters():
    from canopy.model.spectral import likeliest_bandwidth

    g = torch.Generator().manual_seed(9)
    gaussian = torch.randn(1000, 3, generator=g, dtype=torch.float64)
    scott = 1000 ** (-1 / 7)
    assert 0.7 * scott < likeliest_bandwidth(gaussian) < 1.4 * scott
    clusters = _two_clusters(g)
    whitened = (clusters - clusters.mean(0)) @ torch.linalg.inv(
        torch.linalg.cholesky(torch.cov(clusters.T))).T
    assert likeliest_bandwidth(whitened) < 0.5 * len(clusters) ** (-1 / 7)


# --- where sampling starts ---------------------------------------------------------------

class _Zero(torch.nn.Module):
    channels = 3

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _mean_colour_variance(sigma_max: float, dc_power: float) -> float:
    """The variance of the tiles' mean colour that DPM-Solver++(2M) (20 steps) draws from
    N(0, sigma_max^2) with the exact denoiser of Gaussian tiles whose DC holds `dc_power` in
    every colour direction: the spectral skip with a network that adds nothing."""
    from canopy.model.registry import make_scheduler

    radial = torch.stack([torch.eye(3, dtype=torch.float64) * (dc_power if r == 0 else 0.5)
                          for r in range(BINS)])
    process = EDMProcess(sigma_data=1.0, sigma_max=sigma_max,
                         spectral=SpectralSkip(SIZE, radial.tolist()))
    scheduler = make_scheduler("dpmpp2m", process, steps=20, eta=0.0, spacing="karras")
    scheduler.clip = False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, SIZE, SIZE, generator=g) * scheduler.init_noise_sigma
    denoiser = process.denoiser(_Zero())
    for t, t_prev in scheduler.pairs():
        x = scheduler.step(denoiser(x, torch.tensor([t])), t, t_prev, x)
    return x.mean(dim=(-2, -1)).var().item() * SIZE * SIZE  # the DC's power


def test_sampling_from_sigma_max_auto_gives_the_tiles_their_spread_of_mean_colours():
    from canopy.model.process import resolve_sigma_max

    dc_power = 3000.0
    stats = {"mean": [0.0] * 3, "std": [1.0] * 3,
             "spectrum": {"tile_size": SIZE, "radial": [
                 (torch.eye(3) * dc_power).tolist(), torch.eye(3).tolist()]}}
    auto = resolve_sigma_max(True, stats)
    assert auto == pytest.approx(10 * dc_power**0.5, rel=1e-3)
    assert _mean_colour_variance(auto, dc_power) == pytest.approx(dc_power, rel=0.1)
    # from EDM's 80 the DC starts as if it held nothing: its spread shrinks by 1 + P / 80^2
    assert _mean_colour_variance(80.0, dc_power) < 0.75 * dc_power


def test_sigma_max_auto_reads_the_dc_power_in_the_data_units_and_keeps_80_at_least():
    from canopy.model.params import DiffusionParams
    from canopy.model.process import process_config, resolve_sigma_max

    dc = [[400.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 2500.0]]
    stats = {"mean": [0.0] * 3, "std": [0.5, 0.5, 0.2],
             "spectrum": {"tile_size": 8, "radial": [dc, torch.eye(3).tolist()]}}
    assert resolve_sigma_max(True, stats) == 500.0
    # raw [-1, 1] data: the standardised spectrum times std_c std_d: at most 100 (400 x 0.25,
    # 2500 x 0.04), so 10 x sqrt(100)
    assert resolve_sigma_max(False, stats) == 100.0
    assert resolve_sigma_max(True, {"mean": [0.0] * 3, "std": [1.0] * 3}) == 80.0
    weak = {**stats, "spectrum": {"tile_size": 8, "radial": [torch.eye(3).tolist()] * 2}}
    assert resolve_sigma_max(True, weak) == 80.0
    base = {"process": "edm", "standardize": True, "timestep_sampling": "lognormal",
            "sigma_max": "auto"}
    assert process_config(base, "linear", stats)["diffusion"]["sigma_max"] == 500.0
    assert DiffusionParams(**base).config()["sigma_max"] == "auto"
    with pytest.raises(ValueError, match="sigma_max must be 'auto' or in"):
        DiffusionParams(**{**base, "sigma_max": -1.0})


# --- a mixture of the tiles' kinds -----------------------------------------------------------

def _pixel_covariance(skip: SpectralSkip) -> torch.Tensor:
    """The (3 SIZE^2)-square pixel covariance of the stationary Gaussian of `skip`'s spectrum:
    the field of each unit white-noise input, A, gives A A^T."""
    values, vectors = skip.eigen(SIZE, SIZE)
    basis = torch.eye(3 * SIZE * SIZE, dtype=torch.float64).reshape(-1, 3, SIZE, SIZE)
    white = torch.fft.rfft2(basis, norm="ortho")
    shaped = torch.einsum("hwdc,bchw->bdhw", vectors.to(torch.complex128), white * values.sqrt())
    fields = torch.fft.irfft2(shaped, s=(SIZE, SIZE), norm="ortho").reshape(len(basis), -1)
    return fields.T @ fields


def _mixture() -> tuple[MixtureSpectralSkip, list[torch.Tensor], list[SpectralSkip], list[float]]:
    """Two kinds of tile: bright and textured, dark and nearly flat, of weights 0.7 / 0.3."""
    textured = _spectrum()
    flat = SpectralSkip(SIZE, (textured.radial * torch.tensor(
        [1.0] + [0.02] * (BINS - 1)).reshape(-1, 1, 1)).tolist())
    means = [torch.tensor([0.5, 0.6, 0.3]), torch.tensor([-1.0, -0.8, -0.6])]
    weights = [0.7, 0.3]
    mixture = MixtureSpectralSkip(textured, weights, [(means[0].tolist(), textured),
                                                      (means[1].tolist(), flat)])
    return mixture, means, [textured, flat], weights


def test_the_mixture_skip_is_the_posterior_mean_under_the_mixture():
    """Against the posterior mean worked out in pixel space with the components' full
    covariances: sum_k w_k (mu_k + S_k (S_k + s^2 I)^-1 (x - mu_k)), w_k from pi_k N(x; mu_k,
    S_k + s^2 I)."""
    mixture, means, filters, weights = _mixture()
    covariances = [_pixel_covariance(f) for f in filters]
    g = torch.Generator().manual_seed(11)
    x0 = torch.cat([_gaussian_field(filters[k], 3, g) + means[k].reshape(1, 3, 1, 1)
                    for k in (0, 1)])
    eye = torch.eye(3 * SIZE * SIZE, dtype=torch.float64)
    for sigma in (0.1, 1.0, 4.0, 30.0):
        x = (x0 + sigma * torch.randn(x0.shape, generator=g)).double()
        log_w, estimates = [], []
        for k in (0, 1):
            mu = means[k].double().reshape(1, 3, 1, 1).expand(1, 3, SIZE, SIZE).reshape(1, -1)
            total = covariances[k] + sigma**2 * eye
            d = x.reshape(len(x), -1) - mu
            log_w.append(math.log(weights[k]) + torch.distributions.MultivariateNormal(
                torch.zeros(len(eye), dtype=torch.float64), total).log_prob(d))
            estimates.append(mu + d @ torch.linalg.solve(total, covariances[k]))
        w = torch.softmax(torch.stack(log_w, 1), 1)
        expected = (w[:, 0, None] * estimates[0] + w[:, 1, None] * estimates[1]).reshape(x.shape)
        got = mixture.skip(x.float(), torch.tensor([sigma]))
        assert torch.allclose(got.double(), expected, atol=2e-4), sigma


def test_the_mixture_keeps_each_kind_and_beats_the_filter_of_one_gaussian():
    """Tiles drawn from the mixture: at low noise the flat kind stays flat (the single filter
    gives it the textured kind's detail back from the noise); the mixture errs less than the
    Wiener filter of the pooled spectrum at every level, by 10% and more where the texture
    still tells the kinds apart."""
    mixture, means, filters, weights = _mixture()
    g = torch.Generator().manual_seed(12)
    x0 = torch.cat([_gaussian_field(filters[0], 700, g) + means[0].reshape(1, 3, 1, 1),
                    _gaussian_field(filters[1], 300, g) + means[1].reshape(1, 3, 1, 1)])
    centred = x0 - x0.mean(dim=0, keepdim=True)
    pooled_dft = torch.fft.fft2(centred.double(), norm="ortho")
    pooled = torch.einsum("bchw,bdhw->hwcd", pooled_dft, pooled_dft.conj()).real / len(x0)
    # radially binned as etl measures it (the grid is small: bin by rounded radius)
    fy = torch.fft.fftfreq(SIZE).reshape(-1, 1) * SIZE
    fx = torch.fft.fftfreq(SIZE).reshape(1, -1) * SIZE
    radius = (fy**2 + fx**2).sqrt().round().long()
    radial = torch.stack([pooled[radius == r].mean(0) for r in range(BINS)])
    single = SpectralSkip(SIZE, radial.tolist())
    for sigma, margin in ((0.2, 0.9), (1.0, 0.9), (5.0, 1.0)):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        level = torch.tensor([sigma])
        mixed = (mixture.skip(x, level) - x0).pow(2).mean().item()
        one = (single.skip(x - x0.mean(0), level) + x0.mean(0) - x0).pow(2).mean().item()
        assert mixed < margin * one, sigma
    x = x0[700:] + 0.2 * torch.randn(x0[700:].shape, generator=g)
    level = torch.tensor([0.2])
    # the detail inside each flat tile (about its own mean colour)
    mixed = mixture.skip(x, level).std(dim=(-2, -1)).mean()
    one = single.skip(x - x0.mean(0), level).std(dim=(-2, -1)).mean()
    assert mixed < 0.6 * one


def test_a_one_component_mixture_is_its_wiener_filter_and_the_bits_are_the_batchs():
    skip = _spectrum()
    one = MixtureSpectralSkip(skip, [1.0], [([0.0, 0.0, 0.0], skip)])
    g = torch.Generator().manual_seed(13)
    x = torch.randn(5, 3, SIZE, SIZE, generator=g) * 3
    level = torch.tensor([0.1, 0.5, 2.0, 10.0, 90.0])
    assert torch.allclose(one.skip(x, level), skip.skip(x, level), atol=1e-5)
    mixture = _mixture()[0]
    plain = mixture.skip(x, level)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = mixture.skip(x, level)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)
    for i in range(5):
        assert torch.equal(mixture.skip(x[i:i + 1], level[i:i + 1]), plain[i:i + 1])
    assert torch.equal(mixture.c_out(level, SIZE, SIZE), skip.c_out(level, SIZE, SIZE))


def test_the_mixture_skip_gives_the_same_bits_whatever_the_components_per_pass():
    """The components are taken a few at a time (one kernel launch per operation on a GPU is
    what costs there); each pass computes the same elementwise terms, and the estimates are
    added one component after another, so any split gives the same bits, also where only
    some of a pass's components are likely enough to count (low noise)."""
    _, means, filters, _ = _mixture()
    components = [((means[k % 2] + 0.3 * k).tolist(), filters[k % 2]) for k in range(5)]
    mixture = MixtureSpectralSkip(filters[0], [0.3, 0.2, 0.2, 0.2, 0.1], components)
    g = torch.Generator().manual_seed(14)
    x = torch.randn(6, 3, SIZE, SIZE, generator=g) * 2
    level = torch.tensor([0.02, 0.1, 0.5, 2.0, 10.0, 90.0])
    results = []
    for images in (1, 6, 12, 18, 30):  # 1, 1, 2, 3 and all 5 components a pass for 6 images
        mixture.CPU_COMPONENT_IMAGES = images
        results.append(mixture.skip(x, level))
    assert all(torch.equal(r, results[0]) for r in results[1:])
    mixture.CPU_COMPONENT_IMAGES = 30
    for i in range(6):  # the batch's bits are each image's own
        assert torch.equal(mixture.skip(x[i:i + 1], level[i:i + 1]), results[0][i:i + 1])
    # on an accelerator, as many components a pass as COMPONENT_ELEMENTS allows, at least one
    spectrum = torch.empty((6, 3, SIZE, SIZE // 2 + 1), dtype=torch.complex64, device="meta")
    assert mixture._components_at_once(spectrum) == max(1, mixture.COMPONENT_ELEMENTS
                                                        // spectrum.numel())
    mixture.COMPONENT_ELEMENTS = 10
    assert mixture._components_at_once(spectrum) == 1


def test_the_mixture_comes_from_the_config_in_the_standardised_units():
    """data_stats.skip_mixture holds each component as etl's stats of its tiles, in [-1, 1]
    units and its own std; spectral_skip reads them as the per-class stats."""
    radial = _spectrum().radial
    stats = {"mean": [0.1, 0.2, -0.3], "std": [0.5, 0.4, 0.2],
             "spectrum": {"tile_size": SIZE, "radial": radial.tolist()}}
    component = {"mean": [0.6, 0.2, -0.3], "std": [0.25, 0.4, 0.2],
                 "spectrum": {"tile_size": SIZE, "radial": radial.tolist()}}
    built = spectral_skip({**stats, "skip_mixture": {"weights": [3, 1],
                                                     "components": [component, stats]}})
    assert isinstance(built, MixtureSpectralSkip)
    assert torch.allclose(built.means[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(built.filters[0].radial[:, 0, 0], radial[:, 0, 0] * 0.25)
    assert torch.allclose(built.log_weights.exp(), torch.tensor([0.75, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="periodic border"):
        spectral_skip({**stats, "skip_mixture": {"weights": [1], "components": [stats]}},
                      mirror=True)
    with pytest.raises(ValueError, match="one weight per component"):
        MixtureSpectralSkip(_spectrum(), [1.0, 2.0], [([0.0] * 3, _spectrum())])


def test_skip_components_need_the_periodic_spectral_skip_and_the_fitted_mixture():
    from canopy.model.params import DiffusionParams
    from canopy.model.process import process_config

    base = {"process": "edm", "standardize": True, "timestep_sampling": "lognormal"}
    for wrong in ({}, {"preconditioning": "spectral", "spectral_border": "mirror"}):
        with pytest.raises(ValueError, match="skip_components above 1 needs preconditioning "
                                             "spectral with spectral_border periodic"):
            DiffusionParams(**base, **wrong, skip_components=4)
    with pytest.raises(ValueError, match="skip_components needs process edm"):
        DiffusionParams(skip_components=4)
    assert "skip_components" not in DiffusionParams(**base).config()  # older exports keep theirs
    spectral = {**base, "preconditioning": "spectral", "skip_components": 4}
    stats = {"mean": [0.0] * 3, "std": [1.0] * 3,
             "spectrum": {"tile_size": SIZE, "radial": _spectrum().radial.tolist()}}
    with pytest.raises(ValueError, match="needs the skip mixture fitted to the train tiles"):
        process_config(spectral, "linear", stats)
    mixture = {"weights": [1], "components": [stats]}
    with pytest.raises(ValueError, match="skip_components is for models without a condition"):
        process_config(spectral, "linear", {**stats, "skip_mixture": mixture}, classes=["a"])
    config = process_config(spectral, "linear", {**stats, "skip_mixture": mixture})
    assert config["data_stats"]["skip_mixture"] == mixture
