"""The sampling loop of `canopy sample` and of the training previews: reproducible per image,
whatever the batch.

Image i's starting noise and every per-step noise come from its own CPU generator, seeded by
the caller (one seed per image), then move to the device, so image i does not depend on how
many images are asked for or on which others share its batch. Seeding alone is not enough: on
CPU, fp32 oneDNN convolutions and any GEMM over the batch give results that differ in the last
bits with the batch size, and 50-1000 denoising steps turn that into different pixels. So the
timestep is embedded once for the whole batch (one row, broadcast), and in fp32 on CPU the
network runs on one image at a time: every call has the same shape whatever the batch, so
oneDNN's fast kernels give the same bits (ATen's own kernels, batch-invariant too, were 1.6x
slower on a 2-core AVX2 CPU). oneDNN's bf16 path is batch-invariant as it is. tests/sample
checks this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from canopy.model.images import to_uint8
from canopy.model.scheduler import Scheduler


class NonFiniteImages(ArithmeticError):
    """The sampling loop ended in NaN or infinite values (damaged weights, a diverged run):
    their uint8 images would be silently black or white."""

    def __init__(self, positions: list[int]):
        super().__init__(f"non-finite values in images at batch positions {positions}")
        self.positions = positions


def sample_images(
    net: torch.nn.Module,
    scheduler: Scheduler,
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    on_step: Callable[[], object] | None = None,
    refuse_non_finite: bool = False,
) -> torch.Tensor:
    """One image per seed, as a uint8 tensor (B, H, W, C) on the CPU. With `channels_last` the
    network sees NHWC inputs (convert its weights too: `net.to(memory_format=...)`).
    `on_step` is called after each step (a progress bar). `refuse_non_finite`: raise
    NonFiniteImages instead of returning images whose values were NaN or infinite."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

    x = noise()
    if scheduler.init_noise_sigma != 1.0:
        x = x * scheduler.init_noise_sigma
    scheduler.reset()  # the same scheduler runs batch after batch
    forward = _batch_invariant_forward(net, device, amp_dtype)
    with torch.inference_mode(), _batch_invariant_kernels(device):
        for t, t_prev in scheduler.pairs():
            t_row = torch.tensor([t], device=device)  # one row: embedded once, broadcast
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                out = forward(x.contiguous(memory_format=layout), t_row)
            step_noise = noise() if scheduler.needs_noise(t, t_prev) else None
            x = scheduler.step(out.float(), t, t_prev, x, step_noise)
            if on_step is not None:
                on_step()
    image = scheduler.diffusion.to_image(x)
    if refuse_non_finite:
        finite = torch.isfinite(image.flatten(1)).all(dim=1).cpu()
        if not bool(finite.all()):
            raise NonFiniteImages([i for i, ok in enumerate(finite.tolist()) if not ok])
    return to_uint8(image).cpu()


def _batch_invariant_forward(net: torch.nn.Module, device: torch.device,
                             amp_dtype: torch.dtype | None) -> Callable:
    """The network as sampling calls it: in fp32 on CPU one image per call (oneDNN's bits depend
    on the batch size, not on which image), elsewhere the whole batch."""
    if device.type == "cpu" and amp_dtype is None:
        return lambda x, t: torch.cat([net(image[None], t) for image in x])
    return net


@contextlib.contextmanager
def _batch_invariant_kernels(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        previous = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous
    else:
        yield
