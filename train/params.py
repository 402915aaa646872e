"""The `train` section of params.yaml (every key: `canopy params show etl`, docs/params.md); the `model` and
`diffusion` sections are in model/params.py.

The top-level keys `schedule` (linear | cosine | sigmoid) and `seed` live in canopy/params.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from canopy.schema import Auto, StrictModel


class TrainParams(StrictModel):
    steps: int = Field(1000, ge=1)  # optimizer steps in all (raise it and re-run to train on)
    batch_size: int = Field(16, ge=1, le=4096)  # tiles per step (over all ranks)
    lr: float = Field(2e-4, gt=0.0, le=1.0)  # AdamW learning rate after the warm-up
    warmup_steps: int = Field(100, ge=0)  # linear lr warm-up from 0; constant afterwards
    # Decay of the lr to 0 over the last lr_decay_fraction of train.steps: linear, cosine
    # (half a cosine), or none (constant after the warm-up). With a decay, train.steps becomes
    # a resume key: the schedule of every step depends on it.
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    lr_decay_fraction: float = Field(0.2, gt=0.0, le=1.0)  # the share of the run it spans
    adam_beta2: float = Field(0.999, gt=0.0, lt=1.0)  # AdamW's beta2 (EDM2: 0.99); beta1 0.9
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)  # AdamW decoupled weight decay
    grad_clip: float = Field(1.0, gt=0.0)  # max global grad norm
    # Which symmetries of the square training tiles are drawn under (docs/benchmarks.md "Augmentation"):
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
    # Crop sides as divisors of the tile side (2 = half, 4 = quarter), one drawn per crop step.
    crop_sizes: list[int] = Field(default_factory=lambda: [2, 4], min_length=1, max_length=4)
    # The last share of train.steps trained on whole tiles only.
    crop_full_final: float = Field(0.25, ge=0.0, le=1.0)
    # EMA of the weights (fp32), what `canopy sample` uses. The EMA copies the weights for the
    # first ema_warmup_steps steps, then averages with decay min(ema_decay, (1+n)/(10+n)), n
    # counting updates since then; updates run every ema_every steps with the decay raised to
    # that power, so the averaging horizon in steps does not change.
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup_steps: int = Field(100, ge=0)  # steps the EMA copies the weights
    ema_every: int = Field(1, ge=1, le=1000)  # steps between EMA updates
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
