"""Where and how to train: device, precision, memory format, compile, data workers.

Each is a train param with an `auto` default; this module turns them into concrete choices
(device and precision through canopy/accelerator.py, shared with `sample`) and rejects
combinations the machine cannot run, with the fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from canopy.accelerator import (
    pick_channels_last,
    pick_device,
    pick_precision,
    precision_name,
)

if TYPE_CHECKING:  # no pydantic at import: see train/engine.py
    from canopy.train.params import TrainParams


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = plain fp32
    grad_scaler: bool  # fp16 only: scale the loss so small gradients do not flush to zero
    channels_last: bool
    compile: bool
    num_workers: int
    pin_memory: bool

    @property
    def precision(self) -> str:
        return precision_name(self.amp_dtype)

    def describe(self) -> str:
        parts = [str(self.device), self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append("compiled")
        return ", ".join(parts)

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )


def resolve_runtime(train: TrainParams) -> Runtime:
    device = pick_device(train.device, "train.device")
    amp_dtype = pick_precision(train.precision, device, "train.precision")
    on_gpu = device.type in ("cuda", "mps")
    channels_last = pick_channels_last(train.channels_last, device)
    compile_default = device.type == "cuda" and _has_triton()
    use_compile = _switch(train.compile, default=compile_default)
    if train.num_workers == "auto":
        # On CPU the PNG decoding (about 1 ms a tile) is nothing next to a training step, and
        # worker processes would take cores from torch's threads.
        workers = 4 if on_gpu else 0
    else:
        workers = int(train.num_workers)
    return Runtime(
        device=device,
        amp_dtype=amp_dtype,
        grad_scaler=amp_dtype == torch.float16,
        channels_last=channels_last,
        compile=use_compile,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def _switch(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "on"


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except ImportError:
        return False
