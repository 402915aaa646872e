"""Benchmark the samplers on one checkpoint: seconds per image and SWD against val.

    python bench/bench_sample.py [--params params.yaml] [--n 64] [--ddim-steps 50]

Loads the checkpoint in sample.models once, then times the sampling loop of `canopy sample`
(sample.generate, batches of sample.batch_size, the device and precision it picks) for ddpm
(all diffusion.timesteps steps) and for ddim (--ddim-steps, eta 0) on the same images, writes
each set as PNGs and scores it with `canopy evaluate` (SWD only) against the val tiles. Prints
seconds per image, the speed ratio, and each set's SWD next to the real-vs-real floor (as many
train tiles as samples against the same val tiles). Loading the checkpoint and starting the
command, the same for both samplers, are left out of the timings and printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from canopy.accelerator import pick_device, pick_precision, precision_name  # noqa: E402
from canopy.params import load_params  # noqa: E402
from sample.checkpoint import load_checkpoint  # noqa: E402
from sample.generate import Sampler, generate  # noqa: E402


def sample_set(checkpoint, sampler: Sampler, n: int, batch: int, seed: int, device, amp,
               out: Path) -> float:
    """Seconds spent in the sampling loop for n images; the PNGs go to `out`."""
    out.mkdir(parents=True)
    seconds = 0.0
    for first in range(0, n, batch):
        indices = list(range(first, min(n, first + batch)))
        start = time.perf_counter()
        images = generate(checkpoint.net, sampler, indices, seed, checkpoint.image_shape,
                          device, amp)
        seconds += time.perf_counter() - start
        for index, image in zip(indices, images.numpy()):
            Image.fromarray(image).save(out / f"{index:06d}.png")
    return seconds


def swd_of(samples: Path, tiles: Path, params_path: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "canopy.cli", "evaluate", "-q", "-p", str(params_path),
                    "--samples", str(samples), "--tiles", str(tiles), "--out", str(out)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--tiles", type=Path, default=REPO / "data" / "tiles")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.sample
    start = time.perf_counter()
    checkpoint = load_checkpoint(Path(settings.models), "ema")
    load_seconds = time.perf_counter() - start
    device = pick_device(settings.device, "sample.device")
    amp = pick_precision(settings.precision, device, "sample.precision")
    checkpoint.net.to(device)
    checkpoint.diffusion.to(device)
    print(f"checkpoint {checkpoint.path} (step {checkpoint.config.get('step')}), "
          f"{device} {precision_name(amp)}, batch {settings.batch_size}; load {load_seconds:.2f} s; "
          f"load average {os.getloadavg()[0]:.2f}")

    raw = yaml.safe_load(args.params.read_text())
    raw.setdefault("evaluate", {})["fid"] = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="canopy-bench-sample-") as tmp:
        eval_params = Path(tmp) / "params.yaml"
        eval_params.write_text(yaml.safe_dump(raw))
        for name, steps in (("ddim", args.ddim_steps), ("ddpm", None)):
            sampler = Sampler(checkpoint.diffusion, name, steps or 1, 0.0)
            out = Path(tmp) / name
            seconds = sample_set(checkpoint, sampler, args.n, settings.batch_size, params.seed,
                                 device, amp, out)
            metrics = swd_of(out, args.tiles, eval_params, Path(tmp) / f"{name}.json")
            rows.append((name, len(sampler.steps), seconds / args.n, metrics))
    print(f"{'sampler':>8} {'steps':>6} {'s/image':>8} {'swd':>8} {'swd_floor':>9} {'n':>4} {'n_val':>5}")
    for name, steps, per_image, m in rows:
        print(f"{name:>8} {steps:>6} {per_image:>8.3f} {m['swd']:>8.2f} {m['swd_floor']:>9.2f} "
              f"{m['n_samples']:>4} {m['n_real']:>5}")
    (_, _, ddim_s, ddim_m), (_, _, ddpm_s, ddpm_m) = rows
    print(f"ddim is {ddpm_s / ddim_s:.1f}x faster than ddpm per image; "
          f"SWD ddim / ddpm = {ddim_m['swd'] / ddpm_m['swd']:.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
