"""Benchmark the samplers on one checkpoint: seconds per image and SWD against val.

    python bench/bench_sample.py [--params params.yaml] [--n 64] [--ddim-steps 50]

Runs `canopy sample` with ddpm (all diffusion.timesteps steps) and with ddim (--ddim-steps,
eta 0) on the checkpoint in sample.models, then `canopy evaluate` (SWD only) on each set
against the val tiles, and prints seconds per image, the speed ratio and each set's SWD next
to the real-vs-real floor (the same number of train tiles against the same val tiles). The
commands are the real ones, so the timings include loading the checkpoint (well under a second).
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

REPO = Path(__file__).resolve().parents[1]


def canopy(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "canopy.cli", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--tiles", type=Path, default=REPO / "data" / "tiles")
    args = parser.parse_args()

    params = yaml.safe_load(args.params.read_text())
    params.setdefault("evaluate", {})["fid"] = False
    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="canopy-bench-sample-") as tmp:
        bench_params = Path(tmp) / "params.yaml"
        bench_params.write_text(yaml.safe_dump(params))
        rows = []
        for sampler, steps in (("ddim", args.ddim_steps), ("ddpm", None)):
            out = Path(tmp) / sampler
            options = ["--sampler", sampler] + (["--steps", str(steps)] if steps else [])
            start = time.perf_counter()
            canopy("sample", "-q", "-p", str(bench_params), "--n", str(args.n), "--out", str(out),
                   *options)
            seconds = time.perf_counter() - start
            metrics_path = Path(tmp) / f"{sampler}.json"
            canopy("evaluate", "-q", "-p", str(bench_params), "--samples", str(out),
                   "--tiles", str(args.tiles), "--out", str(metrics_path))
            metrics = json.loads(metrics_path.read_text())
            manifest = json.loads((out / "manifest.json").read_text())
            rows.append((sampler, manifest["steps"], seconds / args.n, metrics))
    print(f"{'sampler':>8} {'steps':>6} {'s/image':>8} {'swd':>8} {'swd_floor':>9} {'n':>4} {'n_val':>5}")
    for sampler, steps, per_image, m in rows:
        print(f"{sampler:>8} {steps:>6} {per_image:>8.3f} {m['swd']:>8.3f} {m['swd_floor']:>9.3f} "
              f"{m['n_samples']:>4} {m['n_real']:>5}")
    (_, _, ddim_s, ddim_m), (_, _, ddpm_s, ddpm_m) = rows
    print(f"ddim is {ddpm_s / ddim_s:.1f}x faster than ddpm; "
          f"SWD ddim/ddpm = {ddim_m['swd'] / ddpm_m['swd']:.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
