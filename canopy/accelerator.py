"""Which device and precision a stage runs on: `auto` resolved, impossible choices refused.

Shared by `train` and `sample` so that both pick the same accelerator the same way. `key` names
the params section in error messages (e.g. "sample.device").
"""

from __future__ import annotations

import torch

from canopy.errors import UserError


def pick_device(choice: str, key: str) -> torch.device:
    """auto: CUDA, then MPS, then CPU."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is cuda but this torch build sees no CUDA GPU: "
                        f"install a CUDA build of torch, or set {key}: auto")
    if choice == "mps" and not mps_available():
        raise UserError(f"{key} is mps but MPS is not available here: set {key}: auto")
    return torch.device(choice)


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: there bf16 matmuls and convs run about 2x faster than fp32. Without
    them oneDNN emulates bf16 and gains little, so `auto` stays in fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def pick_precision(choice: str, device: torch.device, key: str) -> torch.dtype | None:
    """The autocast dtype for `choice` (auto | bf16 | fp16 | fp32) on `device`; None = fp32."""
    kind = device.type
    if choice == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if choice == "fp32":
        return None
    if choice == "fp16":
        if kind == "cpu":
            raise UserError(f"{key} fp16 needs a GPU (fp16 on CPU is slow and needs loss "
                            "scaling): use bf16, fp32 or auto")
        return torch.float16
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{key} is bf16 but this GPU has no bf16 support: use fp16 or auto")
    return torch.bfloat16


def pick_channels_last(choice: str, device: torch.device) -> bool:
    """auto | on | off -> whether to run convolutions in channels-last memory: auto is on for
    CUDA (tensor-core kernels want NHWC) and CPU (oneDNN's blocked formats), off for MPS."""
    if choice == "auto":
        return device.type in ("cuda", "cpu")
    return choice == "on"


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]
