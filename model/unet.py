"""The denoising U-Net of our reference design (The Annotated Diffusion Model, Rogge & Rasul 2022,
after Ho et al. 2020), with ConvNeXt blocks (Liu et al. 2022, "A ConvNet for the 2020s").

    stem 7x7 conv -> [2 ConvNeXt blocks, down-sample] per level -> 2 middle blocks
    -> [2 ConvNeXt blocks over skip concatenations, up-sample] per level
    -> 1 ConvNeXt block over (x, stem output) -> 1x1 conv

No attention layers unless `mid_attention_heads` puts one between the middle blocks: the
reference shape (dim 64, dim_mults (1, 2, 4, 8), 3 channels) has
62.7 M parameters. Pure math: no files, no params import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from canopy.model.condition_embedding import ConditionEmbedding
from canopy.model.shape import block_widths, level_widths, validate_config


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer position encoding (Vaswani et al. 2017) of the timestep t:

        emb(t) = [sin(t * w_0 .. t * w_{d/2-1}), cos(t * w_0 .. t * w_{d/2-1})],
        w_i = 10000 ** (-i / (d/2 - 1))
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding width must be an even number >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Always fp32: under bf16, timesteps near 1000 would round to multiples of 4.
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise conv (groups = channels) whose backward is faster in bf16 on CPU.

    oneDNN computes the weight gradient of a bf16 depthwise 7x7 conv about 20x slower than its
    forward (measured on a 2-core AVX512-BF16 CPU: 160 ms against 5 ms at 128 channels,
    128 px, batch 4), a third of the whole training step. There the backward is split: the
    input gradient as a conv with the flipped kernel (fast, bf16), the weight gradient in fp32
    (faster, and more exact). Same weights, same forward, same state_dict keys.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not _SPLIT_DEPTHWISE_BACKWARD:
            return super().forward(x)
        dtype = _cpu_autocast_dtype() or x.dtype
        if dtype != torch.bfloat16:
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return _DepthwiseConv.apply(
                x.to(dtype), self.weight.to(dtype), self.bias.to(dtype), self.padding[0]
            )


_SPLIT_DEPTHWISE_BACKWARD = True  # a switch for A/B timing runs


def _cpu_autocast_dtype() -> torch.dtype | None:
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        x, weight = ctx.saved_tensors
        channels, pad = x.shape[1], ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # Stride 1, "same" padding: the transposed conv is the conv with the kernel flipped.
            grad_x = F.conv2d(grad, weight.flip(-1, -2), padding=pad, groups=channels)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(
                x.float(), weight.shape, grad.float(), padding=pad, groups=channels
            ).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3), dtype=torch.float32).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (the norm of the ConvNeXt paper)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # a free view for channels_last tensors
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(kind: str, groups: int, channels: int) -> nn.Module:
    """`group`: GroupNorm(groups, C) (groups=1, the reference, normalises over C, H and W);
    `layer`: LayerNorm over C at each pixel."""
    if kind == "group":
        if channels % groups:
            raise ValueError(
                f"norm_groups={groups} does not divide a layer of {channels} channels: "
                "use a norm_groups that divides dim and init_dim (1 always works)"
            )
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        return ChannelLayerNorm(channels)
    raise ValueError(f"unknown norm {kind!r}: use 'group' or 'layer'")


class ConvNextBlock(nn.Module):
    """x -> dwconv kxk (+ time MLP) -> norm -> conv mxm (out*mult) -> GELU -> norm -> conv mxm (out),
    plus a 1x1 residual conv when the width changes. k = 7 in the ConvNeXt paper; m = 3 in the
    annotated diffusion model, 1 in the ConvNeXt paper (a per-pixel MLP: the depthwise conv
    alone mixes neighbouring pixels).

    `time_modulation`: how the noise level enters. `add` (the annotated diffusion model's): a
    per-channel shift before the first norm. `scale_shift` (ADM's adaptive group norm,
    Dhariwal & Nichol 2021): the first norm's output is scaled by (1 + s) and shifted by b,
    both from the time embedding, so the noise level can also turn each channel's gain up or
    down, which a shift followed by a norm cannot."""

    def __init__(
        self, dim: int, dim_out: int, time_dim: int, mult: int, norm: str, groups: int,
        kernel_size: int = 7, mlp_kernel_size: int = 3, time_modulation: str = "add",
    ) -> None:
        super().__init__()
        self.scale_shift = time_modulation == "scale_shift"
        time_out = 2 * dim if self.scale_shift else dim  # (scale, shift) or the shift alone
        self.time_mlp = nn.Sequential(nn.GELU(), nn.Linear(time_dim, time_out))
        self.ds_conv = DepthwiseConv2d(dim, kernel_size)
        pad = mlp_kernel_size // 2
        self.net = nn.Sequential(
            make_norm(norm, groups, dim),
            nn.Conv2d(dim, dim_out * mult, mlp_kernel_size, padding=pad),
            nn.GELU(),
            make_norm(norm, groups, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, mlp_kernel_size, padding=pad),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        time = self.time_mlp(t_emb)[:, :, None, None]
        if not self.scale_shift:
            return self.net(self.ds_conv(x) + time) + self.res_conv(x)
        scale, shift = time.chunk(2, dim=1)
        h = self.net[0](self.ds_conv(x)) * (1 + scale) + shift
        return self.net[1:](h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual (ADM's attention
    block, Dhariwal & Nichol 2021): every position sees every other in one layer, where the
    convs need a stack of blocks to relate a tile's far corners. Its output projection starts
    at zero, so a new network begins as the one without it."""

    def __init__(self, channels: int, heads: int, norm: str, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = make_norm(norm, groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three heads d) h w -> three b heads (h w) d",
                            three=3, heads=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(y, "b heads (h w) d -> b (heads d) h w", h=height))


def downsample(dim: int, dim_out: int) -> nn.Module:
    """Halve H and W without strided convs or pooling: pixel-unshuffle, then a 1x1 conv."""
    return nn.Sequential(PixelUnshuffle2(), nn.Conv2d(dim * 4, dim_out, 1))


class PixelUnshuffle2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)


def upsample(dim: int, dim_out: int) -> nn.Module:
    """Double H and W: nearest-neighbour up-sampling, then a 3x3 conv."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1)
    )


class Unet(nn.Module):
    """Predicts the noise (or v) in x_t given t. Input H and W must be multiples of
    `downsample_factor` = 2 ** (len(dim_mults) - 1)."""

    def __init__(
        self,
        dim: int = 64,
        init_dim: int | None = None,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        channels: int = 3,
        convnext_mult: int = 2,
        norm: str = "group",
        norm_groups: int = 1,
        kernel_size: int = 7,
        mlp_kernel_size: int = 3,
        time_modulation: str = "add",
        condition: Mapping[str, Sequence[str] | None] | None = None,
        mid_attention_heads: int = 0,
        skip_channels: int = 0,
    ) -> None:
        super().__init__()
        validate_config(dim, init_dim, dim_mults, channels, convnext_mult, norm, norm_groups,
                        kernel_size, mlp_kernel_size, time_modulation, mid_attention_heads)
        init_dim = init_dim or dim
        self.channels = channels
        # the input's channels after the image's: the preconditioning's own estimate of x_0
        # (diffusion.skip_input), which the first convolution reads beside the noisy image
        self.skip_channels = skip_channels
        self.downsample_factor = 2 ** (len(dim_mults) - 1)
        block = _block_factory(convnext_mult, norm, norm_groups, 4 * dim, kernel_size,
                               mlp_kernel_size, time_modulation)

        self.init_conv = nn.Conv2d(channels + skip_channels, init_dim, 7, padding=3)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(dim),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, 4 * dim),
        )
        # The widths come from model/shape.py, which the params check uses too: one source.
        levels = level_widths(dim, init_dim, dim_mults)
        widths = iter(block_widths(dim, init_dim, dim_mults))
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(levels):
            last = i == len(levels) - 1
            self.downs.append(nn.ModuleList([
                block(*next(widths)),
                block(*next(widths)),
                nn.Conv2d(d_in, d_out, 3, padding=1) if last else downsample(d_in, d_out),
            ]))
        self.mid_block1 = block(*next(widths))
        self.mid_block2 = block(*next(widths))
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(levels)):
            last = i == len(levels) - 1
            self.ups.append(nn.ModuleList([
                block(*next(widths)),
                block(*next(widths)),
                nn.Conv2d(d_out, d_in, 3, padding=1) if last else upsample(d_out, d_in),
            ]))
        self.final_block = block(*next(widths))
        self.final_conv = nn.Conv2d(dim, channels, 1)
        # Built last, and only for a conditioned model: an unconditioned one draws its initial
        # weights exactly as before and has the same state_dict keys.
        self.condition = None
        if condition:
            self.condition = ConditionEmbedding(condition, 4 * dim)
        # Built last too: a network without attention draws the same initial weights as
        # before the option existed, and one with it differs from that one only here.
        self.mid_attention = None
        if mid_attention_heads:
            self.mid_attention = SelfAttention(levels[-1][1], mid_attention_heads, norm,
                                               norm_groups)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x: (B, channels, H, W); t: (B,) integer timesteps, or one timestep for the batch
        (shape () or (1,)) whose embedding is computed once and broadcast, so every image of a
        batch gets bit-identical conditioning whatever the batch size. `cond` (conditioned
        models only): (B, kinds) condition rows (model/condition.py), or one row for the
        batch, broadcast like t; NaN or None = unconditional."""
        self._check_input(x)
        # One timestep for the batch stays one row through every time MLP and is broadcast
        # when added to the feature maps: a GEMM over B identical rows would give results
        # that differ in the last bits with B, breaking batch-size-independent sampling.
        t_emb = self.time_mlp(t.reshape(-1))
        if self.condition is not None:
            if cond is None:
                cond = torch.full((1, len(self.condition.kinds)), float("nan"), device=x.device)
            t_emb = t_emb + self.condition(cond).to(t_emb.dtype)
        elif cond is not None:
            raise ValueError("this network is not conditioned (model.condition is empty)")

        x = self.init_conv(x)
        stem = x
        skips = []
        for block1, block2, down in self.downs:
            x = block1(x, t_emb)
            skips.append(x)
            x = block2(x, t_emb)
            skips.append(x)
            x = down(x)
        x = self.mid_block1(x, t_emb)
        if self.mid_attention is not None:
            x = self.mid_attention(x)
        x = self.mid_block2(x, t_emb)
        for block1, block2, up in self.ups:
            x = block1(torch.cat((x, skips.pop()), dim=1), t_emb)
            x = block2(torch.cat((x, skips.pop()), dim=1), t_emb)
            x = up(x)
        x = self.final_block(torch.cat((x, stem), dim=1), t_emb)
        return self.final_conv(x)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = self.channels + self.skip_channels
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(
                f"expected images of shape (B, {expected}, H, W), got {tuple(x.shape)}"
            )
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of {f}, the U-Net's "
                "down-sampling factor: use a multiple of it or fewer dim_mults"
            )


def _block_factory(mult: int, norm: str, groups: int, time_dim: int, kernel_size: int,
                   mlp_kernel_size: int, time_modulation: str):
    def block(d_in: int, d_out: int) -> ConvNextBlock:
        return ConvNextBlock(d_in, d_out, time_dim, mult, norm, groups, kernel_size,
                             mlp_kernel_size, time_modulation)

    return block


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

