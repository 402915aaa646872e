"""The network, its EMA, the optimizer and one training step. The loop is in train/loop.py.

Imports no pydantic (the params are only read), so that bench/gpu_mfu.py can run this very
step on a GPU machine that has torch but not the rest of Canopy's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.unet import Unet
from canopy.seeding import Stream, torch_seed
from canopy.train.data import to_model_input
from canopy.train.ema import EMA
from canopy.train.runtime import Runtime

if TYPE_CHECKING:
    from canopy.params import CanopyParams


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """Fused AdamW (one kernel for all parameters, not a loop) where this torch has it: CUDA,
    and CPU from torch 2.4; the foreach version elsewhere."""
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:
            pass
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


class Trainer:
    def __init__(self, params: CanopyParams, runtime: Runtime) -> None:
        self.params = params
        self.runtime = runtime
        tp = params.train
        device = runtime.device
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once
        torch.manual_seed(params.seed)  # the initial weights
        self.model = Unet(**params.model.unet_kwargs()).to(device, memory_format=fmt)
        self.ema = EMA(self.model, tp.ema_decay, tp.ema_warmup_steps, tp.ema_every)
        betas = make_betas(params.schedule, params.diffusion.timesteps)
        d = params.diffusion
        self.diffusion = GaussianDiffusion(
            betas, d.objective, d.loss, d.min_snr_gamma,
            d.timestep_sampling, d.lognormal_mean, d.lognormal_std,
        ).to(device)
        self.optimizer = _adamw(self.model, tp.lr, tp.weight_decay, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
        self.forward = torch.compile(self.model) if runtime.compile else self.model

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0 over warmup_steps, then constant: Adam's early moment
        estimates are noisy, and large first updates can blow up a fresh network."""
        tp = self.params.train
        if step < tp.warmup_steps:
            return tp.lr * (step + 1) / tp.warmup_steps
        return tp.lr

    def step(self, images: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a uint8 batch; `step` counts from 0. Returns the loss and the
        gradient norm before clipping, as tensors (no device sync here)."""
        rt = self.runtime
        x0 = to_model_input(images, rt.device, rt.channels_last)
        gen = torch.Generator(rt.device).manual_seed(torch_seed(self.params.seed, Stream.TRAIN_NOISE, step))
        t = self.diffusion.sample_timesteps(x0.shape[0], generator=gen, device=rt.device)
        noise = torch.empty_like(x0).normal_(generator=gen)  # same memory format as x0
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        with rt.autocast():
            loss = self.diffusion.loss(self.forward, x0, t, noise)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, step + 1)
        return loss.detach(), grad_norm.detach()
