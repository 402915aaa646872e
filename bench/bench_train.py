"""Training-step benchmark: Canopy's default step against a plain fp32 eager reference.

The reference is the Annotated Diffusion Model's way of training this same network (written out
below, independently of model/): fp32, eager, one timestep per batch, torch's default Adam, and
a per-parameter EMA loop. Both run in one process, interleaved, on the same input:

    python bench/bench_train.py                      # dim 64, dim_mults 1 2 4 8, 128 px, batch 4
    python bench/bench_train.py --rounds 5 --loss-check
    python bench/bench_train.py --loader data/tiles --batch 16 --workers 0 1 2

Each step's FLOPs are counted (bench/flops.py: forward and backward, per image), so the
images/s come with the model FLOP/s achieved, and the MFU where a peak is given
(--peak-tflops: there is no table for CPUs). --loader measures instead how many images/s the
training data loader of `canopy train` delivers alone from an etl output, per worker count.

Canopy's step is train.engine.Trainer.step with the default params (device, precision,
channels_last and compile all `auto`). --loss-check also trains a small network from the same
initial weights on the same batches in fp32 and in Canopy's precision, and compares the gap
between the two loss curves with the gap between two fp32 runs that differ only in their
noise draws (the run-to-run noise).

Benchmark on a quiet machine (torch's OpenMP threads spin when another process holds a core);
the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from canopy.params import parse_params
from canopy.train.engine import Trainer
from canopy.train.runtime import resolve_runtime

from flops import count_training_flops, describe_rate
from loader_speed import loader_images_per_s

# ----------------------------------------------------------------------------------------------
# The reference: the article's network and DDPM training step, plain fp32 eager PyTorch.


class RefTimeEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, time):
        half = self.dim // 2
        emb = math.log(10000) / (half - 1)
        emb = torch.exp(torch.arange(half, device=time.device) * -emb)
        emb = time[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class RefConvNextBlock(nn.Module):
    def __init__(self, dim, dim_out, time_emb_dim, mult=2):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.GELU(), nn.Linear(time_emb_dim, dim))
        self.ds_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            nn.GroupNorm(1, dim),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, dim_out * mult),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        h = self.ds_conv(x)
        h = h + rearrange(self.time_mlp(time_emb), "b c -> b c 1 1")
        h = self.net(h)
        return h + self.res_conv(x)


class RefUnshuffle(nn.Module):
    def forward(self, x):
        return rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)


class RefUnet(nn.Module):
    def __init__(self, dim=64, dim_mults=(1, 2, 4, 8), channels=3):
        super().__init__()
        self.init_conv = nn.Conv2d(channels, dim, 7, padding=3)
        dims = [dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        time_dim = dim * 4
        self.time_mlp = nn.Sequential(
            RefTimeEmbedding(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.downs.append(nn.ModuleList([
                RefConvNextBlock(d_in, d_in, time_dim),
                RefConvNextBlock(d_in, d_in, time_dim),
                nn.Conv2d(d_in, d_out, 3, padding=1) if last
                else nn.Sequential(RefUnshuffle(), nn.Conv2d(d_in * 4, d_out, 1)),
            ]))
        self.mid_block1 = RefConvNextBlock(dims[-1], dims[-1], time_dim)
        self.mid_block2 = RefConvNextBlock(dims[-1], dims[-1], time_dim)
        self.ups = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(reversed(in_out)):
            last = i == len(in_out) - 1
            self.ups.append(nn.ModuleList([
                RefConvNextBlock(d_out + d_in, d_out, time_dim),
                RefConvNextBlock(d_out + d_in, d_out, time_dim),
                nn.Conv2d(d_out, d_in, 3, padding=1) if last
                else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                   nn.Conv2d(d_out, d_in, 3, padding=1)),
            ]))
        self.final_block = RefConvNextBlock(dim * 2, dim, time_dim)
        self.final_conv = nn.Conv2d(dim, channels, 1)

    def forward(self, x, time):
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time)
        h = []
        for block1, block2, down in self.downs:
            x = block1(x, t)
            h.append(x)
            x = block2(x, t)
            h.append(x)
            x = down(x)
        x = self.mid_block1(x, t)
        x = self.mid_block2(x, t)
        for block1, block2, up in self.ups:
            x = torch.cat((x, h.pop()), dim=1)
            x = block1(x, t)
            x = torch.cat((x, h.pop()), dim=1)
            x = block2(x, t)
            x = up(x)
        x = torch.cat((x, r), dim=1)
        x = self.final_block(x, t)
        return self.final_conv(x)


class Reference:
    """The article's training step, plus a plain EMA update."""

    def __init__(self, dim=64, dim_mults=(1, 2, 4, 8), timesteps=1000, lr=2e-4, ema_decay=0.999):
        torch.manual_seed(0)
        self.model = RefUnet(dim, dim_mults)
        self.ema = [p.detach().clone() for p in self.model.parameters()]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        betas = torch.linspace(1e-4, 0.02, timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sqrt_ab = alphas_cumprod.sqrt()
        self.sqrt_1mab = (1.0 - alphas_cumprod).sqrt()
        self.timesteps = timesteps
        self.decay = ema_decay

    def step(self, images: torch.Tensor) -> float:
        x0 = images.float() / 127.5 - 1.0
        b = x0.shape[0]
        t = torch.randint(0, self.timesteps, (1,)).repeat(b)  # one timestep for the batch
        noise = torch.randn_like(x0)
        x_t = self.sqrt_ab[t][:, None, None, None] * x0 + self.sqrt_1mab[t][:, None, None, None] * noise
        loss = F.mse_loss(self.model(x_t, t), noise)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for e, p in zip(self.ema, self.model.parameters()):
                e.mul_(self.decay).add_(p, alpha=1 - self.decay)
        return loss.item()


# ----------------------------------------------------------------------------------------------


def canopy_trainer(raw: dict) -> Trainer:
    params = parse_params(raw, source="bench params")
    return Trainer(params, resolve_runtime(params.train))


def check_same_network(trainer: Trainer, ref: Reference, size: int) -> float:
    """Copy Canopy's weights into the reference and compare fp32 outputs: same function."""
    ref.model.load_state_dict(trainer.model.state_dict())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        a = ref.model(x, t)
        b = trainer.model.float()(x.contiguous(memory_format=torch.channels_last), t)
    return (a - b).abs().max().item()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_steps(args) -> None:
    size, batch = args.size, args.batch
    raw = {"model": {"dim": args.dim, "dim_mults": args.dim_mults},
           "etl": {"tile_size": size, "stride": size},
           "train": {"batch_size": batch, "device": "cpu"}}
    trainer = canopy_trainer(raw)
    ref = Reference(args.dim, args.dim_mults)  # the same network as Canopy's, FLOPs alike
    n_params = sum(p.numel() for p in ref.model.parameters())
    diff = check_same_network(trainer, ref, size)
    print(f"network: {n_params / 1e6:.1f} M parameters; max |canopy - reference| output "
          f"difference with the same weights (fp32): {diff:.2e}")
    print(f"canopy runtime: {trainer.runtime.describe()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    flops = count_training_flops(trainer.model, batch, size)
    print(f"FLOPs per image (counted): forward {flops.forward / 1e9:.2f} G, backward "
          f"{flops.backward / 1e9:.2f} G ({flops.backward_ratio:.3f}x the forward), "
          f"training {flops.training / 1e9:.2f} G")
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    step = 0

    def canopy_step():
        nonlocal step
        loss, _ = trainer.step(images, step)
        loss.item()
        step += 1

    def reference_step():
        ref.step(images)

    print(f"load average before: {os.getloadavg()}")
    timed(canopy_step), timed(reference_step)  # warm-up: allocator, oneDNN primitive caches
    times = {"canopy": [], "reference": []}
    for r in range(args.rounds):
        order = [("canopy", canopy_step), ("reference", reference_step)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(fn))
        print(f"  round {r + 1}: canopy {times['canopy'][-1]:.2f} s, "
              f"reference {times['reference'][-1]:.2f} s", flush=True)
    print(f"load average after: {os.getloadavg()}")
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / a for a, b in zip(times["canopy"], times["reference"])]
    for name in ("reference", "canopy"):
        images_per_s = batch / med[name]
        print(f"{name:>9}: {med[name]:.2f} s/step (median of {args.rounds}), "
              f"{images_per_s:.2f} images/s, "
              f"{describe_rate(images_per_s * flops.training, args.peak_tflops)}")
    print(f"speed-up: {med['reference'] / med['canopy']:.2f}x (ratio of medians); "
          f"per round {min(ratios):.2f}x .. {max(ratios):.2f}x")


def blob_tiles(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth green-ish blob images, a stand-in for canopy tiles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size, 3))
    for i in range(n):
        for _ in range(6):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            out[i] += blob[..., None] * rng.uniform([0.05, 0.3, 0.05], [0.3, 0.8, 0.3])
    return torch.from_numpy((np.clip(out, 0, 1) * 255).astype(np.uint8)).permute(0, 3, 1, 2)


def loss_check(args) -> None:
    """Same init, same batches: fp32 vs Canopy's precision, and fp32 vs fp32 with other noise."""
    size, batch, steps = 64, 8, args.loss_steps
    data = blob_tiles(64, size)
    base = {"model": {"dim": 16, "dim_mults": [1, 2, 4, 8]},
            "etl": {"tile_size": size, "stride": size},
            "train": {"batch_size": batch, "device": "cpu", "lr": 1e-3, "warmup_steps": 20}}

    def run(precision: str, seed: int) -> np.ndarray:
        raw = {**base, "seed": seed, "train": {**base["train"], "precision": precision}}
        trainer = canopy_trainer(raw)
        torch.manual_seed(0)
        init = canopy_trainer({**base, "train": {**base["train"], "precision": "fp32"}})
        trainer.model.load_state_dict(init.model.state_dict())
        trainer.ema.model.load_state_dict(init.model.state_dict())
        order = np.random.default_rng(0)
        losses = []
        for step in range(steps):
            idx = torch.from_numpy(order.choice(len(data), batch, replace=False))
            loss, _ = trainer.step(data[idx], step)
            losses.append(loss.item())
        return np.asarray(losses)

    window = 25
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")  # noqa: E731
    t0 = time.perf_counter()
    fp32 = run("fp32", seed=0)
    mixed = run("auto", seed=0)
    fp32_other = run("fp32", seed=1)
    print(f"loss check: {steps} steps, dim 16, 64 px, batch 8, {time.perf_counter() - t0:.0f} s; "
          f"Canopy auto precision = {resolve_runtime(parse_params(base).train).precision}")
    for name, curve in (("fp32", fp32), ("auto", mixed), ("fp32, other noise", fp32_other)):
        marks = smooth(curve)[:: max(1, (steps - window) // 6)]
        print(f"  {name:>18}: " + " ".join(f"{v:.4f}" for v in marks))
    gap = np.abs(smooth(mixed) - smooth(fp32)).mean()
    noise = np.abs(smooth(fp32_other) - smooth(fp32)).mean()
    print(f"  mean |auto - fp32| of the {window}-step moving average: {gap:.4f}; "
          f"run-to-run noise (fp32 vs fp32 with other noise draws): {noise:.4f}")
    print(f"  final {window}-step mean loss: fp32 {fp32[-window:].mean():.4f}, "
          f"auto {mixed[-window:].mean():.4f}")


def bench_loader(args) -> None:
    """The loader alone, per worker count, interleaved over rounds (reversed every other)."""
    print(f"loader: {args.loader}, batch {args.batch}, workers {args.workers}; "
          f"load average before: {os.getloadavg()}")
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for r in range(args.rounds):
        for workers in args.workers if r % 2 == 0 else args.workers[::-1]:
            row = loader_images_per_s(args.loader, args.batch, workers, args.loader_seconds)
            rates[workers].append(row["images_per_s"])
            print(f"  round {r + 1}: {workers} workers {row['images_per_s']:.0f} images/s "
                  f"({row['tile_size']} px tiles, start-up {row['startup_s']:.2f} s)", flush=True)
    print(f"load average after: {os.getloadavg()}")
    for workers, values in rates.items():
        print(f"{workers} workers: {statistics.median(values):.0f} images/s (median of "
              f"{len(values)}; {min(values):.0f} .. {max(values):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dim-mults", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--loss-check", action="store_true", help="also compare loss curves")
    parser.add_argument("--loss-steps", type=int, default=300)
    parser.add_argument("--skip-steps", action="store_true", help="only the loss check")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s at the step's precision, for the MFU")
    parser.add_argument("--loader", type=Path, metavar="DATA_DIR",
                        help="measure the data loader alone on this etl output instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loader-seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.loader:
        bench_loader(args)
        return
    if not args.skip_steps:
        bench_steps(args)
    if args.loss_check or args.skip_steps:
        loss_check(args)


if __name__ == "__main__":
    main()
