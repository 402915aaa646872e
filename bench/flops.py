"""FLOPs of the network and model FLOPs utilisation (MFU), for the benchmark scripts.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on a copy of the network on the
`meta` device (shapes only: no memory, no arithmetic, any batch in seconds). As in MFU as
usually reported, only matrix products and convolutions count (2 FLOPs per multiply-add);
norms, activations and the optimizer do not. The backward pass is counted too, not assumed
to be 2x the forward: the stem's input and the timestep embedding need no gradient.

torch's own formula for the convolution backward (torch 2.11 to 2.13) leaves `groups` out of
the weight gradient and counts a depthwise conv's weight gradient `channels` times over (twice
the reference network's true backward); it is replaced here.

Used from a checkout (`python bench/...`): the product does not report MFU, and the peak table
is benchmark knowledge that goes stale with every new card.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None,
                        **kwargs) -> int:
    """Each gradient asked for (input, weight) takes as many multiply-adds as the forward conv:
    every product x * w of the forward appears once in each."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop}
    )


def meta_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The same network with shape-only weights, for counting."""
    return copy.deepcopy(net).to("meta")


@dataclass(frozen=True)
class TrainingFlops:
    forward: int  # per image
    backward: int  # per image

    @property
    def training(self) -> int:
        return self.forward + self.backward

    @property
    def backward_ratio(self) -> float:
        return self.backward / self.forward


def count_training_flops(net: torch.nn.Module, batch: int, size: int) -> TrainingFlops:
    """Forward and backward FLOPs per image of a training step: `batch` images of size x size,
    one timestep per image (as Trainer.step draws them)."""
    meta_net = meta_copy(net).train()
    x = torch.empty(batch, net.channels, size, size, device="meta")
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    with flop_counter() as forward:
        out = meta_net(x, t)
    with flop_counter() as backward:
        out.float().square().mean().backward()  # the loss's form does not change what is counted
    return TrainingFlops(forward.get_total_flops() // batch, backward.get_total_flops() // batch)


def count_sampling_flops(net: torch.nn.Module, batch: int, size: int) -> int:
    """FLOPs of one network call of the sampling loop on `batch` images: one timestep row for
    the whole batch (model/sampling.py), so the time MLP runs once per call."""
    meta_net = meta_copy(net).eval()
    x = torch.empty(batch, net.channels, size, size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    with flop_counter() as counter, torch.no_grad():
        meta_net(x, t)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------------
# Peak dense throughput, TFLOP/s, from NVIDIA's datasheets (H100: "NVIDIA H100 Tensor Core GPU"
# datasheet; H200: the H200 product page's specifications table; A100: "NVIDIA A100 Tensor Core
# GPU" datasheet; L4: "NVIDIA L4 Tensor Core GPU" datasheet). The datasheets print the tensor-
# core figures with 2:4 sparsity; the dense figures here are half of those. fp32 is the plain
# (non-tensor-core) rate. Ordered most specific name first: "H100 PCIe" before "H100".


@dataclass(frozen=True)
class Peak:
    card: str
    bf16: float  # = fp16, dense tensor cores
    tf32: float  # dense tensor cores
    fp32: float

    def for_precision(self, precision: str) -> float:
        return {"bf16": self.bf16, "fp16": self.bf16, "tf32": self.tf32, "fp32": self.fp32}[precision]


PEAKS: tuple[tuple[str, Peak], ...] = (
    (r"H200 NVL", Peak("H200 NVL", bf16=835.5, tf32=417.5, fp32=60.0)),
    (r"H200", Peak("H200 SXM", bf16=989.5, tf32=494.5, fp32=67.0)),
    (r"H100 NVL", Peak("H100 NVL", bf16=835.5, tf32=417.5, fp32=60.0)),
    (r"H100 PCIe", Peak("H100 PCIe", bf16=756.5, tf32=378.0, fp32=51.0)),
    (r"H100", Peak("H100 SXM", bf16=989.5, tf32=494.5, fp32=67.0)),  # "NVIDIA H100 80GB HBM3"
    (r"A100", Peak("A100", bf16=312.0, tf32=156.0, fp32=19.5)),  # SXM4 and PCIe alike
    (r"\bL4\b", Peak("L4", bf16=121.0, tf32=60.0, fp32=30.3)),  # not the L40 / L40S
)


def find_peak(device_name: str) -> Peak | None:
    """The table's entry for a torch.cuda.get_device_name(), or None for an unknown card."""
    for pattern, peak in PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def precision_of(amp_dtype: torch.dtype | None, tf32: bool) -> str:
    """Which peak applies: the autocast dtype's, else TF32's where fp32 matmuls may use it."""
    if amp_dtype is not None:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    return "tf32" if tf32 else "fp32"


def peak_tflops(device: torch.device, precision: str, override: float | None = None) -> float | None:
    """The peak to divide by: `override` if given, else the table's for a known CUDA card,
    else None (CPUs: no table; pass --peak-tflops)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    peak = find_peak(torch.cuda.get_device_name(device))
    return peak.for_precision(precision) if peak else None


def mfu(flops_per_s: float, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak (TFLOP/s); None where the peak is unknown."""
    return None if peak is None else flops_per_s / (peak * 1e12)


def describe_rate(flops_per_s: float, peak: float | None) -> str:
    """'12.3 TFLOP/s, MFU 4.5%' (the MFU only where a peak is known)."""
    text = f"{flops_per_s / 1e12:.3g} TFLOP/s"
    share = mfu(flops_per_s, peak)
    return text if share is None else f"{text}, MFU {100 * share:.1f}% of {peak:g}"
