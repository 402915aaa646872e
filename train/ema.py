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

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, by name (train/checkpoint.py saves every part of the training
        state through its state_dict)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


class PowerFunctionEMA:
    """The power-function EMAs of post-hoc EMA (canopy/phema.py; Karras et al. 2024, sec. 3):
    one fp32 copy of the weights per relative std, each updated after every optimizer step with
    decay (1 - 1/t)^(gamma + 1), so that it averages steps 0..t with weight tau^gamma. They are
    not sampled from directly: `canopy train` writes them to models/phema/ every
    train.phema_every steps, and `canopy sample` rebuilds the EMA of any std from those."""

    def __init__(self, model: nn.Module, stds: list[float]) -> None:
        from canopy.phema import beta

        self.stds = list(stds)
        self.models = [copy.deepcopy(model).eval().requires_grad_(False) for _ in self.stds]
        self._beta = beta

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        params = list(model.parameters())
        for std, ema in zip(self.stds, self.models):
            b = self._beta(std, step)
            ema_params = list(ema.parameters())
            if b == 0.0:
                torch._foreach_copy_(ema_params, params)
            else:
                torch._foreach_lerp_(ema_params, params, 1.0 - b)

    def states(self) -> list[dict[str, torch.Tensor]]:
        return [ema.state_dict() for ema in self.models]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}/{name}": t for i, state in enumerate(self.states()) for name, t in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, ema in enumerate(self.models):
            prefix = f"{i}/"
            ema.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
