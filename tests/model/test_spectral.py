"""The spectral preconditioning (model/spectral.py): EDM's with a flat spectrum, the Wiener
filter's error as c_out says, and the spectrum read at other image sizes."""

from __future__ import annotations

import pytest
import torch

from canopy.model.process import EDMProcess
from canopy.model.spectral import SpectralSkip

SIZE = 8
BINS = 7  # radii 0 .. round(8 / sqrt(2)) = 6


def _power_law(size: int = SIZE, bins: int = BINS) -> SpectralSkip:
    """Most power at the low frequencies, as in images; a mean of 1 over the frequency plane
    (unit variance per pixel, as standardised data)."""
    raw = SpectralSkip(size, [[100.0 / (1 + r) ** 3 + 0.01 for r in range(bins)]] * 3)
    mean = raw.power(size, size)[1].mean().item()
    return SpectralSkip(size, (raw.radial / mean).tolist())


def _gaussian_field(skip: SpectralSkip, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Stationary Gaussian images with the power spectrum `skip` holds: white noise shaped by
    sqrt(P) in the Fourier domain (orthonormal, so E|X_f|^2 = P(f))."""
    half, _ = skip.power(SIZE, SIZE)
    white = torch.randn(batch, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)
    shaped = torch.fft.rfft2(white, norm="ortho") * half.sqrt()
    return torch.fft.irfft2(shaped, s=(SIZE, SIZE), norm="ortho").float()


def test_a_flat_spectrum_is_edms_preconditioning_with_unit_sigma_data():
    flat = EDMProcess(sigma_data=1.0, spectral=SpectralSkip(SIZE, [[1.0] * BINS] * 3))
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
    p = EDMProcess(sigma_data=1.0, spectral=_power_law())
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
    far more, most of all on the images' mean."""
    skip = _power_law()
    g = torch.Generator().manual_seed(2)
    x0 = _gaussian_field(skip, 4000, g)
    x = x0 + sigma * torch.randn(x0.shape, generator=g)
    level = torch.tensor([sigma])
    error = (skip.skip(x, level) - x0).pow(2).mean().item()
    predicted = skip.c_out(level, SIZE, SIZE).item() ** 2
    assert error == pytest.approx(predicted, rel=0.05)
    scalar = x / (1 + sigma**2)
    assert error < (scalar - x0).pow(2).mean().item()
    mean_error = (skip.skip(x, level) - x0).mean(dim=(2, 3)).pow(2).mean().item()
    assert mean_error < 0.7 * (scalar - x0).mean(dim=(2, 3)).pow(2).mean().item()


def test_the_spectrum_is_read_at_the_same_frequency_on_a_crop():
    skip = _power_law()
    half, full = skip.power(SIZE, SIZE)
    assert torch.allclose(full[:, 0, 1], skip.radial[:, 1])  # the table at integer radii
    assert torch.allclose(full[:, 2, 0], skip.radial[:, 2])
    crop_half, crop_full = skip.power(SIZE // 2, SIZE // 2)
    # one cycle per 4 px crop is two per 8 px tile; the DC holds a quarter of the pixels
    assert torch.allclose(crop_full[:, 0, 1], skip.radial[:, 2])
    assert torch.allclose(crop_full[:, 0, 0], skip.radial[:, 0] / 4)
    assert crop_half.shape == (3, SIZE // 2, SIZE // 4 + 1)


@pytest.mark.parametrize("radial", [[[1.0]] * 3, [[1.0, 0.0, 1.0]] * 3, [[1.0, -1.0]] * 3])
def test_a_bad_spectrum_is_refused(radial):
    with pytest.raises(ValueError, match="at least two positive radial bins"):
        SpectralSkip(SIZE, radial)
