"""The `model`, `diffusion` and `train` sections of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from canopy.schema import StrictModel


class ModelParams(StrictModel):
    # Reference design: dim 64, dim_mults [1, 2, 4, 8] (62.7 M parameters at 3 channels).
    dim: int = Field(64, ge=4, le=1024)
    init_dim: int | None = Field(None, ge=4, le=1024)  # stem width; null = dim
    dim_mults: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    channels: int = Field(3, ge=1, le=16)
    convnext_mult: int = Field(2, ge=1, le=8)
    norm: Literal["group", "layer"] = "group"
    norm_groups: int = Field(1, ge=1, le=64)

    @field_validator("dim_mults")
    @classmethod
    def _positive_mults(cls, mults: list[int]) -> list[int]:
        if not mults or any(m < 1 for m in mults):
            raise ValueError("dim_mults must be a non-empty list of positive integers")
        return mults

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mults) - 1)


class DiffusionParams(StrictModel):
    timesteps: int = Field(1000, ge=2, le=100_000)
    objective: Literal["eps", "v"] = "eps"
    loss: Literal["l2", "l1"] = "l2"
    min_snr_gamma: float | None = Field(None, gt=0.0)  # e.g. 5.0; null = no weighting


class TrainParams(StrictModel):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    ema_warmup_steps: int = Field(100, ge=0)
    ema_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    augment: bool = True
    num_workers: int = Field(2, ge=0, le=64)
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(500, ge=1)
    preview_steps: int = Field(20, ge=1)
    out: str = "models"
