"""The network's image space: pixels in [-1, 1], channels first."""

from __future__ import annotations

import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), rounding half to even."""
    scaled = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
