"""GPU utilisation (MFU) of Canopy's training and sampling, measured in one go on an H100/H200.

    python bench/gpu_mfu.py --out OUT_DIR            # the reference network; ~8 min on an H200
    python bench/gpu_mfu.py --out OUT_DIR --smoke    # a tiny network, eager, any device: seconds

Runs from a plain checkout with torch and what a GPU image has beside it (numpy, Pillow,
einops, typer): no pydantic, dvc or dvclive, and the project need not be installed. It builds
the product's training step (train/engine.py Trainer.step: bf16 autocast, channels_last,
torch.compile, fused AdamW, the EMA) without the params schema, from the defaults mirrored in
`bench_params` (tests/bench checks them against the schema).

In this order, the most wanted first, so that a run cut short keeps it (OUT_DIR/gpu_mfu.json
and gpu_mfu.txt are rewritten after every measurement; --budget-s skips what would not fit):
  1. FLOPs per image at the shape (bench/flops.py): forward, backward, training.
  2. Training at batch 16 with the product's settings (compile mode default), then with
     AdamW not fused (foreach) and with TF32 for fp32 matmuls, on the same compiled step.
  3. Larger batches (32 64 128 256), compile mode default: the best batch by images/s.
  4. The best batch again with the variants of 2; eager (no compile) and compile mode
     reduce-overhead (CUDA graphs) at batch 16 and at the best batch.
  5. For batch 16 and for each new best: torch.profiler's top kernels and the share of the
     step the GPU is busy, and the step's parts timed alone (forward + backward, gradient
     clipping, optimizer, EMA).
  6. Sampling at the best batch (model/sampling.py, as `canopy sample` runs it): ddim 50 and
     dpmpp2m 20 steps, images/s and MFU; then bf16 batch invariance (images 0-2 sampled as a
     batch of 3 and the last alone must equal the same images in the full batch).
  7. The training data loader alone (train/data.py) on PNG tiles of the shape's size that it
     writes itself: images/s at 0, 4, 8 and 16 workers.
  8. Compile mode max-autotune at the best batch, then at batch 16: long compiles, so last.

Images come from pinned host memory as uint8 (as the loader hands them over) and the steps
start past the lr and EMA warm-ups. The learning rate is not scaled with the batch: these are
speed figures, and a larger batch needs its own convergence check before the product adopts it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def use_checkout_packages() -> None:
    """Import canopy.model, canopy.train... from this checkout as the installed package lays them
    out (pyproject's package-dir: model/ is canopy.model), where the project is not installed."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    try:
        import canopy.model  # noqa: F401  (installed: nothing to do)
    except ModuleNotFoundError:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import canopy

        if str(REPO) not in canopy.__path__:
            canopy.__path__.append(str(REPO))


use_checkout_packages()

from canopy.accelerator import pick_channels_last, pick_device, pick_precision, precision_name
from canopy.model.process import build
from canopy.model.registry import make_scheduler
from canopy.model.sampling import sample_images
from canopy.model.unet import Unet
from canopy.train.data import to_model_input
from canopy.train.engine import Trainer
from canopy.train.runtime import Runtime

from flops import count_sampling_flops, count_training_flops, mfu, peak_tflops, precision_of
from loader_speed import loader_images_per_s, write_png_shard

FIRST_STEP = 10_000  # past the lr warm-up and the EMA's copy phase: the steady-state step


# ----------------------------------------------------------------------------------------------
# What to measure


@dataclass(frozen=True)
class Shape:
    dim: int
    dim_mults: tuple[int, ...]
    size: int

    def unet_kwargs(self) -> dict[str, Any]:
        """Unet's keyword arguments as the params schema exports them (train/params.py)."""
        return {"dim": self.dim, "init_dim": None, "dim_mults": list(self.dim_mults),
                "channels": 3, "convnext_mult": 2, "norm": "group", "norm_groups": 1}


@dataclass(frozen=True)
class Plan:
    shape: Shape
    batches: tuple[int, ...]  # the first is the baseline (the product's default batch)
    base_compile: str | None  # torch.compile mode of the sweep; None = eager
    candidates: tuple[str | None, ...]  # other compile modes at the baseline and best batch
    late_candidates: tuple[str, ...]  # compile modes with long compiles, tried last
    seconds: float  # timed seconds per measurement
    warmup_steps: int  # untimed steps after the first (CUDA graphs record on the 2nd/3rd)
    profile_steps: int
    part_repeats: int  # calls per part of the step timed alone
    sampler_steps: tuple[tuple[str, int], ...]
    loader_workers: tuple[int, ...]
    loader_tiles: int
    budget_s: float


REFERENCE = Shape(dim=64, dim_mults=(1, 2, 4, 8), size=128)
GPU_PLAN = Plan(
    shape=REFERENCE, batches=(16, 32, 64, 128, 256), base_compile="default",
    candidates=(None, "reduce-overhead"), late_candidates=("max-autotune",), seconds=2.0,
    warmup_steps=3, profile_steps=5, part_repeats=5, sampler_steps=(("ddim", 50), ("dpmpp2m", 20)),
    loader_workers=(0, 4, 8, 16), loader_tiles=2048, budget_s=480.0,
)
SMOKE_PLAN = Plan(
    shape=Shape(dim=8, dim_mults=(1, 2), size=16), batches=(2, 4), base_compile=None,
    candidates=(), late_candidates=(), seconds=0.05, warmup_steps=1, profile_steps=2,
    part_repeats=1, sampler_steps=(("ddim", 3), ("dpmpp2m", 3)), loader_workers=(0, 1), loader_tiles=32,
    budget_s=120.0,
)
# Rough compile cost of a mode, in units of the first default-mode compile measured.
COMPILE_COST = {None: 0.1, "default": 1.0, "reduce-overhead": 1.3, "max-autotune": 6.0}


def bench_params(shape: Shape) -> SimpleNamespace:
    """What Trainer reads of the params, with the schema's defaults (train/params.py, canopy/
    params.py): the GPU machine has no pydantic. tests/bench checks them against the schema."""
    return SimpleNamespace(
        seed=0,
        schedule="linear",
        model=SimpleNamespace(unet_kwargs=shape.unet_kwargs),
        diffusion=SimpleNamespace(timesteps=1000, objective="eps", loss="l2", min_snr_gamma=None,
                                  timestep_sampling="uniform", lognormal_mean=-1.2,
                                  lognormal_std=1.2),
        train=SimpleNamespace(lr=2e-4, warmup_steps=100, weight_decay=0.0, grad_clip=1.0,
                              ema_decay=0.999, ema_warmup_steps=100, ema_every=1,
                              phema_stds=[], lr_decay="none", lr_decay_fraction=0.2,
                              adam_beta2=0.999),
    )


@dataclass(frozen=True)
class Device:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    peak_override: float | None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def peak(self, tf32: bool) -> float | None:
        return peak_tflops(self.device, precision_of(self.amp_dtype, tf32), self.peak_override)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def make_trainer(plan: Plan, dev: Device, batch: int, compile_mode: str | None) -> Trainer:
    runtime = Runtime(device=dev.device, amp_dtype=dev.amp_dtype,
                      grad_scaler=dev.amp_dtype == torch.float16, channels_last=dev.channels_last,
                      compile=False, num_workers=0, pin_memory=dev.cuda)
    trainer = Trainer(bench_params(plan.shape), runtime)
    if compile_mode is not None:
        mode = None if compile_mode == "default" else compile_mode
        trainer.forward = torch.compile(trainer.model, mode=mode)
    return trainer


def uint8_batch(batch: int, size: int, pin: bool) -> torch.Tensor:
    """A loader-like batch: uint8, channels_last view of NHWC, in pinned memory on CUDA."""
    gen = torch.Generator().manual_seed(0)
    nhwc = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen)
    return (nhwc.pin_memory() if pin else nhwc).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------
# Measuring


class Stepper:
    """Runs Trainer.step on one batch, counting steps from FIRST_STEP."""

    def __init__(self, trainer: Trainer, images: torch.Tensor, dev: Device) -> None:
        self.trainer, self.images, self.dev = trainer, images, dev
        self.step = FIRST_STEP

    def run(self, n: int) -> None:
        for _ in range(n):
            self.trainer.step(self.images, self.step)
            self.step += 1

    def timed(self, seconds: float, min_steps: int = 3) -> dict[str, float]:
        """Steps in chunks with a sync after each, until `seconds` and `min_steps` are reached."""
        steps, chunk = 0, 1
        self.dev.sync()
        start = time.perf_counter()
        while True:
            self.run(chunk)
            self.dev.sync()
            steps += chunk
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and steps >= min_steps:
                break
            chunk = min(2 * chunk, 16)
        return {"steps": steps, "seconds": elapsed, "step_ms": 1e3 * elapsed / steps,
                "images_per_s": steps * len(self.images) / elapsed}


def time_calls(fn: Callable[[], object], dev: Device, repeats: int) -> float:
    """Milliseconds per call of fn, synced."""
    fn()
    dev.sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    dev.sync()
    return 1e3 * (time.perf_counter() - start) / repeats


def step_parts_ms(trainer: Trainer, images: torch.Tensor, dev: Device, repeats: int) -> dict:
    """The parts of Trainer.step timed alone (synced after each), to tell which one limits."""
    rt, params = trainer.runtime, list(trainer.model.parameters())
    gen = torch.Generator(rt.device).manual_seed(0)

    def forward_backward() -> None:
        x0 = to_model_input(images, rt.device, rt.channels_last)
        t = trainer.diffusion.sample_timesteps(x0.shape[0], generator=gen, device=rt.device)
        noise = torch.empty_like(x0).normal_(generator=gen)
        with rt.autocast():
            loss = trainer.diffusion.loss(trainer.forward, x0, t, noise)
        loss.backward()

    parts = {
        "input_to_device": lambda: to_model_input(images, rt.device, rt.channels_last),
        "forward_backward": forward_backward,
        "grad_clip": lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
        "optimizer": trainer.optimizer.step,
        "ema": lambda: trainer.ema.update(trainer.model, FIRST_STEP),
    }
    out = {name: time_calls(fn, dev, repeats) for name, fn in parts.items()}
    trainer.optimizer.zero_grad(set_to_none=True)
    return out


def profile_steps(stepper: Stepper, steps: int) -> dict:
    """torch.profiler over `steps` steps: the top kernels (ops on CPU) by self time, and the
    kernel time per step (over the unprofiled step time: the share of the step the GPU is busy;
    low means host overhead or syncs)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = stepper.dev.cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    stepper.dev.sync()
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        stepper.run(steps)
        stepper.dev.sync()
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    if cuda:  # the kernels (and copies) themselves, not the CPU ops that launched them
        key = "self_device_time_total"
        ranked = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
        ranked = ranked or list(averages)  # should a torch not mark kernels so
    else:
        key, ranked = "self_cpu_time_total", list(averages)
    ranked.sort(key=lambda e: getattr(e, key), reverse=True)
    kernel_us = sum(e.self_device_time_total for e in ranked) if cuda else None
    top = [{"name": e.key[:120], "calls": e.count, "self_ms_per_step": getattr(e, key) / 1e3 / steps}
           for e in ranked[:15]]
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps, "top": top,
            "kernel_ms_per_step": None if kernel_us is None else kernel_us / 1e3 / steps,
            "table": averages.table(sort_by=key, row_limit=15, max_name_column_width=60)}


# ----------------------------------------------------------------------------------------------
# The report


class Report:
    def __init__(self, out: Path, clock_start: float) -> None:
        self.out = out
        self.start = clock_start
        self.data: dict[str, Any] = {"train": [], "sampling": [], "loader": [], "skipped": []}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {message}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        (self.out / "gpu_mfu.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_mfu.txt").write_text(summary(self.data))


def summary(data: dict) -> str:
    env, lines = data.get("env", {}), []
    lines.append(f"{env.get('device_name')} | torch {env.get('torch')} | {env.get('precision')}"
                 f"{' channels_last' if env.get('channels_last') else ''} | peak "
                 f"{env.get('peak_tflops')} TFLOP/s | {data.get('elapsed_s', 0):.0f} s")
    if "flops" in data:
        f = data["flops"]
        lines.append(f"FLOPs/image {data['shape']}: forward {f['forward_gflop']:.2f} G, backward "
                     f"{f['backward_gflop']:.2f} G, training {f['training_gflop']:.2f} G")
    lines.append("\ntraining: batch, compile, variant -> images/s, step ms, MFU, first step s")
    for row in data["train"]:
        if "error" in row:
            lines.append(f"  {row['batch']:>4} {row['compile']!s:>15} {row['variant']:<10} "
                         f"ERROR {row['error']}")
            continue
        lines.append(f"  {row['batch']:>4} {row['compile']!s:>15} {row['variant']:<10} "
                     f"{row['images_per_s']:>8.1f} {row['step_ms']:>7.1f} ms "
                     f"{_pct(row.get('mfu'))} "
                     + (f"{row['first_step_s']:>6.1f}" if row["variant"] == "product" else ""))
    for row in data["train"]:
        if "parts_ms" in row:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row["parts_ms"].items())
            lines.append(f"\nbatch {row['batch']} {row['compile']}: step {row['step_ms']:.1f} ms; "
                         f"alone (ms): {parts}; kernels busy the device "
                         f"{_pct(row.get('device_busy_share'))} of the step")
        if "profile_table" in row:
            lines.append(row["profile_table"])
    if data["sampling"]:
        lines.append("\nsampling: sampler steps batch -> images/s, MFU")
        for row in data["sampling"]:
            lines.append(f"  {row['sampler']:>8} {row['steps']:>3} {row['batch']:>4} "
                         f"{row['images_per_s']:>9.1f} {_pct(row.get('mfu'))}")
    if "batch_invariance" in data:
        lines.append(f"bf16 batch invariance of sampling: {data['batch_invariance']}")
    if data["loader"]:
        lines.append("\nloader alone: workers -> images/s")
        for row in data["loader"]:
            lines.append(f"  {row['workers']:>3} {row['images_per_s']:>9.0f} "
                         f"({row['tile_size']} px, batch {row['batch']})")
    for row in data["skipped"]:
        lines.append(f"skipped: {row}")
    return "\n".join(lines) + "\n"


def _pct(share: float | None) -> str:
    return "   n/a" if share is None else f"{100 * share:5.1f}%"


# ----------------------------------------------------------------------------------------------
# The phases


@dataclass
class Context:
    plan: Plan
    dev: Device
    report: Report
    flops_per_image: int = 0
    first_compile_s: float = 60.0  # until measured
    best: dict[int, float] = field(default_factory=dict)  # batch -> best images/s so far
    profiled: set[int] = field(default_factory=set)  # batches whose best case was profiled

    def fits(self, seconds: float, what: str) -> bool:
        left = self.plan.budget_s - self.report.elapsed()
        if seconds <= left:
            return True
        self.report.data["skipped"].append(f"{what}: needs ~{seconds:.0f} s, {left:.0f} s left")
        self.report.save()
        self.report.log(f"skipped {what}: needs ~{seconds:.0f} s, {left:.0f} s left")
        return False


def free_memory(dev: Device) -> None:
    gc.collect()
    if dev.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev.device)
    torch._dynamo.reset()  # a fresh compile per case: no shapes marked dynamic by earlier ones


def measure(ctx: Context, stepper: Stepper, row: dict, variant: str, tf32: bool) -> dict:
    stepper.run(ctx.plan.warmup_steps)
    timing = stepper.timed(ctx.plan.seconds)
    rate = timing["images_per_s"] * ctx.flops_per_image
    peak = ctx.dev.peak(tf32)
    out = {**row, "variant": variant, **timing, "tflop_per_s": rate / 1e12, "mfu": mfu(rate, peak),
           "peak_tflops": peak}
    if ctx.dev.cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(ctx.dev.device) / 2**30
    return out


# Switched on the live trainer (no recompile), one after the other: AdamW not fused (foreach);
# TF32 for fp32 matmuls (under bf16 autocast little is left in fp32); the product's settings
# again, for the run-to-run spread.
VARIANTS = ("fused-off", "tf32", "repeat")


def apply_variant(trainer: Trainer, product_optimizer: torch.optim.Optimizer, variant: str) -> bool:
    """Set up `variant`; returns whether TF32 is on."""
    trainer.optimizer = product_optimizer
    torch.backends.cuda.matmul.allow_tf32 = variant == "tf32"
    if variant == "fused-off":
        tp = trainer.params.train
        trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=tp.lr,
                                              weight_decay=tp.weight_decay, foreach=True)
    return variant == "tf32"


def train_case(ctx: Context, batch: int, compile_mode: str | None, variants: tuple[str, ...] = (),
               profile: bool = False) -> None:
    """One (batch, compile mode): build, compile (the first step), time, then the variants.
    Profiled if asked, or if it beats the best so far at a batch already profiled."""
    plan = ctx.plan
    cost = ctx.first_compile_s * COMPILE_COST.get(compile_mode, 1.0)
    need = cost + (plan.seconds + 2) * (1 + len(variants)) + (15 if profile else 0)
    label = f"train batch {batch} compile {compile_mode or 'eager'}"
    if not ctx.fits(need, label):
        return
    row = {"batch": batch, "compile": compile_mode or "eager"}
    free_memory(ctx.dev)
    try:
        _train_case(ctx, row, label, variants, profile)
    except Exception as err:  # noqa: BLE001 (one failed case must not end the run)
        row.update(variant="product", error=_describe_error(err))
        ctx.report.data["train"].append(row)
        ctx.report.log(f"{label}: {row['error']}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        ctx.report.save()
        free_memory(ctx.dev)


def _train_case(ctx: Context, row: dict, label: str, variants: tuple[str, ...],
                profile: bool) -> None:
    plan, dev, report, batch = ctx.plan, ctx.dev, ctx.report, row["batch"]
    compile_mode = None if row["compile"] == "eager" else row["compile"]
    trainer = make_trainer(plan, dev, batch, compile_mode)
    stepper = Stepper(trainer, uint8_batch(batch, plan.shape.size, dev.cuda), dev)
    start = time.perf_counter()
    stepper.run(1)
    dev.sync()
    row["first_step_s"] = time.perf_counter() - start
    if compile_mode == "default" and batch == plan.batches[0]:
        ctx.first_compile_s = row["first_step_s"]
    main = measure(ctx, stepper, row, "product", tf32=False)
    report.data["train"].append(main)
    report.save()
    report.log(f"{label}: {main['images_per_s']:.1f} images/s, MFU {_pct(main['mfu'])}, "
               f"first step {row['first_step_s']:.1f} s")
    beats = batch in ctx.profiled and main["images_per_s"] > ctx.best.get(batch, 0.0)
    ctx.best[batch] = max(ctx.best.get(batch, 0.0), main["images_per_s"])
    if profile or beats:
        ctx.profiled.add(batch)
        main["parts_ms"] = step_parts_ms(trainer, stepper.images, dev, plan.part_repeats)
        prof = profile_steps(stepper, plan.profile_steps)
        main["profile_table"] = prof.pop("table")
        main["profile"] = prof
        if prof["kernel_ms_per_step"] is not None:
            main["device_busy_share"] = prof["kernel_ms_per_step"] / main["step_ms"]
        report.save()
    product_optimizer = trainer.optimizer
    for variant in variants:
        tf32 = apply_variant(trainer, product_optimizer, variant)
        report.data["train"].append(measure(ctx, stepper, row, variant, tf32))
        report.save()


def _describe_error(err: BaseException) -> str:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "out of memory"
    last = traceback.format_exception_only(type(err), err)[-1].strip()
    return last[:400]


def best_batch(report: Report, plan: Plan) -> int:
    """The batch of the most images/s in the sweep (the baseline batch if all failed)."""
    rows = [r for r in report.data["train"] if "error" not in r and r["variant"] == "product"
            and r["compile"] == (plan.base_compile or "eager")]
    return max(rows, key=lambda r: r["images_per_s"])["batch"] if rows else plan.batches[0]


def sampling(ctx: Context, batch: int) -> None:
    """Sampling speed and MFU at `batch`, then the bf16 batch invariance of its images."""
    plan, dev, report = ctx.plan, ctx.dev, ctx.report
    if not ctx.fits(30 + 10 * len(plan.sampler_steps), f"sampling at batch {batch}"):
        return
    free_memory(dev)
    torch.manual_seed(0)
    fmt = torch.channels_last if dev.channels_last else torch.contiguous_format
    net, diffusion = build({"model": plan.shape.unet_kwargs(), "schedule": "linear",
                            "diffusion": {"timesteps": 1000, "objective": "eps"}})
    net = net.to(dev.device, memory_format=fmt).eval()
    diffusion = diffusion.to(dev.device)
    shape = (3, plan.shape.size, plan.shape.size)
    seeds = list(range(batch))
    per_call = count_sampling_flops(net, batch, plan.shape.size)

    def draw(name: str, steps: int, chosen: list[int]) -> torch.Tensor:
        scheduler = make_scheduler(name, diffusion, steps=steps, eta=0.0, spacing="quadratic")
        return sample_images(net, scheduler, chosen, shape, dev.device, dev.amp_dtype,
                             channels_last=dev.channels_last)

    images: dict[str, torch.Tensor] = {}
    try:
        draw("ddim", 1, seeds)  # kernel selection and allocator warm-up at this batch
        for name, steps in plan.sampler_steps:
            start = time.perf_counter()
            images[name] = draw(name, steps, seeds)  # returns CPU tensors: the device is done
            seconds = time.perf_counter() - start
            rate = steps * per_call / seconds
            peak = dev.peak(tf32=torch.backends.cudnn.allow_tf32)
            row = {"sampler": name, "steps": steps, "batch": batch, "seconds": seconds,
                   "images_per_s": batch / seconds, "gflop_per_image": steps * per_call / batch / 1e9,
                   "tflop_per_s": rate / 1e12, "mfu": mfu(rate, peak), "peak_tflops": peak}
            report.data["sampling"].append(row)
            report.save()
            report.log(f"sampling {name} {steps}: {row['images_per_s']:.1f} images/s, "
                       f"MFU {_pct(row['mfu'])}")
        name, steps = plan.sampler_steps[0]
        invariance = batch_invariance(images[name], lambda chosen: draw(name, steps, chosen),
                                      seeds, f"{name} {steps} steps")
        report.data["batch_invariance"] = invariance
        report.log(f"batch invariance: {invariance}")
    except Exception as err:  # noqa: BLE001
        report.data["sampling"].append({"batch": batch, "error": _describe_error(err)})
    report.save()


def batch_invariance(full: torch.Tensor, draw: Callable[[list[int]], torch.Tensor],
                     seeds: list[int], what: str) -> dict:
    """Images 0-2 as a batch of 3 and the last image alone against the same images drawn in
    the full batch: equal to the bit, whatever the batch."""
    few, last = seeds[: min(3, len(seeds))], seeds[-1:]
    as_few, alone = draw(few), draw(last)
    diff = max((as_few.int() - full[: len(few)].int()).abs().max().item(),
               (alone.int() - full[-1:].int()).abs().max().item())
    return {"what": f"{what}, batch {len(seeds)} vs {len(few)} and 1",
            "equal": bool(torch.equal(as_few, full[: len(few)]) and torch.equal(alone, full[-1:])),
            "max_abs_diff_uint8": diff}


def loader(ctx: Context, batch: int) -> None:
    plan, report = ctx.plan, ctx.report
    need = (plan.seconds + 3) * len(plan.loader_workers) + 10
    if not ctx.fits(need, "loader"):
        return
    with tempfile.TemporaryDirectory(prefix="canopy-loader-") as tmp:
        write_png_shard(Path(tmp), plan.loader_tiles, plan.shape.size)
        for workers in plan.loader_workers:
            try:
                row = loader_images_per_s(Path(tmp), batch, workers, plan.seconds,
                                          pin_memory=ctx.dev.cuda)
            except Exception as err:  # noqa: BLE001
                row = {"workers": workers, "error": _describe_error(err)}
            report.data["loader"].append(row)
            report.save()
            report.log(f"loader, {workers} workers: {row.get('images_per_s', 0):.0f} images/s")


def environment(plan: Plan, dev: Device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(dev.device), "precision": precision_name(dev.amp_dtype),
           "channels_last": dev.channels_last, "base_compile": plan.base_compile,
           "peak_tflops": dev.peak(tf32=False), "load_average": os.getloadavg()}
    if dev.cuda:
        props = torch.cuda.get_device_properties(dev.device)
        env.update(device_name=torch.cuda.get_device_name(dev.device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), sm_count=props.multi_processor_count,
                   memory_gib=props.total_memory / 2**30)
    else:
        env.update(device_name=platform.processor() or "cpu", threads=torch.get_num_threads())
    return env


def run(plan: Plan, dev: Device, out: Path) -> dict:
    report = Report(out, time.perf_counter())
    ctx = Context(plan, dev, report)
    _set_recompile_limit(64)
    torch._dynamo.config.automatic_dynamic_shapes = False  # static shapes, as in the product
    report.data.update(env=environment(plan, dev), plan=asdict(plan), shape=asdict(plan.shape))
    with torch.device("meta"):  # shapes only: no weight initialisation to wait for
        net = Unet(**plan.shape.unet_kwargs())
    flops = count_training_flops(net, plan.batches[0], plan.shape.size)
    ctx.flops_per_image = flops.training
    report.data["flops"] = {"forward_gflop": flops.forward / 1e9,
                            "backward_gflop": flops.backward / 1e9,
                            "training_gflop": flops.training / 1e9,
                            "backward_over_forward": flops.backward_ratio}
    report.save()
    report.log(f"FLOPs per image: training {flops.training / 1e9:.2f} G "
               f"(forward {flops.forward / 1e9:.2f} G); peak {dev.peak(tf32=False)} TFLOP/s")

    base, first = plan.base_compile, plan.batches[0]
    train_case(ctx, first, base, variants=VARIANTS, profile=True)
    for batch in plan.batches[1:]:
        train_case(ctx, batch, base)
    best = best_batch(report, plan)
    if best != first:
        train_case(ctx, best, base, variants=VARIANTS, profile=True)
    for mode in plan.candidates:
        for batch in dict.fromkeys((first, best)):
            train_case(ctx, batch, mode)
    sampling(ctx, best)
    loader(ctx, best)
    for mode in plan.late_candidates:
        for batch in dict.fromkeys((best, first)):
            train_case(ctx, batch, mode)
    report.save()
    return report.data


def _set_recompile_limit(limit: int) -> None:
    """Every case compiles the network again; torch's default limit (8) would silently fall
    back to eager after a few."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, limit)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_mfu.json/.txt")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny network, eager, short timings: checks the script anywhere")
    parser.add_argument("--batches", type=int, nargs="+", help="override the batch sweep")
    parser.add_argument("--seconds", type=float, help="override the timed seconds per case")
    parser.add_argument("--budget-s", type=float, help="override the time budget")
    parser.add_argument("--no-late", action="store_true", help="skip max-autotune")
    parser.add_argument("--compile", dest="base_compile", help="override the sweep's compile "
                        "mode (default, reduce-overhead, max-autotune, eager)")
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--peak-tflops", type=float, help="override the peak table")
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    changes: dict[str, Any] = {}
    if args.batches:
        changes["batches"] = tuple(args.batches)
    if args.seconds is not None:
        changes["seconds"] = args.seconds
    if args.budget_s is not None:
        changes["budget_s"] = args.budget_s
    if args.no_late:
        changes["late_candidates"] = ()
    if args.base_compile:
        changes["base_compile"] = None if args.base_compile == "eager" else args.base_compile
    return replace(plan, **changes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = plan_from(args)
    device = pick_device(args.device, "--device")
    amp = pick_precision("auto", device, "precision")
    dev = Device(device, amp, pick_channels_last("auto", device), args.peak_tflops)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as Trainer sets it
    elif args.smoke:
        torch.set_num_threads(1)  # tiny shapes: one thread is faster and steadier
    data = run(plan, dev, args.out)
    print(summary(data))


if __name__ == "__main__":
    main()
