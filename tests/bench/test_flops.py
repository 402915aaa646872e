"""The FLOP counts of bench/flops.py against counts made by hand: exact, convs and matmuls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canopy.model.unet import Unet

from flops import (
    count_sampling_flops,
    count_training_flops,
    find_peak,
    flop_counter,
    mfu,
    peak_tflops,
    precision_of,
)


def conv_flops(c_in: int, c_out: int, k: int, h: int, w: int, groups: int = 1) -> int:
    """2 FLOPs per multiply-add: each output pixel of each output channel sums c_in/groups * k*k."""
    return 2 * c_in * c_out * k * k * h * w // groups


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(self.depthwise(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_small_network_forward_and_backward_match_a_hand_count():
    b, h, w = 2, 12, 10
    net = Small()
    x = torch.randn(b, 3, h, w)
    stem = b * conv_flops(3, 8, 3, h, w)
    depthwise = b * conv_flops(8, 8, 7, h, w, groups=8)
    pointwise = b * conv_flops(8, 16, 1, h, w)
    head = 2 * b * 16 * 10
    with flop_counter() as forward:
        out = net(x)
    with flop_counter() as backward:
        out.sum().backward()
    assert forward.get_total_flops() == stem + depthwise + pointwise + head
    # Input and weight gradients each cost a forward; the stem's input needs no gradient.
    assert backward.get_total_flops() == stem + 2 * (depthwise + pointwise + head)


def test_depthwise_weight_gradient_is_counted_once_per_group():
    """torch's own formula counts it `channels` times over; ours must not."""
    conv = nn.Conv2d(32, 32, 7, padding=3, groups=32)
    out = conv(torch.randn(1, 32, 8, 8, requires_grad=True)).sum()
    with flop_counter() as backward:
        out.backward()
    assert backward.get_total_flops() == 2 * conv_flops(32, 32, 7, 8, 8, groups=32)


def hook_count(net: Unet, x: torch.Tensor, t: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of every Conv2d and Linear from the shapes that reach it (forward hooks),
    independently of FlopCounterMode; and each layer's count by name."""
    per_layer: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                c_in, (k, _), groups = module.in_channels, module.kernel_size, module.groups
                b, c_out, h, w = output.shape
                per_layer[name] = b * conv_flops(c_in, c_out, k, h, w, groups)
            else:
                rows = output.numel() // module.out_features
                per_layer[name] = 2 * rows * module.in_features * module.out_features
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(x, t)
    for handle in handles:
        handle.remove()
    return sum(per_layer.values()), per_layer


@pytest.mark.parametrize("batch", [1, 3])
def test_unet_training_flops_match_a_per_layer_hand_count(batch):
    torch.manual_seed(0)
    net = Unet(dim=8, dim_mults=(1, 2, 4))
    size = 16
    x = torch.randn(batch, 3, size, size)
    t = torch.randint(0, 1000, (batch,))
    total, per_layer = hook_count(net, x, t)
    flops = count_training_flops(net, batch, size)
    assert flops.forward * batch == total
    # Backward: two gradients per layer, except the stem's input and the first time-MLP
    # layer's input (the sinusoidal embedding of t), which need none.
    no_input_grad = per_layer["init_conv"] + per_layer["time_mlp.1"]
    assert flops.backward * batch == 2 * total - no_input_grad
    assert flops.training == flops.forward + flops.backward


def test_sampling_call_embeds_the_timestep_once_per_batch():
    net = Unet(dim=8, dim_mults=(1, 2))
    batch, size = 4, 16
    total, per_layer = hook_count(net, torch.randn(batch, 3, size, size), torch.tensor([5]))
    assert count_sampling_flops(net, batch, size) == total
    assert per_layer["time_mlp.1"] == 2 * 8 * 32  # one row, not `batch`


@pytest.mark.parametrize("name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_table_is_picked_by_device_name(name, card):
    peak = find_peak(name)
    assert (peak.card if peak else None) == card


def test_peak_and_mfu():
    assert find_peak("NVIDIA H200").for_precision("bf16") == 989.5
    assert precision_of(torch.bfloat16, tf32=False) == "bf16"
    assert precision_of(None, tf32=True) == "tf32"
    assert precision_of(None, tf32=False) == "fp32"
    assert peak_tflops(torch.device("cpu"), "bf16") is None  # no table for CPUs
    assert peak_tflops(torch.device("cpu"), "bf16", override=2.0) == 2.0
    assert mfu(494.75e12, 989.5) == pytest.approx(0.5)
    assert mfu(1e12, None) is None
