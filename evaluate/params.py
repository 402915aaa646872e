"""The `evaluate` section of params.yaml."""

from __future__ import annotations

from pydantic import Field

from canopy.schema import StrictModel


class EvaluateParams(StrictModel):
    max_real: int = Field(2000, ge=1)  # cap on real tiles read per split
    out: str = "metrics/evaluate.json"
