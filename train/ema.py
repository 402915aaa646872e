"""Exponential moving average of the weights, kept in fp32: the weights `canopy sample` uses.

    ema <- decay * ema + (1 - decay) * w         (Polyak averaging; done as a foreach lerp)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup_steps: int, every: int) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.every = every

    def decay_at(self, step: int) -> float:
        """Decay for the update after optimizer step `step` (1-based). 0 during the warm-up
        (the EMA copies the weights: early weights are noise not worth remembering), then
        min(decay, (1 + n) / (10 + n)) with n = steps since the warm-up (the ramp of
        TensorFlow's ExponentialMovingAverage), so the average does not stay anchored to the
        weights at the end of the warm-up."""
        if step <= self.warmup_steps:
            return 0.0
        n = step - self.warmup_steps
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if step > self.warmup_steps and step % self.every:
            return
        # One update stands for `every` steps: decay ** every keeps the horizon in steps.
        decay = self.decay_at(step) ** (self.every if step > self.warmup_steps else 1)
        ema_params = list(self.model.parameters())
        params = list(model.parameters())
        if decay == 0.0:
            torch._foreach_copy_(ema_params, params)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
