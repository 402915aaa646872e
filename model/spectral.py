"""The spectral preconditioning: EDM's skip connection as the Wiener filter of the data's power
spectrum, so the denoiser keeps, with no help from the network, whatever noise leaves readable.

EDM's denoiser is D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with the scalar
c_skip = sigma_data^2 / (sigma_data^2 + sigma^2): the best *linear* estimate of x_0 from x when
every pixel is an independent variable of variance sigma_data^2. Images are not: their power is
concentrated in the low frequencies. In a 64 px tile the mean colour (the DC coefficient, which
carries 4,096 pixels' worth of signal) still stands well above noise of sigma 20, where the
scalar c_skip is 0.0025. The network must then learn to carry the tile's overall colour and
layout through on its own, at noise levels that training rarely draws; it learns too little
of it and pulls every tile towards the average one (docs/benchmarks.md, "Why every sample looks
alike").

Here the skip is the Wiener filter of a stationary Gaussian with the train tiles' cross-power
spectrum P(f), a 3 x 3 matrix over the colour channels at each frequency (radially averaged, in
the standardised units where each channel's power averages 1 over the frequencies):

    c_skip(f) = P(f) (P(f) + sigma^2 I)^-1                   applied in the Fourier domain
    c_out^2   = mean_f tr(P(f) sigma^2 (P(f) + sigma^2 I)^-1) / 3
                                                             the Wiener estimate's error per pixel
    c_in      = 1 / sqrt(1 + sigma^2)                        as EDM with sigma_data = 1

computed in each frequency's eigenbasis P = U diag(lambda) U^T, where c_skip is
lambda / (lambda + sigma^2) per colour direction. The colour channels of imagery move together
(a tile is brighter or darker in all three far more than it changes hue): a filter per channel
would keep each channel's share of a tile's colour on its own and draw hues the tiles never have.

so the network's target (x_0 - c_skip x) / c_out has unit variance at every noise level when the
data is that Gaussian, and what the network learns is the part of the image that is not. With a
flat spectrum (P = I everywhere) this is EDM's preconditioning with sigma_data = 1 exactly. The
loss weight stays lambda = 1 / c_out^2 (the squared error of F against its target).

The FFT treats a tile as one period of a repeating image, so at the border the filter would
blend in the opposite border, which in a window of a larger scene has nothing to do with it: on
the demo's val tiles the outermost pixels' skip error was twice the inside's (0.112 against
0.054 at sigma 0.5). `mirror` filters the tile extended by its mirror images to twice its side
instead (the symmetric extension of a DCT), where each border pixel's neighbours are its own;
that error fell to 0.064, and over the whole tile it errs less at every noise level. It reads
the spectrum of the tiles' DCT (etl's `mirror_spectrum`): the DFT's holds the leakage of each
tile's opposite borders, about 15% more power than the DCT's at middle and high frequencies,
which the mirrored filter would take for signal. That spectrum
is the one of the mirrored tiles (twice the side), binned at their own integer radii: binned
at the tile's, a DCT coefficient half a cycle across the tile (a colour ramp) would read its
power half-way between the DC and the first ring, far too high, and the samples took on
ramps of colour. c_out stays the error read on the tile's own grid: under the mirror border
it is that of the tile's DCT spectrum at the tile's frequencies, an approximation (it errs
low at high noise: 0.59 against the skip's 0.69 at sigma 20 on the demo), as EDM's scalar
c_out is for real data.

The spectrum is measured at the tile size n; an image of another size m (crop training) reads it
at the same frequency in cycles per pixel, and its DC power, m^2 Var(mean), as if its mean varied
as much as a tile's (the best guess without measuring crops; the network corrects the rest).

A model conditioned on a class (model.condition: region) has one filter per class
(ClassSpectralSkip): class k's tiles are a Gaussian of their own mean colour mu_k and spectrum
P_k, so the best linear estimate given the class is

    c_skip_k x = mu_k + P_k (P_k + sigma^2 I)^-1 (x - mu_k),   c_out_k from P_k as above

which at high noise is the class's mean colour, not the mean of all classes. A shared filter
would hand the conditional and the unconditional branch the same low frequencies (a tile's
colour and density: what tells the classes apart), leaving the condition to a correction the
network must learn at the rarely drawn high noise levels. Images without a class (the share
dropped for classifier-free guidance, tiles without one) take the filter of all tiles.

A model without a condition can have the same per-kind filters with the kind read from the
noisy image itself (MixtureSpectralSkip, diffusion.skip_components): the train tiles clustered
into kinds (train/mixture.py), the skip the posterior mean under the mixture of their
Gaussians. Real tiles come in kinds of very different spectra (flat water, smooth soil, a
canopy full of texture) that one Gaussian blends into one average texture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class SpectralSkip:
    """The Wiener filter of a radially averaged cross-power spectrum, for images of any size.

    `radial[r]` is the 3 x 3 cross-power matrix at radius r (integer frequency units of the
    `tile_size` px tiles; r = 0 is the DC coefficient), in standardised units."""

    # eigenvalues below this are treated as this: a direction without power is filtered out
    MIN_POWER = 1e-9

    def __init__(self, tile_size: int, radial: Sequence[Sequence[Sequence[float]]],
                 mirror: bool = False, mean_prior: TileMeanPrior | None = None) -> None:
        if tile_size < 2:
            raise ValueError(f"tile_size must be at least 2, got {tile_size}")
        matrices = torch.tensor(radial, dtype=torch.float64)
        if matrices.ndim != 3 or matrices.shape[0] < 2 or matrices.shape[1] != matrices.shape[2]:
            raise ValueError("the power spectrum needs at least two radial bins, each a square "
                             "cross-power matrix over the channels")
        if not torch.allclose(matrices, matrices.transpose(1, 2)):
            raise ValueError("the cross-power matrices must be symmetric")
        self.tile_size = tile_size
        self.radial = matrices
        self.mirror = mirror
        # the tile's mean colour estimated under the distribution of the train tiles' means
        # instead of the Gaussian the spectrum implies (TileMeanPrior)
        self.mean_prior = mean_prior
        self._grids: dict[tuple[int, int, bool, int | None], tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, spectrum: Mapping[str, Any], mirror: bool = False,
                    mean_prior: TileMeanPrior | None = None) -> SpectralSkip:
        return cls(int(spectrum["tile_size"]), spectrum["radial"], mirror, mean_prior)

    # --- the spectrum on an image's frequency grid -----------------------------------------
    def power(self, height: int, width: int, half: bool = True, pixels: int | None = None
              ) -> torch.Tensor:
        """P on the rfft2 grid (H, W//2+1, C, C), or with half=False the full fft2 grid.
        `pixels`: the pixel count of the image whose mean the DC coefficient carries, where
        the grid is not that image's own (a mirrored image: the DCT's DC is the tile's)."""
        fy = torch.fft.fftfreq(height, dtype=torch.float64).reshape(-1, 1)
        fx = (torch.fft.rfftfreq(width, dtype=torch.float64) if half
              else torch.fft.fftfreq(width, dtype=torch.float64)).reshape(1, -1)
        # radius in the tiles' frequency units (cycles per tile of tile_size px)
        radius = (fy**2 + fx**2).sqrt() * self.tile_size
        last = self.radial.shape[0] - 1
        r = radius.clamp(max=last)
        lo = r.floor().long().clamp(max=last - 1)
        frac = (r - lo)[..., None, None]
        power = self.radial[lo] * (1 - frac) + self.radial[lo + 1] * frac
        # the DC coefficient is N x Cov(image mean): scale the tiles' by the pixel count
        power[0, 0] = self.radial[0] * (pixels or height * width) / self.tile_size**2
        return power

    def eigen(self, height: int, width: int, half: bool = True, pixels: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda (C, H, W'), U (H, W', C, C)) of P on the grid, float64, cached per size."""
        key = (height, width, half, pixels)
        if key not in self._grids:
            values, vectors = torch.linalg.eigh(self.power(height, width, half, pixels))
            self._grids[key] = (values.clamp(min=self.MIN_POWER).permute(2, 0, 1), vectors)
        return self._grids[key]

    def _on_device(self, height: int, width: int, device: torch.device, half: bool,
                   pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The grid's (lambda, U), float32 on `device`, cached: moved once, not at every network
        call."""
        key = (height, width, half, pixels, str(device))
        if key not in self._device_grids:
            values, vectors = self.eigen(height, width, half, pixels)
            self._device_grids[key] = (values.to(device=device, dtype=torch.float32),
                                       vectors.to(device=device, dtype=torch.float32))
        return self._device_grids[key]

    # --- the preconditioning ---------------------------------------------------------------
    def c_out(self, sigma: torch.Tensor, height: int, width: int,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """sqrt(mean_f tr(P sigma^2 (P + sigma^2)^-1) / C) per level of `sigma` (1-D), on
        sigma's device, float32. `cond` is for ClassSpectralSkip's signature: one filter
        serves every condition."""
        return _error(self._on_device(height, width, sigma.device, half=False)[0], sigma)

    def skip(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None
             ) -> torch.Tensor:
        """c_skip(f) applied to x (B, C, H, W) at one level per image (`sigma` of B or 1
        entries): the Wiener estimate of x_0, float32. Outside autocast (the skip is most of
        D at low noise, where bf16's rounding would show), and with elementwise colour
        mixing, which gives each image the same bits whatever the batch."""
        values, basis = self._on_device(*_filter_grid(x, self.mirror), x.device, half=True,
                                        pixels=x.shape[-2] * x.shape[-1])
        filtered = _wiener(x, sigma, values, basis, self.mirror)
        if self.mean_prior is None:
            return filtered
        return self.mean_prior.with_mean_of(filtered, x, sigma)


class TileMeanPrior:
    """The posterior mean of a tile's mean colour m given its noisy mean y = m + e,
    e ~ N(0, sigma^2 / pixels I), under a kernel density estimate of the train tiles' means:
    p(m) = (1/n) sum_i N(m; m_i, h^2 S), S their covariance. Each kernel is a Gaussian, so

        E[m | y] = sum_i w_i (m_i + G (y - m_i)),   G = h^2 S (h^2 S + s^2 I)^-1,
        w_i proportional to N(y; m_i, h^2 S + s^2 I),  s^2 = sigma^2 / pixels

    computed in S's eigenbasis, where G is diagonal. At low noise it is y; at high noise the
    average of the tiles' means; between, it moves y towards the means of the tiles near it,
    where the Gaussian prior the spectrum implies (the Wiener filter's DC) moves it towards
    the mean of all tiles: the mean colours of real tiles lie in clusters and arms (sites,
    bare ground, water), which a Gaussian fills in with colours no tile has.

    The bandwidth h is the one under which each tile's mean is likeliest given the others
    (leave-one-out likelihood over a grid: Scott's rule, n^(-1/7), assumes one Gaussian and
    smooths the clusters of real tiles about twice too much)."""

    # bandwidths tried: factors of S's scale, geometric from the first to the second
    BANDWIDTHS = (0.02, 1.0, 25)

    def __init__(self, means: Sequence[Sequence[float]], bandwidth: float | None = None
                 ) -> None:
        points = torch.tensor(means, dtype=torch.float64)
        if points.ndim != 2 or len(points) < 8:
            raise ValueError("the tile-mean prior needs at least 8 tile means")
        centred = points - points.mean(dim=0)
        covariance = centred.T @ centred / (len(points) - 1)
        values, vectors = torch.linalg.eigh(covariance)
        values = values.clamp(min=1e-12)
        self.basis = vectors
        self.points = points @ vectors  # the means in S's eigenbasis
        self.bandwidth = (float(bandwidth) if bandwidth is not None
                          else likeliest_bandwidth(centred @ vectors / values.sqrt()))
        self.kernel_var = values * self.bandwidth**2
        self._device: dict[str, tuple[torch.Tensor, ...]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._device:
            self._device[key] = tuple(t.to(device) for t in (self.kernel_var, self.basis,
                                                             self.points))
        return self._device[key]

    def posterior_mean(self, noisy_mean: torch.Tensor, sigma: torch.Tensor, pixels: int
                       ) -> torch.Tensor:
        """E[m | y] for y = `noisy_mean` (B, C) at `sigma` (B or 1 levels), float32; float64
        inside, and only elementwise products and per-row sums, so each image gets the same
        bits whatever the batch."""
        kernel_var, basis, points = self._on(noisy_mean.device)
        y = _mix_rows(noisy_mean.double(), basis, into_basis=True)  # (B, C)
        noise_var = (sigma.double().reshape(-1, 1) ** 2) / pixels  # (B or 1, 1)
        total = kernel_var + noise_var  # (B, C)
        distance = ((y[:, None, :] - points[None]) ** 2 / total[:, None, :]).sum(-1)
        weights = torch.softmax(-0.5 * distance, dim=1)  # (B, n)
        nearby = (weights[:, :, None] * points[None]).sum(1)
        gain = kernel_var / total
        estimate = gain * y + (1 - gain) * nearby
        return _mix_rows(estimate, basis, into_basis=False).float()


    def with_mean_of(self, estimate: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor
                     ) -> torch.Tensor:
        """`estimate` of x_0 (B, C, H, W) with its mean colour replaced by E[m | y], y the
        noisy image x's mean, float32, outside autocast."""
        with torch.autocast(x.device.type, enabled=False):
            mean = self.posterior_mean(x.float().mean(dim=(-2, -1)), sigma,
                                       x.shape[-2] * x.shape[-1])
            return estimate - estimate.mean(dim=(-2, -1), keepdim=True) + mean[..., None, None]


def _mix_rows(rows: torch.Tensor, basis: torch.Tensor, into_basis: bool) -> torch.Tensor:
    """rows (B, C) into the basis U (C, C) (y = x U) or back (x = y U^T), as elementwise
    products and sums: a matrix product's bits may depend on the batch."""
    matrix = basis if into_basis else basis.T
    return (rows[:, :, None] * matrix[None]).sum(1)


def likeliest_bandwidth(whitened: torch.Tensor, chunk: int = 512) -> float:
    """The factor h (of TileMeanPrior.BANDWIDTHS' grid) under which the kernel density of
    the other points gives each of `whitened` (n, d; unit covariance) the highest mean log
    likelihood (leave-one-out)."""
    low, high, count = TileMeanPrior.BANDWIDTHS
    factors = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)),
                             count, dtype=torch.float64)
    n, d = whitened.shape
    totals = torch.zeros(count, dtype=torch.float64)
    for start in range(0, n, chunk):
        rows = whitened[start:start + chunk]
        squared = torch.cdist(rows, whitened).square()
        squared[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = float("inf")
        for k, h in enumerate(factors):
            totals[k] += (torch.logsumexp(-0.5 * squared / h**2, dim=1) - d * h.log()).sum()
    return float(factors[int(totals.argmax())])


class MixtureSpectralSkip:
    """The posterior mean under a mixture of stationary Gaussians, one per kind of tile.

    Real tiles are not one stationary Gaussian: open water is flat, bare soil smooth, a crown
    canopy full of texture, each with its own colour and spectrum, and the single Wiener filter
    blends them, so at high noise every tile is pulled towards one average texture. Fitted to
    clusters of the train tiles (train/mixture.py), component k is a Gaussian of mean colour
    mu_k and spectrum P_k, of weight pi_k, and the best estimate of x_0 from x = x_0 + sigma n
    is exact under the mixture:

        E[x_0 | x] = sum_k w_k(x) (mu_k + P_k (P_k + sigma^2 I)^-1 (x - mu_k))
        w_k(x) proportional to pi_k N(x; mu_k, P_k + sigma^2 I)

    the log-likelihood of a stationary Gaussian being a sum over frequencies (orthonormal DFT;
    each rfft2 column standing for both half-planes counts twice), in each frequency's colour
    eigenbasis P_k = U diag(lambda) U^T:

        log N = -1/2 sum_f sum_c (|(U^T (X - M_k))_c|^2 / (lambda_c + sigma^2)
                                  + log(lambda_c + sigma^2)) + const

    At low noise one component explains the tile and its own filter keeps its texture; at high
    noise the weights tend to pi and the estimate to the mixture's mean. The noisy tile's kind
    is read from all its frequencies, not only its mean colour. c_out stays the error of the
    filter of all tiles (`overall`), which bounds the mixture's."""

    # a component's posterior weight below this is taken as zero (its estimate is not formed)
    NEGLIGIBLE = 1e-9
    # complex values of the images' spectra held at once per component pass on an
    # accelerator: 2^25 makes the float64 terms 256 MB (one component of 256 images at 128 px
    # is 6.4 M values)
    COMPONENT_ELEMENTS = 2**25
    # on the CPU, images x components per pass: 16 keeps a pass in the cache (64 px tiles)
    CPU_COMPONENT_IMAGES = 16

    def __init__(self, overall: SpectralSkip, weights: Sequence[float],
                 components: Sequence[tuple[Sequence[float], SpectralSkip]],
                 mean_prior: TileMeanPrior | None = None) -> None:
        if len(weights) != len(components) or not components:
            raise ValueError("the skip mixture needs one weight per component, and a component")
        if not all(w > 0 for w in weights):
            raise ValueError("the skip mixture's weights must be positive")
        for _, component in components:
            if component.tile_size != overall.tile_size:
                raise ValueError("every component's spectrum must be of the tiles' size, "
                                 f"{overall.tile_size}")
        self.overall = overall
        self.filters = [component for _, component in components]
        self.means = torch.tensor([list(mean) for mean, _ in components], dtype=torch.float32)
        total = float(sum(weights))
        self.log_weights = torch.tensor([w / total for w in weights], dtype=torch.float64).log()
        self.mean_prior = mean_prior
        self.tile_size = overall.tile_size
        self.mirror = False
        self._device_grids: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _on_device(self, height: int, width: int, device: torch.device
                   ) -> tuple[torch.Tensor, ...]:
        """(lambda (K, C, H, W'), U (K, H, W', C, C), means (K, C), log pi (K), column counts
        (W')) on the image's rfft2 grid, on `device`, cached."""
        key = (height, width, str(device))
        if key not in self._device_grids:
            grids = [f.eigen(height, width, half=True, pixels=height * width) for f in self.filters]
            columns = torch.full((width // 2 + 1,), 2.0, dtype=torch.float64)
            columns[0] = 1.0
            if width % 2 == 0:
                columns[-1] = 1.0
            self._device_grids[key] = (
                torch.stack([v for v, _ in grids]).to(device=device, dtype=torch.float32),
                torch.stack([u for _, u in grids]).to(device=device, dtype=torch.float32),
                self.means.to(device), self.log_weights.to(device), columns.to(device))
        return self._device_grids[key]

    def skip(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None
             ) -> torch.Tensor:
        """E[x_0 | x] (B, C, H, W) at one level per image (`sigma`, B or 1 entries), float32,
        outside autocast, with per-image products and sums only (the same bits whatever the
        batch). `cond` is for the other skips' signature: one mixture serves every image."""
        height, width = x.shape[-2:]
        values, basis, means, log_weights, columns = self._on_device(height, width, x.device)
        with torch.autocast(x.device.type, enabled=False):
            s2 = sigma.to(device=x.device, dtype=torch.float32).reshape(-1, 1, 1, 1, 1) ** 2
            spectrum = torch.fft.rfft2(x.float(), norm="ortho")
            # a mean colour mu is the DC coefficient mu sqrt(H W) of the orthonormal DFT
            dc = means * (height * width) ** 0.5
            chunk = self._components_at_once(spectrum)
            log_likelihoods, projections = [], []
            for first in range(0, len(self.filters), chunk):
                part = slice(first, first + chunk)
                real = spectrum.real[:, None].repeat(1, len(dc[part]), 1, 1, 1)
                real[..., 0, 0] -= dc[part]
                re = _mix(basis[part], real, into_basis=True, components=True)
                im = _mix(basis[part], spectrum.imag[:, None], into_basis=True, components=True)
                total = values[part] + s2
                terms = ((re.square() + im.square()) / total + total.log()).double()
                log_likelihoods.append(-0.5 * (terms * columns).sum(dim=(2, 3, 4)))
                projections.append((first, re, im, values[part] / total))
            posterior = torch.softmax(torch.cat(log_likelihoods, dim=1) + log_weights, dim=1)
            # components too unlikely to change a bit of any estimate are left out; a weight
            # of exactly zero adds exactly nothing, so each image's bits stay its own
            posterior = torch.where(posterior < self.NEGLIGIBLE, 0.0, posterior)
            posterior = (posterior / posterior.sum(dim=1, keepdim=True)).float()
            active = (posterior.amax(dim=0) > 0).tolist()
            combined = torch.zeros_like(spectrum)
            for first, re, im, gain in projections:
                ks = [k for k in range(first, first + gain.shape[1]) if active[k]]
                if not ks:
                    continue
                part = slice(first, first + len(ks))
                if len(ks) < gain.shape[1]:  # only the active components' estimates
                    part = ks
                    local = torch.tensor(ks, device=x.device) - first
                    re, im, gain = re[:, local], im[:, local], gain[:, local]
                estimate = torch.complex(
                    _mix(basis[part], re * gain, into_basis=False, components=True),
                    _mix(basis[part], im * gain, into_basis=False, components=True))
                estimate[..., 0, 0] += dc[part]
                # one component after another, in order: a sum over the components' axis
                # could change its order with the components that the batch makes active
                for j, k in enumerate(ks):
                    combined = combined + posterior[:, k, None, None, None] * estimate[:, j]
            filtered = torch.fft.irfft2(combined, s=(height, width), norm="ortho")
        if self.mean_prior is None:
            return filtered
        return self.mean_prior.with_mean_of(filtered, x, sigma)

    def _components_at_once(self, spectrum: torch.Tensor) -> int:
        """How many components one pass of `skip` takes, each a slice of the same
        elementwise operations, so the bits do not depend on it. On the CPU about
        CPU_COMPONENT_IMAGES images x components, at least one: larger passes leave the cache
        (all 64 at once took 1.5-3x as long at 8-64 images). On an accelerator each operation
        is a kernel launch, about 120 of them a component (7,600-14,100 a call at 64
        components, against 270 for the demo network's forward pass): as many as
        COMPONENT_ELEMENTS allows."""
        if spectrum.device.type == "cpu":
            return max(1, self.CPU_COMPONENT_IMAGES // spectrum.shape[0])
        return max(1, self.COMPONENT_ELEMENTS // spectrum.numel())

    def c_out(self, sigma: torch.Tensor, height: int, width: int,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """The overall filter's error (SpectralSkip.c_out): at least the mixture's."""
        return self.overall.c_out(sigma, height, width)


class ClassSpectralSkip:
    """One Wiener filter per class, each about its class's mean colour (module docstring), and
    the filter of all tiles for images without a class. A condition row's first value is the
    class index (model/condition.py: region comes first), NaN for none.

    `classes[k]` is (class k's mean colour, its SpectralSkip), both in the standardised units
    of `unconditional`, or None for a class without a spectrum of its own (it takes the
    unconditional filter)."""

    def __init__(self, unconditional: SpectralSkip,
                 classes: Sequence[tuple[Sequence[float], SpectralSkip] | None]) -> None:
        for entry in classes:
            if entry is not None and entry[1].tile_size != unconditional.tile_size:
                raise ValueError("every class's spectrum must be of the unconditional one's "
                                 f"tile size, {unconditional.tile_size}")
        # filter 0: no class; filter k + 1: class k
        self.filters = [unconditional] + [e[1] if e else unconditional for e in classes]
        self.means = torch.tensor([[0.0] * 3] + [list(e[0]) if e else [0.0] * 3 for e in classes],
                                  dtype=torch.float32)
        self.tile_size = unconditional.tile_size
        self.mirror = unconditional.mirror
        self._device_grids: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _on_device(self, height: int, width: int, device: torch.device, half: bool,
                   pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lambda (F, C, H, W'), U (F, H, W', C, C), means (F, C, 1, 1)) of every filter, float32
        on `device`, cached."""
        key = (height, width, half, pixels, str(device))
        if key not in self._device_grids:
            grids = [f.eigen(height, width, half, pixels) for f in self.filters]
            self._device_grids[key] = tuple(
                stacked.to(device=device, dtype=torch.float32)
                for stacked in (torch.stack([v for v, _ in grids]),
                                torch.stack([u for _, u in grids]),
                                self.means.reshape(len(self.filters), -1, 1, 1)))
        return self._device_grids[key]

    def filter_index(self, cond: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Each condition row's filter (B or 1 entries): its class + 1, 0 for none."""
        if cond is None:
            return torch.zeros(1, dtype=torch.long, device=device)
        classes = cond[:, 0].to(device=device, dtype=torch.float32)
        known = classes.isfinite() & (classes >= 0) & (classes < len(self.filters) - 1)
        return torch.where(known, classes.nan_to_num(0.0).long() + 1, 0)

    def skip(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None
             ) -> torch.Tensor:
        """mu_k + c_skip_k (x - mu_k) for each image's class k (`cond`, one row per image or
        one for the batch), float32, as SpectralSkip.skip."""
        values, basis, means = self._on_device(*_filter_grid(x, self.mirror), x.device, half=True,
                                               pixels=x.shape[-2] * x.shape[-1])
        which = self.filter_index(cond, x.device)
        mean = means[which]
        return mean + _wiener(x.float() - mean, sigma, values[which], basis[which], self.mirror)

    def c_out(self, sigma: torch.Tensor, height: int, width: int,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """SpectralSkip.c_out of each image's class filter (B or 1 entries)."""
        values = self._on_device(height, width, sigma.device, half=False)[0]
        which = self.filter_index(cond, sigma.device)
        return _error(values[which], sigma)


def spectral_skip(data_stats: Mapping[str, Any], mirror: bool = False
                  ) -> SpectralSkip | ClassSpectralSkip:
    """The skip of an export's `data_stats`: the filter of its "spectrum", or, where it has
    "class_stats" (one entry per class of a model conditioned on region: {"mean", "std",
    "spectrum"} of its train tiles in [-1, 1] units, or None), a filter per class. `mirror`:
    each filters the image extended by its mirror images (module docstring)."""
    mean_prior = None
    mean = torch.tensor(data_stats["mean"], dtype=torch.float64)
    std = torch.tensor(data_stats["std"], dtype=torch.float64)
    if "tile_means" in data_stats:
        means = (torch.tensor(data_stats["tile_means"], dtype=torch.float64) - mean) / std
        mean_prior = TileMeanPrior(means.tolist(), data_stats.get("tile_mean_bandwidth"))
    if "skip_mixture" in data_stats:
        if mirror:
            raise ValueError("the skip mixture is for the periodic border")
        overall = SpectralSkip.from_config(data_stats["spectrum"])
        mixture = data_stats["skip_mixture"]
        return MixtureSpectralSkip(overall, mixture["weights"], [
            _standardised_class(entry, mean, std) for entry in mixture["components"]],
            mean_prior)
    unconditional = SpectralSkip.from_config(data_stats["spectrum"], mirror, mean_prior)
    if "class_stats" not in data_stats:
        return unconditional
    return ClassSpectralSkip(unconditional, [
        None if entry is None or "spectrum" not in entry
        else _standardised_class(entry, mean, std, mirror)
        for entry in data_stats["class_stats"]])


def _standardised_class(entry: Mapping[str, Any], mean: torch.Tensor, std: torch.Tensor,
                        mirror: bool = False) -> tuple[list[float], SpectralSkip]:
    """A class's mean colour and spectrum in the units of the data standardised with all
    tiles' `mean` and `std`: its spectrum is in its own std's units (ChannelStats), so the
    (c, d) entries scale by its std_c std_d / (std_c std_d of all tiles)."""
    class_std = torch.tensor(entry["std"], dtype=torch.float64)
    ratio = class_std / std
    radial = torch.tensor(entry["spectrum"]["radial"], dtype=torch.float64) * torch.outer(ratio, ratio)
    class_mean = (torch.tensor(entry["mean"], dtype=torch.float64) - mean) / std
    return class_mean.tolist(), SpectralSkip(int(entry["spectrum"]["tile_size"]), radial.tolist(),
                                             mirror)


def _filter_grid(x: torch.Tensor, mirror: bool) -> tuple[int, int]:
    """The size of the image the filter sees: x's, or twice it with its mirror images. The
    mirrored image's DFT holds the tile's DCT: its DC coefficient is still the tile's mean,
    so its power is read with the tile's pixel count."""
    height, width = x.shape[-2:]
    return (2 * height, 2 * width) if mirror else (height, width)


def _mirrored(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) extended to (2H, 2W) by its mirror images: [x, flip_w x; flip_h x,
    flip_hw x], a picture that continues smoothly across every border of x."""
    x = torch.cat((x, x.flip(-1)), dim=-1)
    return torch.cat((x, x.flip(-2)), dim=-2)


def _wiener(x: torch.Tensor, sigma: torch.Tensor, values: torch.Tensor, basis: torch.Tensor,
            mirror: bool = False) -> torch.Tensor:
    """The filter lambda / (lambda + sigma^2) in each frequency's colour eigenbasis, applied to
    x (B, C, H, W) at one level per image (`sigma` of B or 1 entries); lambda (C, H, W') and U
    (H, W', C, C) of one filter, or (B, ...) of one per image, on the grid of the filtered
    size (twice x's with `mirror`, where x is filtered with its mirror images and cropped
    back). float32, outside autocast."""
    height, width = x.shape[-2:]
    with torch.autocast(x.device.type, enabled=False):
        s2 = sigma.to(device=x.device, dtype=torch.float32).reshape(-1, 1, 1, 1) ** 2
        gain = values / (values + s2)
        image = _mirrored(x.float()) if mirror else x.float()
        spectrum = torch.fft.rfft2(image, norm="ortho")
        # into each frequency's colour eigenbasis, scaled, and back
        parts = []
        for part in (spectrum.real, spectrum.imag):
            projected = _mix(basis, part, into_basis=True) * gain
            parts.append(_mix(basis, projected, into_basis=False))
        filtered = torch.fft.irfft2(torch.complex(*parts), s=image.shape[-2:], norm="ortho")
        return filtered[..., :height, :width]


def _error(values: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """sqrt(mean_f tr(P sigma^2 (P + sigma^2)^-1) / C) from lambda on the full grid, (C, H, W)
    or (B, C, H, W), per level of `sigma` (1-D), float32."""
    s2 = sigma.float().reshape(-1, 1, 1, 1) ** 2
    return (values * s2 / (values + s2)).mean(dim=(-3, -2, -1)).sqrt()


def _mix(basis: torch.Tensor, planes: torch.Tensor, into_basis: bool,
         components: bool = False) -> torch.Tensor:
    """planes (B, C, H, W') in the colour basis U (H, W', C, C) of each frequency:
    y_c = sum_d U[d, c] x_d (into_basis), or back, x_d = sum_c U[d, c] y_c. With
    `components`, planes (B, K or 1, C, H, W') in the K bases U (K, H, W', C, C)."""
    channel = 2 if components else 1
    channels = planes.shape[channel]
    rows = []
    for out in range(channels):
        weights = [basis[..., k, out] if into_basis else basis[..., out, k]
                   for k in range(channels)]
        rows.append(sum(w * planes.select(channel, k) for k, w in enumerate(weights)))
    return torch.stack(rows, dim=channel)
