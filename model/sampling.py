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

from canopy.model.condition_embedding import guided
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
    conditions: torch.Tensor | None = None,
    guidance: float = 1.0,
    guide: torch.nn.Module | None = None,
    autoguidance: float = 1.0,
    guide_sigmas: tuple[float, float] = (0.0, float("inf")),
) -> torch.Tensor:
    """One image per seed, as a uint8 tensor (B, H, W, C) on the CPU. With `channels_last` the
    network sees NHWC inputs (convert its weights too: `net.to(memory_format=...)`).
    `on_step` is called after each step (a progress bar). `refuse_non_finite`: raise
    NonFiniteImages instead of returning images whose values were NaN or infinite.
    `conditions` (a conditioned network only): one condition row per seed
    (model/condition.py), with classifier-free `guidance` (0 unconditional, 1 conditional,
    > 1 guided). `guide` (with `autoguidance` w != 1): a worse version of `net` (the same
    network earlier in its training), and each step whose noise level sigma (noise over
    signal, in the process's data units) lies in `guide_sigmas` takes guide + w (net - guide)
    (guidance in a limited interval: Kynkaanniemi et al. 2024); the others the net alone."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)

    x = noise()
    if scheduler.init_noise_sigma != 1.0:
        x = x * scheduler.init_noise_sigma
    scheduler.reset()  # the same scheduler runs batch after batch
    plain = _batch_invariant_forward(net, device, amp_dtype)
    autoguided = None
    if guide is not None and autoguidance != 1:
        autoguided = _autoguided_forward(plain, _batch_invariant_forward(guide, device, amp_dtype),
                                         autoguidance)
    if conditions is not None:
        plain = _guided_forward(plain, conditions.to(device), guidance)
        if autoguided is not None:
            autoguided = _guided_forward(autoguided, conditions.to(device), guidance)
    lo, hi = guide_sigmas
    with torch.inference_mode(), _batch_invariant_kernels(device):
        for t, t_prev in scheduler.pairs():
            t_row = torch.tensor([t], device=device)  # one row: embedded once, broadcast
            forward = plain
            if autoguided is not None and lo <= noise_to_signal(scheduler.diffusion, t) <= hi:
                forward = autoguided
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
        return lambda x, t, *cond: torch.cat([net(image[None], t, *cond) for image in x])
    return net


def noise_to_signal(diffusion, t: int | float) -> float:
    """The noise level of time t as EDM's sigma: noise std over signal scale, sigma / alpha
    (a continuous process's own sigma(t) / alpha(t); under the discrete vp process
    sqrt((1 - alpha_bar_t) / alpha_bar_t))."""
    if diffusion.continuous:
        return float(diffusion.sigma(t)) / float(diffusion.alpha(t))
    alpha_bar = float(diffusion.alphas_cumprod[int(t)])
    return ((1.0 - alpha_bar) / alpha_bar) ** 0.5


def _autoguided_forward(forward: Callable, guide: Callable, weight: float) -> Callable:
    """Autoguidance (Karras et al. 2024): D = D_guide + w (D - D_guide). Both networks see
    the same input, timestep and condition; under classifier-free guidance each of its two
    branches is autoguided."""
    def autoguided(x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        return guided(guide(x, t, *cond).float(), forward(x, t, *cond).float(), weight)

    return autoguided


def _guided_forward(forward: Callable, conditions: torch.Tensor, guidance: float) -> Callable:
    """The network under classifier-free guidance: out = u + w (c - u), u unconditional
    (NaN rows), c conditional. Images are grouped by condition and each group's condition is
    one row, broadcast like the timestep, so an image's output does not depend on which other
    conditions share its batch. w = 0 and w = 1 need one call, other w two."""
    absent = torch.full_like(conditions[:1], float("nan"))
    if guidance == 0:
        return lambda x, t: forward(x, t, absent)
    groups = _condition_groups(conditions)

    def guided_forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = None
        for rows, cond in groups:
            part = x[rows]
            result = forward(part, t, cond)
            if guidance != 1:
                result = guided(forward(part, t, absent).float(), result.float(), guidance)
            if out is None:
                out = torch.empty((x.shape[0], *result.shape[1:]), dtype=result.dtype,
                                  device=result.device)
            out[rows] = result.to(out.dtype)
        return out

    return guided_forward


def _condition_groups(conditions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image indices, the one condition row they share) for each distinct row, in order of
    first appearance (NaN rows compare equal: they are all "no condition")."""
    keys: dict[bytes, list[int]] = {}
    for i, row in enumerate(conditions.nan_to_num(float("inf")).cpu().numpy()):
        keys.setdefault(row.tobytes(), []).append(i)
    device = conditions.device
    return [(torch.tensor(rows, device=device), conditions[rows[0]:rows[0] + 1])
            for rows in keys.values()]


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
