"""Benchmark the samplers on one checkpoint: seconds per image and SWD against val.

    python bench/bench_sample.py [--params params.yaml] [--n 64] [--tiles data/tiles]
        [--samplers ddim:50 ddpm] [--models models] [--batch 16] [--json out.json]

Loads the checkpoint in paths.models (or --models) once, then times the sampling loop of
`canopy sample` (sample/generate.py, batches of sample.batch_size or --batch, the device and
precision it picks) for each sampler on the same images (same seed, so the same starting
noise), writes each set as PNGs and scores it with `canopy evaluate` (SWD only) against the
val tiles. A sampler is NAME[:STEPS[:ETA[:SPACING]]]: `ddpm` (all diffusion.timesteps steps),
`ddim:50`, `ddim:50:1.0`, `ddim:50:0:trailing`, `dpmpp2m:20`; the spacing defaults to the params'
sample.spacing, as in `canopy sample`. A sampler may be named twice, to interleave the runs
compared (`ddim:50 ddpm ddim:50`). Prints seconds per image, each set's SWD next to the
real-vs-real floor (as many train tiles as samples against the same val tiles) and, against the first
sampler named `ddpm`, the speed and SWD ratios. Loading the checkpoint and starting the command,
the same for every sampler, are left out of the timings and printed apart; one
untimed network call at the timed batch shape runs first (kernel selection, allocator warm-up).
Each set's network calls are counted and their FLOPs too (bench/flops.py), so the images/s come
with the model FLOP/s achieved and the MFU (the peak from the table of known GPUs, or
--peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

from canopy import samples
from canopy.accelerator import (
    pick_channels_last,
    pick_device,
    pick_precision,
    precision_name,
)
from canopy.model.registry import make_scheduler
from canopy.model.scheduler import Scheduler
from canopy.params import load_params
from canopy.sample.checkpoint import load_checkpoint
from canopy.sample.generate import generate

from flops import count_sampling_flops, describe_rate, mfu, peak_tflops, precision_of


def parse_sampler(spec: str, default_spacing: str) -> tuple[str, int, float, str]:
    """'ddim:50:0.5:trailing' -> ('ddim', 50, 0.5, 'trailing'); steps default 50 (ignored by
    ddpm), eta 0, spacing `default_spacing`."""
    name, *rest = spec.split(":")
    steps = int(rest[0]) if rest else 50
    eta = float(rest[1]) if len(rest) > 1 else 0.0
    spacing = rest[2] if len(rest) > 2 else default_spacing
    return name, steps, eta, spacing


class CallFlops:
    """Sums the FLOPs of every network call while active. Each batch size is counted once, by
    `prepare` before the timed loop, so that the counting costs the timings nothing."""

    def __init__(self, net: torch.nn.Module, size: int) -> None:
        self.net, self.size = net, size
        self.per_batch: dict[int, int] = {}
        self.flops = 0

    def prepare(self, batch: int) -> None:
        if batch not in self.per_batch:
            self.per_batch[batch] = count_sampling_flops(self.net, batch, self.size)

    def _count(self, module, args) -> None:
        self.prepare(args[0].shape[0])
        self.flops += self.per_batch[args[0].shape[0]]

    def __enter__(self) -> CallFlops:
        self.flops = 0
        self._handle = self.net.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def sample_set(checkpoint, sampler: Scheduler, n: int, batch: int, seed: int, device, amp,
               channels_last: bool, out: Path) -> tuple[float, int]:
    """Seconds spent in the sampling loop for n images (the PNGs go to `out`) and the network
    FLOPs spent."""
    out.mkdir(parents=True)
    seconds, flops = 0.0, 0
    counter = CallFlops(checkpoint.net, checkpoint.image_shape[-1])
    for first in range(0, n, batch):
        indices = list(range(first, min(n, first + batch)))
        counter.prepare(len(indices))
        start = time.perf_counter()
        with counter:
            images = generate(checkpoint.diffusion.denoiser(checkpoint.net), sampler, indices, seed, checkpoint.image_shape,
                              device, amp, channels_last=channels_last)  # CPU tensors: device done
        seconds += time.perf_counter() - start
        flops += counter.flops
        for index, image in zip(indices, images.numpy()):
            samples.write_image(out, index, image)
    return seconds, flops


def swd_of(samples: Path, tiles: Path, params_path: Path, metrics: Path) -> dict:
    subprocess.run([sys.executable, "-m", "canopy.cli", "evaluate", "-q", "-p", str(params_path),
                    "--samples", str(samples), "--tiles", str(tiles), "--metrics", str(metrics)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads((metrics / "evaluate.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--samplers", nargs="+", default=["ddim:50", "ddpm"],
                        help="NAME[:STEPS[:ETA[:SPACING]]] each, e.g. ddim:50 ddim:50:0:trailing ddpm "
                             "(SPACING defaults to sample.spacing); repeat one to interleave")
    parser.add_argument("--models", type=Path, help="override paths.models")
    parser.add_argument("--batch", type=int, help="override sample.batch_size")
    parser.add_argument("--tiles", type=Path, default=REPO / "data" / "tiles")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--grids", type=Path, help="write a grid PNG of each set into this folder")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s (default: the table's for a known GPU)")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.sample
    batch = args.batch or settings.batch_size
    start = time.perf_counter()
    checkpoint = load_checkpoint(args.models or Path(params.paths.models), "ema")
    load_seconds = time.perf_counter() - start
    device = pick_device(settings.device, "sample.device")
    amp = pick_precision(settings.precision, device, "sample.precision")
    channels_last = pick_channels_last(settings.channels_last, device)
    checkpoint.net.to(device, memory_format=torch.channels_last if channels_last
                      else torch.contiguous_format)
    checkpoint.diffusion.to(device)
    peak = peak_tflops(device, precision_of(amp, torch.backends.cudnn.allow_tf32),
                       args.peak_tflops)
    header = (f"checkpoint {checkpoint.path} (step {checkpoint.config.get('step')}), {device} "
              f"{precision_name(amp)}{', channels_last' if channels_last else ''}, batch {batch}; load {load_seconds:.2f} s; "
              f"load average {os.getloadavg()[0]:.2f}")
    print(header, flush=True)

    raw = yaml.safe_load(args.params.read_text())
    raw.setdefault("evaluate", {})["fid"] = False
    rows = []

    def save_rows() -> None:
        if args.json:
            args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))

    with tempfile.TemporaryDirectory(prefix="canopy-bench-sample-") as tmp:
        eval_params = Path(tmp) / "params.yaml"
        eval_params.write_text(yaml.safe_dump(raw))
        # One untimed network call at the timed batch shape first: kernel selection, oneDNN
        # primitive creation and allocator warm-up would otherwise land on the first sampler.
        warm_up = make_scheduler("ddim", checkpoint.diffusion, steps=1, eta=0.0, spacing="trailing")
        generate(checkpoint.net, warm_up,
                 list(range(min(batch, args.n))), params.seed + 1, checkpoint.image_shape, device, amp,
                 channels_last=channels_last)
        for position, spec in enumerate(args.samplers):
            name, steps, eta, spacing = parse_sampler(spec, settings.spacing)
            sampler = make_scheduler(name, checkpoint.diffusion, steps=steps, eta=eta,
                                     spacing=spacing)
            label = name if name == "ddpm" else f"{name}:{steps}:{eta:g}:{spacing}"
            # Numbered: the same sampler may run twice (interleaved timings).
            out = Path(tmp) / f"{position:02d}-{label.replace(':', '_')}"
            seconds, flops = sample_set(checkpoint, sampler, args.n, batch, params.seed, device,
                                        amp, channels_last, out)
            metrics = swd_of(out, args.tiles, eval_params, Path(tmp) / f"{out.name}-metrics")
            if args.grids:
                args.grids.mkdir(parents=True, exist_ok=True)
                samples.write_grid(out, min(64, args.n))  # as `canopy sample` draws it
                shutil.move(out / "grid.png", args.grids / f"{out.name}.png")
            row = {"sampler": label, "steps": len(sampler.timesteps), "s_per_image": seconds / args.n,
                   "images_per_s": args.n / seconds, "gflop_per_image": flops / args.n / 1e9,
                   "tflop_per_s": flops / seconds / 1e12, "mfu": mfu(flops / seconds, peak),
                   **{k: metrics[k] for k in ("swd", "swd_floor", "n_samples", "n_real")}}
            rows.append(row)
            print(f"{label:>20} {row['steps']:>5} steps {row['s_per_image']:.4f} s/image "
                  f"({row['images_per_s']:.1f} images/s, {describe_rate(flops / seconds, peak)}) "
                  f"swd {row['swd']:.2f} (floor {row['swd_floor']:.2f}, n {row['n_samples']}, "
                  f"val {row['n_real']})", flush=True)
            save_rows()  # after every set, so a cut-off run keeps what it measured
    reference = next((r for r in rows if r["sampler"] == "ddpm"), None)
    if reference:
        for row in rows:
            row["speedup_vs_ddpm"] = reference["s_per_image"] / row["s_per_image"]
            row["swd_ratio_vs_ddpm"] = row["swd"] / reference["swd"]
            print(f"{row['sampler']:>20}: {row['speedup_vs_ddpm']:.1f}x ddpm's speed per image, "
                  f"SWD {row['swd_ratio_vs_ddpm']:.3f}x ddpm's")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    save_rows()


if __name__ == "__main__":
    main()
