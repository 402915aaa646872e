"""The network, its EMA, the optimizer and one training step. The loop is in train/loop.py.

Imports no pydantic (the params are only read), so that bench/gpu_mfu.py can run this very
step on a GPU machine that has torch but not the rest of Canopy's dependencies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from canopy.distributed import SINGLE, Dist
from canopy.model.process import DIFFUSION_DEFAULTS, build_network, build_process
from canopy.model.process import process_config as make_process_config
from canopy.model.uncertainty import NoiseLevelUncertainty
from canopy.seeding import Stream, torch_seed
from canopy.train.data import to_model_input
from canopy.train.ema import EMA, PowerFunctionEMA
from canopy.train.runtime import Runtime

if TYPE_CHECKING:
    from canopy.params import CanopyParams


def _adamw(modules: list[torch.nn.Module], lr: float, weight_decay: float,
           device: torch.device, beta2: float = 0.999):
    """Fused AdamW (one kernel for all parameters, not a loop) where this torch has it: CUDA,
    and CPU from torch 2.4; the foreach version elsewhere. The parameters of `modules` in
    order (the network's first, so its parameter indices in the saved state never move)."""
    kw = {"lr": lr, "weight_decay": weight_decay, "betas": (0.9, beta2)}
    params = [p for module in modules for p in module.parameters()]
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except RuntimeError:
            pass
    return torch.optim.AdamW(params, **kw)


def network_config(params: CanopyParams, condition: dict[str, list[str] | None] | None
                   ) -> dict[str, Any]:
    """The U-Net's keyword arguments as the export records them: model params, and for a
    conditioned model its kinds with their classes (absent for an unconditioned one, whose
    config is as it was before conditions existed)."""
    kwargs = params.model.unet_kwargs()
    if condition:
        kwargs["condition"] = dict(condition)
    return kwargs


class Trainer:
    """Under torchrun (`dist` of several ranks) each rank trains on its slice of every global
    batch through DistributedDataParallel, which averages the gradients: the same update as
    one process on the whole batch. `model` is always the bare network (EMA, checkpoints and
    gradient clipping use it, with the same keys as one process); `forward` runs the step."""

    def __init__(self, params: CanopyParams, runtime: Runtime, dist: Dist = SINGLE,
                 process_config: dict | None = None,
                 condition: dict[str, list[str] | None] | None = None) -> None:
        self.params = params
        self.runtime = runtime
        self.dist = dist
        tp = params.train
        device = runtime.device
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once
        torch.manual_seed(params.seed)  # the initial weights
        # `condition`: a conditioned model's kinds with their classes (train/loop.py reads
        # them from the tiles; canopy/conditions.py model_condition)
        self.condition = condition or None
        self.model = build_network(network_config(params, self.condition),
                                   getattr(params.diffusion, "skip_input", False)).to(
            device, memory_format=fmt)
        self.ema = EMA(self.model, tp.ema_decay, tp.ema_warmup_steps, tp.ema_every)
        # Post-hoc EMA profiles (None when train.phema_stds is empty)
        self.phema = PowerFunctionEMA(self.model, tp.phema_stds) if tp.phema_stds else None
        # The process as the export will record it (train/loop.py passes the tiles' stats in
        # `process_config`); without it, from the params alone (no standardisation stats).
        if process_config is None:
            d = {key: getattr(params.diffusion, key) for key in DIFFUSION_DEFAULTS
                 if hasattr(params.diffusion, key)}
            process_config = make_process_config(d, params.schedule, None)
        self.diffusion = build_process(process_config).to(device)
        # EDM2's learned loss weight per noise level (diffusion.loss_weighting: learned): a
        # training device only, optimised with the network and saved in the training state.
        # (getattr: bench/gpu_mfu.py passes a plain namespace of the params it needs)
        learned = getattr(params.diffusion, "loss_weighting", "fixed") == "learned"
        self.uncertainty = NoiseLevelUncertainty().to(device) if learned else None
        trained = [self.model] + ([self.uncertainty] if self.uncertainty is not None else [])
        self.optimizer = _adamw(trained, tp.lr, tp.weight_decay, device, tp.adam_beta2)
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.grad_scaler)
        self.forward = self._forward_module()

    def _forward_module(self) -> torch.nn.Module:
        """DDP around the network, then torch.compile around DDP: the order PyTorch's DDP
        notes recommend (the compiler splits the graph at DDP's gradient buckets, so the
        all-reduce of one bucket overlaps the backward of the next)."""
        net: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device = self.runtime.device
            ids = [device.index] if device.type == "cuda" else None
            # Every rank builds the same initial weights from the seed; DDP also broadcasts
            # rank 0's at construction.
            net = DistributedDataParallel(net, device_ids=ids)
        return torch.compile(net) if self.runtime.compile else net

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0 over warmup_steps (Adam's early moment estimates are noisy,
        and large first updates can blow up a fresh network), then constant, or (lr_decay)
        down towards 0 over the last lr_decay_fraction of train.steps."""
        tp = self.params.train
        scale = (step + 1) / tp.warmup_steps if step < tp.warmup_steps else 1.0
        if tp.lr_decay != "none":
            length = max(1, round(tp.lr_decay_fraction * tp.steps))
            done = (step - (tp.steps - length)) / length  # 0 at the first decayed step
            if done >= 0:
                left = 1.0 - done if tp.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
                scale = min(scale, max(0.0, left))
        return tp.lr * scale

    def step(self, images: torch.Tensor, step: int, conditions: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a uint8 batch (and, for a conditioned model, its condition
        rows); `step` counts from 0. Returns the loss and the gradient norm before clipping,
        as tensors (no device sync here)."""
        rt = self.runtime
        x0 = to_model_input(images, rt.device, rt.channels_last)
        if self.diffusion.data_space is not None:  # standardised data (diffusion.standardize)
            x0 = self.diffusion.data_space.encode(x0)
        t, noise = self._draw_t_and_noise(x0, step)
        cond = None
        if self.condition is not None:
            if conditions is None:
                raise ValueError("a conditioned model trains on batches with their conditions")
            cond = self._drop_conditions(conditions, step).to(rt.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        with rt.autocast():
            if self.uncertainty is None:
                loss = self.diffusion.loss(self.forward, x0, t, noise, cond)
            else:
                loss = self.diffusion.loss(self.forward, x0, t, noise, cond, self.uncertainty)
        self.scaler.scale(loss).backward()
        if self.uncertainty is not None and self.dist.enabled:
            self._average_uncertainty_gradients()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, step + 1)
        if self.phema is not None:
            self.phema.update(self.model, step + 1)
        return loss.detach(), grad_norm.detach()

    def _average_uncertainty_gradients(self) -> None:
        """u(sigma) lives outside DistributedDataParallel (it is not part of the network), so
        its gradients are averaged over the ranks here, as DDP does the network's."""
        import torch.distributed as td

        for p in self.uncertainty.parameters():
            td.all_reduce(p.grad, op=td.ReduceOp.SUM)
            p.grad.div_(self.dist.world)

    def _drop_conditions(self, conditions: torch.Tensor, step: int) -> torch.Tensor:
        """Classifier-free guidance's condition dropout: each image's whole condition becomes
        NaN ("none") with probability train.condition_dropout. Drawn on the CPU from its own
        stream for the global batch (every rank the same; a rank keeps its slice), so it
        changes no other draw."""
        rate = self.params.train.condition_dropout
        gen = torch.Generator().manual_seed(
            torch_seed(self.params.seed, Stream.TRAIN_CONDITION, step))
        total = conditions.shape[0] * self.dist.world
        lo, hi = self.dist.shard(total) if self.dist.enabled else (0, total)
        dropped = (torch.rand(total, generator=gen) < rate)[lo:hi]
        return torch.where(dropped[:, None], float("nan"), conditions.float())

    def _draw_t_and_noise(self, x0: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The timesteps and noise of step `step` for this rank's images. Every rank draws
        those of the whole global batch, with the same generator, and keeps its slice: the
        union over ranks is exactly one process's draw."""
        rt = self.runtime
        gen = torch.Generator(rt.device).manual_seed(torch_seed(self.params.seed, Stream.TRAIN_NOISE, step))
        if not self.dist.enabled:
            t = self.diffusion.sample_timesteps(x0.shape[0], generator=gen, device=rt.device)
            noise = torch.empty_like(x0).normal_(generator=gen)  # same memory format as x0
            return t, noise
        total = x0.shape[0] * self.dist.world  # the global batch (of crops, in crop training)
        lo, hi = self.dist.shard(total)
        t = self.diffusion.sample_timesteps(total, generator=gen, device=rt.device)
        fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
        noise = torch.empty((total, *x0.shape[1:]), dtype=x0.dtype, device=rt.device,
                            memory_format=fmt).normal_(generator=gen)
        return t[lo:hi], noise[lo:hi]
