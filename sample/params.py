"""The `sample` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from canopy.schema import StrictModel


class SampleParams(StrictModel):
    n: int = Field(64, ge=1, le=1_000_000)
    batch_size: int = Field(16, ge=1)
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    out: str = "data/samples"
