"""The `model` and `diffusion` sections of params.yaml: the network's shape and the noise
process it is trained under. Plain Python (no torch import), so that params validation stays
cheap for every command; train and sample read them, and the export records them
(canopy/weights.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from canopy.model.condition import ConditionKind, ordered_kinds
from canopy.model.shape import validate_config
from canopy.schema import StrictModel


class ModelParams(StrictModel):
    # The U-Net's shape. Reference design: dim 64, dim_mults [1, 2, 4, 8] (62.7 M parameters).
    dim: int = Field(64, ge=4, le=1024)  # base width; even (sin/cos time embedding halves)
    init_dim: int | None = Field(None, ge=1, le=1024)  # stem width; null = dim
    dim_mults: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])  # width per level
    channels: int = Field(3, ge=1, le=16)  # image channels (RGB tiles: 3)
    convnext_mult: int = Field(2, ge=1, le=8)  # widening inside each ConvNeXt block
    # group: GroupNorm(norm_groups, C); norm_groups 1 (the reference) normalises over C, H, W.
    # layer: LayerNorm over the channels of each pixel (the ConvNeXt paper's norm).
    norm: Literal["group", "layer"] = "group"
    norm_groups: int = Field(1, ge=1, le=64)  # groups of norm group; divides every width
    # Side of each ConvNeXt block's depthwise conv: 7 in the paper. 3 and 5 train faster on CPUs,
    # where the fp32 depthwise 7x7 weight gradient is slow, but cost the demo its layout.
    kernel_size: Literal[3, 5, 7, 9] = 7
    # The two dense convs inside each ConvNeXt block: 3 (3x3, the annotated diffusion model's)
    # or 1 (the ConvNeXt paper's per-pixel MLP; the depthwise conv still mixes neighbours).
    # 1 has a quarter of the parameters and trains 1.6-1.8x faster per image on a CPU; on the
    # demo, 1.8x the steps in the same time did not beat 3x3 (docs/benchmarks.md).
    mlp_kernel_size: Literal[1, 3] = 3
    # How each block takes the noise level: add (a per-channel shift before the block's first
    # norm) or scale_shift (ADM's adaptive norm: a gain and a shift after it).
    time_modulation: Literal["add", "scale_shift"] = "add"
    # Self-attention heads between the two middle blocks (ADM's attention at the lowest
    # resolution): every position of the coarsest feature map sees every other in one layer.
    # 0 = none (the network without it, as every export before the key).
    mid_attention_heads: int = Field(0, ge=0, le=64)
    # What the model is conditioned on (docs/conditioning.md), from each tile's
    # metadata: region (a class: the AOI, local entry or synthetic kind), month (cyclic),
    # lat, lon, gsd (metres per pixel), tree_cover (0..1). [] = unconditioned (the default:
    # such a model is built, trained and exported exactly as before the key existed).
    condition: list[ConditionKind] = Field(default_factory=list)

    @field_validator("condition")
    @classmethod
    def _condition(cls, kinds: list[str]) -> list[str]:
        repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
        if repeated:
            raise ValueError(f"model.condition names {repeated[0]!r} twice")
        return ordered_kinds(kinds)

    @field_validator("dim_mults")
    @classmethod
    def _positive_mults(cls, mults: list[int]) -> list[int]:
        if not mults or any(m < 1 for m in mults):
            raise ValueError("dim_mults must be a non-empty list of positive integers")
        if len(mults) > 8:
            raise ValueError(f"dim_mults has {len(mults)} levels; at most 8 are supported")
        return mults

    @model_validator(mode="after")
    def _buildable(self) -> ModelParams:
        validate_config(**self.unet_kwargs())  # e.g. odd dim, norm_groups not dividing widths
        return self

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mults) - 1)

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of model.unet.Unet (also stored with the weights). The keys newer
        than the first exports are left out at their defaults, which weights written before
        they existed were built with: those weights still load and resume, and their files
        stay byte-identical."""
        kwargs = self.model_dump(mode="json")
        del kwargs["condition"]  # train adds the kinds with their classes, from the tiles
        for key in ("kernel_size", "mlp_kernel_size", "time_modulation", "mid_attention_heads"):
            if kwargs[key] == type(self).model_fields[key].default:
                del kwargs[key]
        return kwargs


class DiffusionParams(StrictModel):
    timesteps: int = Field(1000, ge=2, le=100_000)  # T, the length of the noise schedule
    objective: Literal["eps", "v"] = "eps"  # what the network predicts: noise, or v
    loss: Literal["l2", "l1"] = "l2"  # the distance between prediction and target
    min_snr_gamma: float | None = Field(None, gt=0.0)  # min-SNR weighting, e.g. 5.0; null = off
    # Which timesteps training draws: uniform (DDPM), or lognormal (EDM: ln sigma ~ N(mean, std))
    timestep_sampling: Literal["uniform", "lognormal"] = "uniform"
    lognormal_mean: float | list[float] = -1.2  # EDM's P_mean, in [-10, 10] (the demo: -0.25)
    lognormal_std: float | list[float] = 1.2  # EDM's P_std, in (0, 10] (the demo: 1.3)
    # edm: lists in lognormal_mean and lognormal_std draw ln sigma from a mixture of normals,
    # one per entry, in these proportions (null: equal); e.g. mean [-0.5, 2.5], std [1.6, 1.0],
    # weights [0.7, 0.3] adds the high noise levels where a tile's overall kind is decided.
    lognormal_weights: list[float] | None = None
    # The noise process (model/process.py): vp, the discrete process above (timesteps,
    # schedule, objective); edm, EDM's continuous one with its preconditioning, trained on
    # ln sigma ~ N(lognormal_mean, lognormal_std^2) drawn continuously, sampled at karras
    # spacing (sample.spacing: karras).
    process: Literal["vp", "edm"] = "vp"
    # Standardise the data per channel with the train tiles' mean and std (etl writes them in
    # the tiles manifest): unit variance, as v-prediction and EDM with sigma_data = 1 assume.
    standardize: bool = False
    # edm: the data's std in the preconditioning. auto: 1 with standardize, else the rms of
    # the manifest's per-channel stds, else 0.5 (EDM's for images in [-1, 1]).
    sigma_data: float | Literal["auto"] = "auto"
    sigma_min: float = Field(0.002, gt=0.0, le=10.0)  # edm: the lowest noise level sampled
    # edm: the highest noise level, where sampling starts. auto: where a tile's mean colour,
    # the signal that noise drowns last (its power grows with the tile's pixel count), keeps
    # under 1% of the noise's power: 10 x the square root of the largest eigenvalue of the
    # tiles' DC power (the manifest's spectrum), at least 80 (EDM's, made for 32 px images);
    # about 470 for the demo's 64 px tiles and 630 for NEON's. From 80, the samples' mean
    # colours had 30-37% less variance than the tiles' (docs/benchmarks.md). Training does not
    # read it.
    sigma_max: float | Literal["auto"] = 80.0
    # edm: how the noise levels' losses are weighted. fixed: EDM's lambda(sigma) alone;
    # learned: EDM2's uncertainty weighting, a tiny network u(sigma) trained beside the U-Net,
    # each image's loss L / exp(u) + u, so every noise level weighs about the same
    # (model/uncertainty.py). Training only: exports and sampling are unchanged.
    loss_weighting: Literal["fixed", "learned"] = "fixed"
    # edm: the denoiser's skip connection. scalar: EDM's c_skip = sigma_data^2 / (sigma_data^2 +
    # sigma^2); spectral: c_skip per spatial frequency, the Wiener filter of the train tiles'
    # power spectrum (etl measures it), so a tile's overall colour and layout, which noise
    # leaves readable long after its texture, pass through without the network relearning
    # them (model/spectral.py). A model conditioned on region gets one filter per region,
    # about the region's mean colour (etl measures each region's spectrum too). Needs
    # standardize.
    preconditioning: Literal["scalar", "spectral"] = "scalar"
    # spectral: how the filter treats the tile's border. periodic: the tile as one period of a
    # repeating image (the FFT's own assumption), so a border pixel's estimate draws on the
    # opposite border; mirror: the tile extended by its mirror images (a DCT's assumption), so
    # it draws on its own neighbours, with the spectrum of the tiles' DCT (etl measures both).
    # Mirror halves the skip's error on the outermost pixels and takes the faint frame off the
    # samples; SWD and FID did not move on the demo or NEON (docs/benchmarks.md).
    spectral_border: Literal["periodic", "mirror"] = "periodic"
    # spectral: the prior of a tile's mean colour in the skip. gaussian: the one the spectrum
    # implies (the Wiener filter's DC); tiles: the distribution of the train tiles' means
    # (a kernel density estimate, etl records them), so tiles take the mean colours real
    # tiles have rather than blends of them (model/spectral.py TileMeanPrior).
    mean_prior: Literal["gaussian", "tiles"] = "gaussian"
    # spectral: how many kinds of tile the skip's prior tells apart. 1: one stationary
    # Gaussian of all tiles (one Wiener filter); k > 1: train clusters the train tiles by mean
    # colour and texture into k kinds (water, soil, open and closed canopy, ...) and the skip
    # is the posterior mean under the mixture of their Gaussians, each with its own spectrum
    # (model/spectral.py MixtureSpectralSkip), so a noisy tile keeps its own kind's texture.
    # Periodic border and models without a condition only.
    skip_components: int = Field(1, ge=1, le=256)
    # the network reads the skip's estimate of x_0 as 3 more input channels beside the noisy
    # image: what the skip keeps (a tile's colour, layout and kind) is handed to the network
    # instead of being read again from the noise by each network call (edm only)
    skip_input: bool = False

    @field_validator("sigma_data")
    @classmethod
    def _positive_sigma_data(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < value <= 100:
            raise ValueError(f"sigma_data must be 'auto' or in (0, 100], got {value}")
        return value

    # edm: the highest noise level at which the network is asked; above it the denoiser is
    # the skip alone (its prior's estimate of the mean colour; all else is noise there).
    # Training draws levels above about 80 a few times in ten thousand, so the network's
    # output there is untrained; null: asked at every level.
    network_sigma_max: float | None = Field(None, gt=0.0, le=10_000.0)

    @field_validator("sigma_max")
    @classmethod
    def _sigma_max_range(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < value <= 10_000:
            raise ValueError(f"sigma_max must be 'auto' or in (0, 10000], got {value}")
        return value

    @field_validator("lognormal_mean", "lognormal_std")
    @classmethod
    def _lognormal_ranges(cls, value: float | list[float], info) -> float | list[float]:
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise ValueError("needs at least one entry")
        if len(entries) == 1:
            value = entries[0]  # a one-entry list is the plain lognormal
        if info.field_name == "lognormal_mean" and not all(-10 <= v <= 10 for v in entries):
            raise ValueError(f"must be in [-10, 10], got {value}")
        if info.field_name == "lognormal_std" and not all(0 < v <= 10 for v in entries):
            raise ValueError(f"must be in (0, 10], got {value}")
        return value

    @model_validator(mode="after")
    def _mixture_fits(self) -> DiffusionParams:
        means, stds = self.lognormal_mean, self.lognormal_std
        mixture = isinstance(means, list) or isinstance(stds, list)
        if not mixture:
            if self.lognormal_weights is not None:
                raise ValueError("lognormal_weights needs lists in lognormal_mean and lognormal_std")
            return self
        if self.process != "edm":
            raise ValueError("a mixture of noise levels (lists in lognormal_mean, lognormal_std) "
                             "needs process edm")
        if not (isinstance(means, list) and isinstance(stds, list) and len(means) == len(stds)):
            raise ValueError(f"lognormal_mean and lognormal_std need the same number of entries, "
                             f"got {means} and {stds}")
        weights = self.lognormal_weights
        if weights is not None and (len(weights) != len(means) or not all(w > 0 for w in weights)):
            raise ValueError(f"lognormal_weights needs one positive weight per entry of "
                             f"lognormal_mean ({len(means)}), got {weights}")
        return self

    @model_validator(mode="after")
    def _process_fits(self) -> DiffusionParams:
        if self.process == "edm":
            if self.sigma_max != "auto" and not self.sigma_min < self.sigma_max:
                raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max "
                                 f"({self.sigma_max})")
            if self.timestep_sampling != "lognormal" or self.loss != "l2" or self.min_snr_gamma:
                raise ValueError("process edm trains with timestep_sampling lognormal, loss l2 and "
                                 "no min_snr_gamma (its own loss weighting)")
            if self.spectral_border != "periodic" and self.preconditioning != "spectral":
                raise ValueError("spectral_border applies to preconditioning spectral only")
            if self.mean_prior != "gaussian" and self.preconditioning != "spectral":
                raise ValueError("mean_prior applies to preconditioning spectral only")
            if self.skip_components > 1 and (self.preconditioning != "spectral"
                                             or self.spectral_border != "periodic"):
                raise ValueError("skip_components above 1 needs preconditioning spectral with "
                                 "spectral_border periodic")
            if self.preconditioning == "spectral" and not self.standardize:
                raise ValueError("preconditioning spectral needs standardize: true (the spectrum "
                                 "is measured on the standardised tiles)")
        elif self.loss_weighting != "fixed":
            raise ValueError("loss_weighting learned needs process edm")
        elif self.preconditioning != "scalar":
            raise ValueError(f"preconditioning {self.preconditioning} needs process edm")
        elif self.network_sigma_max is not None:
            raise ValueError("network_sigma_max needs process edm")
        elif self.skip_components != 1:
            raise ValueError("skip_components needs process edm")
        elif self.skip_input:
            raise ValueError("skip_input needs process edm")
        return self

    def config(self) -> dict[str, Any]:
        """The section as checkpoints and exports record it: the keys added with the
        processes (ADDED_KEYS) are left out at their defaults, so the checkpoints of earlier
        runs still resume and their settings give the same export."""
        dumped = self.model_dump(mode="json")
        for key in ADDED_KEYS:
            if dumped[key] == type(self).model_fields[key].default:
                del dumped[key]
        return dumped


# The diffusion keys newer than the first exports: absent from their configs, where the
# defaults hold (canopy/weights.py fills them on read).
ADDED_KEYS = ("process", "standardize", "sigma_data", "sigma_min", "sigma_max",
              "loss_weighting", "lognormal_weights", "preconditioning", "spectral_border",
              "mean_prior", "network_sigma_max", "skip_components", "skip_input")
