"""Noise processes beside the discrete one of model/diffusion.py, the data space the network
works in, and the one builder of network + process from a config (train, sample, bench).

A noise process turns clean data x_0 into

    x_t = alpha(t) x_0 + sigma(t) eps,   eps ~ N(0, I)

and says what the network predicts. Two are here:

  vp   the discrete variance-preserving process of DDPM (model/diffusion.py GaussianDiffusion):
       integer t in 0 .. T-1, alpha = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t), the
       network given t and predicting eps or v. Today's exports are this process.
  edm  the continuous process of EDM (Karras et al. 2022, "Elucidating the Design Space of
       Diffusion-Based Generative Models"): alpha(t) = 1, sigma(t) = t, over any real
       t = sigma > 0, with EDM's preconditioning (table 1, NVlabs/edm training/networks.py
       EDMPrecond): the denoiser

           D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
           c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
           c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
           c_in   = 1 / sqrt(sigma^2 + sigma_data^2)
           c_noise = ln(sigma) / 4   (x 1000 here: the U-Net's sinusoidal time embedding was
                                      made for timesteps 0 .. 999, see EDM_NOISE_SCALE)

       trained on ln(sigma) ~ N(P_mean, P_std^2) drawn continuously, with the loss weight
       lambda(sigma) = 1 / c_out^2 (EDMLoss), i.e. the plain squared error of F against its
       effective target (x_0 - c_skip x) / c_out: unit-variance inputs and targets at every
       noise level when the data has std sigma_data. v-prediction under the VP process is the
       same preconditioning with sigma_data = 1 (Karras et al. 2022, appendix B.6).

       Rectified flow (Liu et al. 2022; SD3, Esser et al. 2024) is this process under other
       coefficients: its x_t = (1 - t) x_0 + t eps is x / (1 + sigma) at t = sigma / (1 + sigma),
       and predicting the velocity eps - x_0 is c_skip = c_in = 1 / (1 + sigma), c_out =
       -sigma / (1 + sigma); its logit-normal t is ln sigma ~ N(0, 1). Measured against EDM's
       and the spectral skip in the same runs, it did not earn its place and is not offered
       (docs/benchmarks.md, "Attention, rectified flow and the spread of the noise levels").

The samplers (model/ddim.py, ddpm.py, dpmsolver.py, heun.py) ask a continuous process for
alpha(t) and sigma(t); under it the network they call is the denoiser D (x_0 estimates).

Data space (issue 20, item 2): with `diffusion.standardize`, images in [-1, 1] are
standardised per channel with the train tiles' mean and std (etl writes them in the tiles
manifest) before noise is added, so the data has unit variance, as the VP process's
v-prediction and EDM with sigma_data = 1 assume. The export carries the statistics; sampling
maps x_0 back with them (DataSpace.decode) and clips x_0 estimates to the image of [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.spectral import ClassSpectralSkip, SpectralSkip, spectral_skip
from canopy.model.uncertainty import weighted

PROCESSES = ("vp", "edm")
# c_noise = EDM_NOISE_SCALE * ln(sigma) / 4: EDM's c_noise in the range of timesteps that the
# U-Net's sinusoidal embedding resolves (sigma 0.002 .. 80 -> about -1550 .. 1100).
EDM_NOISE_SCALE = 1000.0


class DataSpace(nn.Module):
    """Per-channel standardisation of images in [-1, 1]: encode x -> (x - mean) / std, decode
    back. `lo`, `hi` bound the image of [-1, 1], where x_0 estimates are clipped."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"data stats need one mean and one positive std per channel, got "
                             f"mean {list(mean)}, std {list(std)}")
        m = torch.tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
        for name, value in {"mean": m, "std": s, "lo": (-1 - m) / s, "hi": (1 - m) / s}.items():
            self.register_buffer(name, value.float(), persistent=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x0, self.hi), self.lo)


def data_space_from(stats: Mapping[str, Any] | None) -> DataSpace | None:
    """The DataSpace of the stats an export or manifest carries ({"mean": [...], "std": [...]}),
    None without them (images as they are, in [-1, 1])."""
    if stats is None:
        return None
    return DataSpace([float(v) for v in stats["mean"]], [float(v) for v in stats["std"]])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM's noise levels for `steps` network calls (Karras et al. 2022, eq. 5), descending:

        sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho

    rho = 7 spends the steps where the error is largest, at low noise. Python floats (float64).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [sigma_max]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)]


class EDMProcess(nn.Module):
    """EDM's continuous process and preconditioning (module docstring): t is sigma itself."""

    continuous = True
    timesteps = None  # no integer timesteps: samplers take noise levels from sampling_times()

    def __init__(
        self,
        sigma_data: float = 0.5,
        lognormal_mean: float | Sequence[float] = -1.2,
        lognormal_std: float | Sequence[float] = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        data_space: DataSpace | None = None,
        lognormal_weights: Sequence[float] | None = None,
        spectral: SpectralSkip | ClassSpectralSkip | None = None,
        network_sigma_max: float | None = None,
        skip_input: bool = False,
    ) -> None:
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.noise_levels = LogNormalMixture(lognormal_mean, lognormal_std, lognormal_weights)
        self.sigma_data = float(sigma_data)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.data_space = data_space
        # diffusion.preconditioning: spectral: c_skip per frequency (model/spectral.py)
        self.spectral = spectral
        # above this level D is the skip alone: the network is not asked where it never trained
        self.network_sigma_max = network_sigma_max
        # diffusion.skip_input: the network reads the skip's estimate of x_0 beside c_in x
        self.skip_input = skip_input

    # --- the process: x_t = alpha(t) x_0 + sigma(t) eps ---------------------------------
    def alpha(self, t: float | torch.Tensor) -> float | torch.Tensor:
        return t * 0 + 1 if isinstance(t, torch.Tensor) else 1.0

    def sigma(self, t: float | torch.Tensor) -> float | torch.Tensor:
        return t

    def sampling_times(self, steps: int) -> list[float]:
        """The noise levels a `steps`-step sampler visits, descending (Karras spacing)."""
        return karras_sigmas(steps, self.sigma_min, self.sigma_max)

    # --- preconditioning ------------------------------------------------------------------
    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) at `sigma` (any shape), float32 from float64."""
        s = sigma.double()
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = EDM_NOISE_SCALE * s.log() / 4
        return tuple(c.float() for c in (c_skip, c_out, c_in, c_noise))

    def precondition(self, x: torch.Tensor, sigma: torch.Tensor,
                     cond: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip x, c_out, c_in, c_noise) for x (B, C, H, W) at `sigma` (B or 1 levels), the
        coefficients shaped to broadcast over x; c_skip x and c_out float32. Scalar c_skip
        (EDM), or the spectral one: c_skip a filter, c_out its error, of each image's class
        where the filters are per class (`cond`, model/spectral.py)."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma.reshape(-1))
        shape = (-1, 1, 1, 1)
        if self.spectral is None:
            skipped = c_skip.reshape(shape) * x.float()
        else:
            skipped = self.spectral.skip(x, sigma, cond)
            c_out = self.spectral.c_out(sigma.reshape(-1), *x.shape[-2:], cond)
        return skipped, c_out.reshape(shape), c_in.reshape(shape), c_noise

    def denoise(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma): the network's estimate of x_0. `sigma` is one level per image (B,) or
        one for the whole batch ((), (1,)), which the network embeds once and broadcasts;
        `cond` the condition rows of a conditioned network (model/condition.py). Above
        `network_sigma_max` D is the skip alone (and the network is not run at all when the
        whole batch is above it, as the first steps of sampling are)."""
        skipped, c_out, c_in, c_noise = self.precondition(x, sigma, cond)
        asked = self._network_levels(sigma)
        if asked is not None and not bool(asked.any()):
            return skipped
        f = call_network(net, self.network_input(x, skipped, c_in), c_noise, cond).float()
        return skipped + c_out * (f if asked is None else f * asked)

    def network_input(self, x: torch.Tensor, skipped: torch.Tensor, c_in: torch.Tensor
                      ) -> torch.Tensor:
        """What the network reads, in x's dtype: c_in x, and with skip_input the skip's
        estimate of x_0 after it as more channels. The skip keeps what the noise leaves
        readable (a tile's colour, its layout, its kind) at every level; handed to the
        network it need not rebuild that from the noisy image before correcting it."""
        scaled = c_in * x
        if not self.skip_input:
            return scaled.to(x.dtype)
        joined = torch.cat((scaled, skipped), dim=1).to(x.dtype)
        if scaled.is_contiguous(memory_format=torch.channels_last) and not scaled.is_contiguous():
            # in the image's layout: a channels-last network handed a contiguous input runs
            # every layer after it in that layout, 8% slower a training step on the CPU
            joined = joined.contiguous(memory_format=torch.channels_last)
        return joined

    def _network_levels(self, sigma: torch.Tensor) -> torch.Tensor | None:
        """Where the network is asked: 1 at each level (B, 1, 1, 1) up to network_sigma_max,
        0 above; None without that bound."""
        if self.network_sigma_max is None:
            return None
        return (sigma.reshape(-1, 1, 1, 1) <= self.network_sigma_max).float()

    def denoiser(self, net: nn.Module) -> nn.Module:
        """The network as the samplers call it: (x_t, t) -> x_0 estimate."""
        return EDMDenoiser(net, self)

    # --- training ---------------------------------------------------------------------------
    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """One noise level per image: ln(sigma) ~ N(P_mean, P_std^2), or a mixture of such
        (LogNormalMixture), continuous (float32)."""
        return self.noise_levels.draw_log_sigma(batch, generator, device).exp()

    def loss(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             cond: torch.Tensor | None = None, uncertainty: nn.Module | None = None
             ) -> torch.Tensor:
        """EDMLoss: lambda(sigma) ||D(x_0 + sigma n) - x_0||^2 with lambda = 1 / c_out^2,
        computed as ||F - (x_0 - c_skip x) / c_out||^2 (the same, better conditioned); the
        mean over pixels, then over the batch. With `uncertainty` (model/uncertainty.py,
        diffusion.loss_weighting: learned) each image's loss is L / exp(u) + u."""
        x = x0 + t.reshape(-1, 1, 1, 1).to(x0.dtype) * noise
        skipped, c_out, c_in, c_noise = self.precondition(x, t, cond)
        prediction = call_network(model, self.network_input(x, skipped, c_in), c_noise.reshape(-1),
                                  cond).float()
        asked = self._network_levels(t)
        if asked is not None:  # D is the skip there: its error is no loss the network can lower
            prediction = prediction * asked
        target = (x0.float() - skipped) / c_out
        per_image = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
        if uncertainty is not None:
            per_image = weighted(per_image, uncertainty(c_noise.reshape(-1)))
        return per_image.mean()

    # --- what the samplers share with the discrete process ---------------------------------
    def predict_x0_eps(self, x_t: torch.Tensor, t: float, model_output: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) from the denoiser's output at (x_t, t): x_0 = D, eps = (x_t - alpha x_0)
        / sigma."""
        x0 = model_output.float()
        return x0, (x_t - self.alpha(t) * x0) / self.sigma(t)

    def clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-1.0, 1.0) if self.data_space is None else self.data_space.clip(x0)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.data_space is None else self.data_space.decode(x)


class LogNormalMixture:
    """The noise levels training draws: ln(sigma) ~ N(mean, std^2) (EDM's P_mean, P_std), or,
    with lists, a mixture of such normals with `weights` (equal where not given).

    A 64 px tile's overall content (forest, meadow, water: its mean colour over 4,096 pixels)
    is still readable through noise of sigma ~ 64 x its between-tile spread, so a tile's kind is
    decided at noise levels a single lognormal centred near sigma_data rarely draws; a second
    component there trains them without taking draws from the low levels that finish the
    texture. The scalar form draws exactly as before (the same generator calls)."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float],
                 weights: Sequence[float] | None = None) -> None:
        means = [float(m) for m in (mean if isinstance(mean, Sequence) else [mean])]
        stds = [float(v) for v in (std if isinstance(std, Sequence) else [std])]
        if len(means) != len(stds) or not means:
            raise ValueError(f"lognormal_mean and lognormal_std need the same number of entries, "
                             f"got {len(means)} and {len(stds)}")
        if any(v <= 0 for v in stds):
            raise ValueError(f"lognormal_std must be positive, got {std}")
        weights = [1.0] * len(means) if weights is None else [float(w) for w in weights]
        if len(weights) != len(means) or any(w <= 0 for w in weights):
            raise ValueError(f"lognormal_weights needs one positive weight per component, got "
                             f"{weights}")
        total = sum(weights)
        self.means, self.stds = means, stds
        self.mixture = isinstance(mean, Sequence)
        # upper edges of each component's share of [0, 1)
        self.edges = [sum(weights[: i + 1]) / total for i in range(len(weights) - 1)]

    def draw_log_sigma(self, batch: int, generator: torch.Generator | None = None,
                       device=None) -> torch.Tensor:
        z = torch.randn(batch, generator=generator, device=device)
        if not self.mixture:
            return self.means[0] + self.stds[0] * z
        # which component each image draws from: a uniform against the cumulative weights
        # (searchsorted runs on any device, with the caller's generator)
        u = torch.rand(batch, generator=generator, device=device)
        component = torch.searchsorted(torch.tensor(self.edges, device=u.device), u, right=True)
        means = torch.tensor(self.means, device=u.device)[component]
        stds = torch.tensor(self.stds, device=u.device)[component]
        return means + stds * z


class EDMDenoiser(nn.Module):
    """A network wrapped in a process's preconditioning: forward(x_t, t) = D(x_t; t)."""

    def __init__(self, net: nn.Module, process: EDMProcess) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.channels = getattr(net, "channels", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.process.denoise(self.net, x, t, cond)


def call_network(net: nn.Module, x: torch.Tensor, t: torch.Tensor,
                 cond: torch.Tensor | None) -> torch.Tensor:
    """net(x, t), with the condition only where there is one: an unconditioned network (and
    any network written before conditions existed) is called exactly as before."""
    return net(x, t) if cond is None else net(x, t, cond)


# --- the one builder ------------------------------------------------------------------------

def build_network(model_config: Mapping[str, Any], skip_input: bool = False) -> nn.Module:
    """The U-Net of `model_config`; with `skip_input` (diffusion.skip_input) it reads the
    skip's estimate of x_0 as as many more channels as the image has."""
    from canopy.model.unet import Unet

    if not skip_input:
        return Unet(**model_config)
    return Unet(**model_config, skip_channels=int(model_config.get("channels", 3)))


# Every diffusion key with the default it takes where a config lacks it: the schema's
# (model/params.py DiffusionParams; tests/model check the two agree). Exports written before a
# key existed were trained with its default, so filling it on read rebuilds them as they were.
DIFFUSION_DEFAULTS: dict[str, Any] = {
    "timesteps": 1000, "objective": "eps", "loss": "l2", "min_snr_gamma": None,
    "timestep_sampling": "uniform", "lognormal_mean": -1.2, "lognormal_std": 1.2,
    "process": "vp", "standardize": False, "sigma_data": "auto", "sigma_min": 0.002,
    "sigma_max": 80.0, "loss_weighting": "fixed", "lognormal_weights": None,
    "preconditioning": "scalar", "spectral_border": "periodic", "mean_prior": "gaussian",
    "network_sigma_max": None, "skip_components": 1, "skip_input": False,
}


def process_config(diffusion: Mapping[str, Any], schedule: str,
                   stats: Mapping[str, Any] | None,
                   classes: Sequence[str] | None = None) -> dict[str, Any]:
    """{diffusion, schedule[, data_stats]} as train builds its process and the export records
    it: `diffusion` (the params section, or part of it) with sigma_data resolved for a
    continuous process, and the train tiles' stats where the data is standardised. `classes`:
    the region names of a model conditioned on region, whose spectral skip is then one filter
    per class (model/spectral.py), from each region's stats in `stats["regions"]`."""
    d = dict(diffusion)
    full = {**DIFFUSION_DEFAULTS, **d}
    if full["standardize"] and stats is None:
        raise ValueError("diffusion.standardize needs the train tiles' mean and std, which this "
                         "tiles manifest lacks: re-run `canopy etl`")
    if full["process"] != "vp":
        d["sigma_data"] = resolve_sigma_data(full["sigma_data"], full["standardize"], stats)
        if full["sigma_max"] == "auto":
            d["sigma_max"] = resolve_sigma_max(full["standardize"], stats)
    config: dict[str, Any] = {"diffusion": d, "schedule": schedule}
    if full["standardize"]:
        config["data_stats"] = {"mean": list(stats["mean"]), "std": list(stats["std"])}
    if full["preconditioning"] == "spectral":
        # the filter's spectrum: the tiles' DFT's, or their DCT's for the mirror border
        mirror = full["spectral_border"] == "mirror"
        key = "mirror_spectrum" if mirror else "spectrum"
        if key not in stats:
            setting = " with spectral_border mirror" if mirror else ""
            raise ValueError(f"diffusion.preconditioning spectral{setting} needs the train "
                             "tiles' power spectrum, which this tiles manifest lacks: re-run "
                             "`canopy etl`")
        config["data_stats"]["spectrum"] = stats[key]
        if full["mean_prior"] == "tiles":
            config["data_stats"]["tile_means"] = _unconditioned_stat(
                stats, "tile_means", "mean_prior tiles", classes,
                "the train tiles' mean colours, which this tiles manifest lacks: re-run "
                "`canopy etl`")
            # chosen once here and recorded, so sampling rebuilds the same prior at once
            config["data_stats"]["tile_mean_bandwidth"] = spectral_skip(
                config["data_stats"]).mean_prior.bandwidth
        if full["skip_components"] > 1:
            config["data_stats"]["skip_mixture"] = _unconditioned_stat(
                stats, "skip_mixture", "skip_components", classes,
                "the skip mixture fitted to the train tiles (train/mixture.py), which these "
                "stats lack")
        if classes:
            config["data_stats"]["class_stats"] = _class_stats(stats, classes, key)
    return config


def _unconditioned_stat(stats: Mapping[str, Any], key: str, setting: str,
                        classes: Sequence[str] | None, lacking: str) -> Any:
    """stats[key], which `setting` (of diffusion) needs, for a model without a condition."""
    if key not in stats:
        raise ValueError(f"diffusion.{setting} needs {lacking}")
    if classes:
        raise ValueError(f"diffusion.{setting} is for models without a condition")
    return stats[key]


def _class_stats(stats: Mapping[str, Any], classes: Sequence[str], key: str = "spectrum"
                 ) -> list[Any]:
    """Each class's {"mean", "std", "spectrum"} from the tiles' per-region stats (its
    spectrum the one under `key`), in the model's class order; None for a class without them
    (too few tiles: it takes the filter of all tiles)."""
    regions = stats.get("regions")
    if regions is None:
        raise ValueError("diffusion.preconditioning spectral on a model conditioned on region "
                         "needs each region's power spectrum, which this tiles manifest lacks: "
                         "re-run `canopy etl`")
    found = []
    for name in classes:
        entry = regions.get(name)
        if entry is not None:  # the spectrum the border uses, under one name; not the other
            entry = {"mean": entry["mean"], "std": entry["std"],
                     **({"spectrum": entry[key]} if key in entry else {})}
        found.append(entry)
    return found


def build_process(config: Mapping[str, Any]) -> GaussianDiffusion | EDMProcess:
    """The noise process of an export's config ({diffusion, schedule[, data_stats]}) or of
    train's (process_config): the keys a config lacks take DIFFUSION_DEFAULTS."""
    d = {**DIFFUSION_DEFAULTS, **config["diffusion"]}
    data_space = data_space_from(config.get("data_stats"))
    process = d["process"]
    if process == "vp":
        diffusion = GaussianDiffusion(
            make_betas(config["schedule"], int(d["timesteps"])), d["objective"], d["loss"],
            d["min_snr_gamma"], d["timestep_sampling"], d["lognormal_mean"], d["lognormal_std"],
        )
        diffusion.data_space = data_space
        return diffusion
    if process == "edm":
        sigma_data = resolve_sigma_data(d["sigma_data"], d["standardize"], config.get("data_stats"))
        spectral = None
        if d["preconditioning"] == "spectral":
            spectral = spectral_skip(config["data_stats"], mirror=d["spectral_border"] == "mirror")
        return EDMProcess(sigma_data, d["lognormal_mean"], d["lognormal_std"],
                          d["sigma_min"], d["sigma_max"], data_space, d["lognormal_weights"],
                          spectral, d["network_sigma_max"], d["skip_input"])
    raise ValueError(f"unknown process {process!r}: use one of {', '.join(PROCESSES)}")


def build(config: Mapping[str, Any]) -> tuple[nn.Module, GaussianDiffusion | EDMProcess]:
    """(network, process) from an export's config: what train, sample and bench all build."""
    skip_input = {**DIFFUSION_DEFAULTS, **config["diffusion"]}["skip_input"]
    return build_network(config["model"], skip_input), build_process(config)


# sigma_max: auto starts sampling where the tiles' mean colour keeps this share of the power
MEAN_COLOUR_POWER_AT_SIGMA_MAX = 0.01


def resolve_sigma_max(standardize: bool, stats: Mapping[str, Any] | None) -> float:
    """`diffusion.sigma_max: auto`: the noise level at which the tiles' mean colour holds
    1% of the power, at least EDM's 80. A tile's mean colour carries n^2 Cov(mean) of power
    in the DC coefficient of its n x n orthonormal DFT (the spectrum's DC, etl), which noise
    of level sigma meets with sigma^2 per colour direction: sampling from N(0, sigma_max^2)
    assumes the DC's own power is negligible beside that, else the samples' mean colours
    vary too little (by sqrt(1 + lambda / sigma_max^2)). Without a spectrum: 80."""
    if stats is None or "spectrum" not in stats:
        return 80.0
    dc = torch.tensor(stats["spectrum"]["radial"][0], dtype=torch.float64)
    if not standardize:  # the spectrum is of the standardised tiles: back to [-1, 1] units
        std = torch.tensor(stats["std"], dtype=torch.float64)
        dc = dc * torch.outer(std, std)
    largest = float(torch.linalg.eigvalsh(dc).max())
    level = math.sqrt(max(largest, 0.0) / MEAN_COLOUR_POWER_AT_SIGMA_MAX)
    return max(80.0, float(f"{level:.3g}"))


def resolve_sigma_data(sigma_data: float | str, standardize: bool,
                       stats: Mapping[str, Any] | None) -> float:
    """`diffusion.sigma_data: auto`: 1 for standardised data; else the root mean square of
    the per-channel stds the tiles manifest records; else 0.5 (EDM's value for [-1, 1])."""
    if sigma_data != "auto":
        return float(sigma_data)
    if standardize:
        return 1.0
    if stats is not None:
        return math.sqrt(sum(float(s) ** 2 for s in stats["std"]) / len(stats["std"]))
    return 0.5
