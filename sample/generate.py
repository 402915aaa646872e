"""The sampling loop: reproducible per image, whatever the batch.

Image i's starting noise and every per-step noise come from its own CPU generator seeded by
(seed, i), then move to the device, so image i does not depend on how many images are asked
for or on which others share its batch. Seeding alone is not enough: on CPU, fp32 oneDNN
convolutions and any GEMM over the batch give results that differ in the last bits with the
batch size, and 50-1000 denoising steps turn that into different pixels. So the timestep is
embedded once for the whole batch (one row, broadcast), and fp32 convolutions on CPU run on
ATen's per-image kernels instead of oneDNN's (measured: batch-invariant, and no slower for
these shapes); oneDNN's bf16 path is batch-invariant as it is. tests/sample checks this.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from canopy.model.ddim import DDIMScheduler
from canopy.model.ddpm import DDPMScheduler
from canopy.model.diffusion import GaussianDiffusion
from canopy.model.dpmsolver import DPMSolverMultistepScheduler
from canopy.model.images import to_uint8
from canopy.seeding import Stream, torch_seed


@dataclass(frozen=True)
class Step:
    t: int  # timestep the network sees
    t_prev: int  # where the step lands (-1 = the clean image)
    noisy: bool  # whether the step adds fresh noise


class Sampler:
    """A uniform view of the schedulers in model/: the steps, and one update."""

    def __init__(self, diffusion: GaussianDiffusion, name: str, steps: int, eta: float,
                 spacing: str = "trailing") -> None:
        self.name = name
        if name == "ddpm":
            self._ddpm = DDPMScheduler(diffusion)
            self.steps = [Step(t, t - 1, t > 0) for t in self._ddpm.timesteps]
        elif name == "ddim":
            self._ddim = DDIMScheduler(diffusion, steps, eta, spacing=spacing)
            self.steps = [Step(t, prev, eta > 0 and prev >= 0) for t, prev in self._ddim.pairs()]
        elif name == "dpmpp2m":
            if eta != 0:
                raise ValueError(f"dpmpp2m is deterministic: eta must be 0, got {eta}")
            self._dpm = DPMSolverMultistepScheduler(diffusion, steps, spacing=spacing)
            self.steps = [Step(t, prev, False) for t, prev in self._dpm.pairs()]
        else:
            raise ValueError(f"unknown sampler {name!r}: use ddpm, ddim or dpmpp2m")

    def reset(self) -> None:
        """Before each batch: DPM-Solver++ carries the previous x0 estimate between steps."""
        if self.name == "dpmpp2m":
            self._dpm.reset()

    def update(self, out: torch.Tensor, step: Step, x: torch.Tensor,
               noise: torch.Tensor | None) -> torch.Tensor:
        if self.name == "ddpm":
            return self._ddpm.step(out, step.t, x, noise)
        if self.name == "dpmpp2m":
            return self._dpm.step(out, step.t, step.t_prev, x)
        return self._ddim.step(out, step.t, step.t_prev, x, noise)


def generate(net: torch.nn.Module, sampler: Sampler, indices: Sequence[int], seed: int,
             shape: tuple[int, int, int], device: torch.device,
             amp_dtype: torch.dtype | None, progress: bool = False,
             channels_last: bool = False) -> torch.Tensor:
    """Images `indices` as a uint8 tensor (B, H, W, C) on the CPU. With `channels_last` the
    network sees NHWC inputs (convert its weights too: `net.to(memory_format=...)`)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generators = [torch.Generator().manual_seed(torch_seed(seed, Stream.SAMPLE_NOISE, i)) for i in indices]

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

    x = noise()
    sampler.reset()  # the same Sampler runs batch after batch
    bar = tqdm(sampler.steps, desc="steps", leave=False, disable=not progress)
    with torch.inference_mode(), _batch_invariant_kernels(device, amp_dtype):
        for step in bar:
            t = torch.tensor([step.t], device=device)  # one row: embedded once, broadcast
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                out = net(x.contiguous(memory_format=layout), t)
            x = sampler.update(out.float(), step, x, noise() if step.noisy else None)
    return to_uint8(x).cpu()


@contextlib.contextmanager
def _batch_invariant_kernels(device: torch.device, amp_dtype: torch.dtype | None) -> Iterator[None]:
    if device.type == "cpu" and amp_dtype is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a note about Intel GPUs' TF32
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    elif device.type == "cuda":
        previous = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous
    else:
        yield
