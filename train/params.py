"""The `model`, `diffusion` and `train` sections of params.yaml (documented key by key in README.md).

The top-level keys `schedule` (linear | cosine | sigmoid) and `seed` live in canopy/params.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from canopy.model.condition import CONDITION_KINDS, ordered_kinds
from canopy.model.shape import validate_config
from canopy.schema import Auto, StrictModel

ConditionKind = Literal[CONDITION_KINDS]  # type: ignore[valid-type]


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
    norm_groups: int = Field(1, ge=1, le=64)
    # Side of each ConvNeXt block's depthwise conv: 7 in the paper. 3 and 5 train faster on CPUs,
    # where the fp32 depthwise 7x7 weight gradient is slow, but cost the demo its layout.
    kernel_size: Literal[3, 5, 7, 9] = 7
    # What the model is conditioned on (README "Conditioned generation"), from each tile's
    # metadata: region (a class: the AOI, local entry or synthetic kind), month (cyclic),
    # lat, lon, gsd (metres per pixel), tree_cover (0..1). [] = unconditioned (the default:
    # such a model is built, trained and exported exactly as before the key existed).
    condition: list[ConditionKind] = Field(default_factory=list)

    @field_validator("dim_mults")
    @classmethod
    def _positive_mults(cls, mults: list[int]) -> list[int]:
        if not mults or any(m < 1 for m in mults):
            raise ValueError("dim_mults must be a non-empty list of positive integers")
        if len(mults) > 8:
            raise ValueError(f"dim_mults has {len(mults)} levels; at most 8 are supported")
        return mults

    @field_validator("condition")
    @classmethod
    def _condition(cls, kinds: list[str]) -> list[str]:
        repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
        if repeated:
            raise ValueError(f"model.condition names {repeated[0]!r} twice")
        return ordered_kinds(kinds)

    @model_validator(mode="after")
    def _buildable(self) -> ModelParams:
        validate_config(**self.unet_kwargs())  # e.g. odd dim, norm_groups not dividing widths
        return self

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mults) - 1)

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of model.unet.Unet (also stored with the weights). kernel_size is
        left out at its default 7, which weights written before the key existed were built
        with: those weights still load and resume, and their files stay byte-identical."""
        kwargs = self.model_dump(mode="json")
        del kwargs["condition"]  # train adds the kinds with their classes, from the tiles
        if kwargs["kernel_size"] == type(self).model_fields["kernel_size"].default:
            del kwargs["kernel_size"]
        return kwargs


class DiffusionParams(StrictModel):
    timesteps: int = Field(1000, ge=2, le=100_000)  # T, the length of the noise schedule
    objective: Literal["eps", "v"] = "eps"  # what the network predicts: noise, or v
    loss: Literal["l2", "l1"] = "l2"
    min_snr_gamma: float | None = Field(None, gt=0.0)  # min-SNR weighting, e.g. 5.0; null = off
    # Which timesteps training draws: uniform (DDPM), or lognormal (EDM: ln sigma ~ N(mean, std))
    timestep_sampling: Literal["uniform", "lognormal"] = "uniform"
    lognormal_mean: float = Field(-1.2, ge=-10.0, le=10.0)
    lognormal_std: float = Field(1.2, gt=0.0, le=10.0)
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
    sigma_max: float = Field(80.0, gt=0.0, le=10_000.0)  # edm: the highest, where sampling starts

    @field_validator("sigma_data")
    @classmethod
    def _positive_sigma_data(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < value <= 100:
            raise ValueError(f"sigma_data must be 'auto' or in (0, 100], got {value}")
        return value

    @model_validator(mode="after")
    def _process_fits(self) -> DiffusionParams:
        if self.process == "edm":
            if not self.sigma_min < self.sigma_max:
                raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max "
                                 f"({self.sigma_max})")
            if self.timestep_sampling != "lognormal" or self.loss != "l2" or self.min_snr_gamma:
                raise ValueError("process edm trains with timestep_sampling lognormal, loss l2 and "
                                 "no min_snr_gamma (its own loss weighting)")
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
ADDED_KEYS = ("process", "standardize", "sigma_data", "sigma_min", "sigma_max")


class TrainParams(StrictModel):
    steps: int = Field(1000, ge=1)  # optimizer steps in all (raise it and re-run to train on)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(2e-4, gt=0.0, le=1.0)  # AdamW learning rate after the warm-up
    warmup_steps: int = Field(100, ge=0)  # linear lr warm-up from 0; constant afterwards
    # Decay of the lr to 0 over the last lr_decay_fraction of train.steps: linear, cosine
    # (half a cosine), or none (constant after the warm-up). With a decay, train.steps becomes
    # a resume key: the schedule of every step depends on it.
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    lr_decay_fraction: float = Field(0.2, gt=0.0, le=1.0)
    adam_beta2: float = Field(0.999, gt=0.0, lt=1.0)  # AdamW's beta2 (EDM2: 0.99); beta1 0.9
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)  # AdamW decoupled weight decay
    grad_clip: float = Field(1.0, gt=0.0)  # max global grad norm
    # Which symmetries of the square training tiles are drawn under (README "Augmentation"):
    # none; transpose (the identity or the flip about the main diagonal, which keeps a light
    # from the upper left where it is); all (the 8 flips and quarter turns, for imagery
    # without a light direction). The booleans of earlier params still work: true = all,
    # false = none, with the same batches as before.
    augment: Literal["none", "transpose", "all"] = "transpose"
    # Crop training (Patch Diffusion, Wang et al. 2023): each step before the last
    # crop_full_final of train.steps is, with probability crop_fraction, a step on random
    # crops of 1/d of the tile side (d drawn from crop_sizes), d^2 crops from each tile of the
    # batch (the same pixels per step); the network is unchanged. 0 = off (every step on tiles).
    crop_fraction: float = Field(0.0, ge=0.0, le=1.0)
    crop_sizes: list[int] = Field(default_factory=lambda: [2, 4], min_length=1, max_length=4)
    crop_full_final: float = Field(0.25, ge=0.0, le=1.0)
    # EMA of the weights (fp32), what `canopy sample` uses. The EMA copies the weights for the
    # first ema_warmup_steps steps, then averages with decay min(ema_decay, (1+n)/(10+n)), n
    # counting updates since then; updates run every ema_every steps with the decay raised to
    # that power, so the averaging horizon in steps does not change.
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup_steps: int = Field(100, ge=0)
    ema_every: int = Field(1, ge=1, le=1000)
    # Post-hoc EMA (Karras et al. 2024; canopy/phema.py): power-function EMAs of these relative
    # stds (EDM2: [0.05, 0.1]) are kept and written to models/phema/ every phema_every steps and
    # at the last step; `canopy sample` rebuilds the EMA of any std from them (sample.ema_std)
    # without retraining. [] = off. Each snapshot holds one fp32 copy of the weights per std.
    phema_stds: list[float] = Field(default_factory=list, max_length=8)
    phema_every: int = Field(500, ge=1)  # steps between snapshots (not a resume key)
    checkpoint_every: int = Field(500, ge=1)  # steps between checkpoints (and at the end)
    # How to run; none of these changes what is learnt beyond rounding, so changing them does
    # not restart a run. auto picks CUDA, then MPS, then CPU.
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # auto: bf16 autocast on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16, AMX),
    # fp16 with a grad scaler on older GPUs, fp32 elsewhere.
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: Auto = "auto"  # auto: on for CUDA and CPU, off for MPS
    compile: Auto = "auto"  # torch.compile; auto: on for CUDA with Triton, off elsewhere
    num_workers: int | Literal["auto"] = "auto"  # data workers; auto: 0 on CPU, 4 on GPUs
    log_every: int = Field(10, ge=1)  # steps between metric rows (loss, lr, grad norm, img/s)
    sample_every: int = Field(500, ge=1)  # steps between preview grids of EMA samples
    preview_images: int = Field(16, ge=0, le=256)  # images per preview grid; 0 = no previews
    preview_steps: int = Field(20, ge=1, le=1000)  # DDIM steps for previews
    # Under torchrun: how long a rank waits for the others (joining, then every collective)
    # before it stops with an error; a rank that died is noticed within this at the latest.
    dist_timeout_s: int = Field(120, ge=1, le=86_400)
    # How the shards are checked against data/tiles/manifest.json before training: size (each
    # shard's size and tile count, instant) or sha256 (also its hash: reads every shard once,
    # catching a changed byte that keeps the size). Not a resume key: it changes no weight.
    verify_shards: Literal["size", "sha256"] = "size"
    # Classifier-free guidance (model.condition only): the share of training images whose
    # condition is dropped, so that one network also learns the unconditional model that
    # sample.guidance steers away from (Ho & Salimans 2022 use 0.1 to 0.2).
    condition_dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "all" if value else "none"
        return value

    @field_validator("phema_stds")
    @classmethod
    def _phema_stds(cls, stds: list[float]) -> list[float]:
        from canopy.phema import check_std

        for std in stds:
            check_std(std, "each of train.phema_stds")
        if len(set(stds)) != len(stds):
            raise ValueError(f"train.phema_stds repeats a value: {stds}")
        if len(stds) == 1:
            raise ValueError("train.phema_stds needs two stds or more (EDM2: [0.05, 0.1]): one "
                             "profile cannot be reconstructed into others; [] turns it off")
        return stds

    @field_validator("crop_sizes")
    @classmethod
    def _crop_sizes(cls, sizes: list[int]) -> list[int]:
        if any(d not in (2, 4, 8) for d in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"crop_sizes are distinct divisors of the tile side among 2, 4 and "
                             f"8 (half, quarter, eighth), got {sizes}")
        return sizes

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError(f"num_workers must be 'auto' or 0..64, got {value}")
        return value


# What the trained weights depend on. A checkpoint resumes only when these match; the other
# train keys (steps, checkpoint_every, device, precision, ...) may change between runs.
RESUME_TRAIN_KEYS = (
    "batch_size",
    "lr",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "augment",
    "ema_decay",
    "ema_warmup_steps",
    "ema_every",
)

# Resume keys added after the first training-state format, each with the value that trains
# exactly as Canopy did before the key existed. At that value a key is left out of the params
# hash, so states written before it existed still resume (and their hash is unchanged); any
# other value is part of the hash like the keys above.
LATER_RESUME_TRAIN_KEYS: dict[str, object] = {
    "phema_stds": [],
    "lr_decay": "none",
    "lr_decay_fraction": 0.2,
    "adam_beta2": 0.999,
    "crop_fraction": 0.0,
    "crop_sizes": [2, 4],
    "crop_full_final": 0.25,
    "condition_dropout": 0.1,
}


def steps_shape_training(train: TrainParams) -> bool:
    """Whether train.steps changes what every step does (a decay over the last part of the
    run), and so must match for a state to resume."""
    return train.lr_decay != "none" or (train.crop_fraction > 0 and train.crop_full_final > 0)
