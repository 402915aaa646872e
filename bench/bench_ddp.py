"""Data-parallel training (torchrun, DDP) against one process, on the demo network.

    python bench/bench_ddp.py                       # CPU: 1 process vs 2 ranks, 40 steps each
    python bench/bench_ddp.py --steps 60 --rounds 3 --ranks 1 2

Part 1 runs the product, `canopy train`, on synthetic demo tiles (params.yaml's demo: dim 16,
dim_mults [1, 2, 4], 64 px, batch 16) in fp32 without previews, as one plain process and under
`torchrun --standalone --nproc-per-node N` for each N of --ranks, interleaved over --rounds.
The images/s are the product's own (models/live, global batch per second), averaged over the
log rows after the first (start-up and the first steps excluded). torchrun gives each rank
one OpenMP thread (OMP_NUM_THREADS=1) when it starts several; one process keeps torch's
default threads, and `1 process, 1 thread` is measured too, to tell the threads from the ranks.

Part 2 times Trainer.step alone in this process, with and without the DistributedDataParallel
wrapper in a process group of one rank (gloo on CPU, NCCL on CUDA): the wrapper's own cost
(gradient bucketing, an all-reduce with nobody). On CUDA both parts use the GPU(s) present.

The load average is printed with the figures: on a shared machine read ratios, not seconds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def demo_params(root: Path, steps: int, device: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["etl"]["synthetic"] = {"scenes": 1, "width": 512, "height": 512}
    params["paths"] = {"tiles": str(root / "tiles"), "models": str(root / "models"),
                       "samples": str(root / "samples"), "metrics": str(root / "metrics")}
    params["train"].update(steps=steps, precision="fp32", preview_images=0, log_every=10,
                           checkpoint_every=10 * steps, device=device)
    return params


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return {**env, **extra}


def train_images_per_s(params_file: Path, models: Path, ranks: int, threads: int | None) -> float:
    """One fresh `canopy train` run; its mean images/s over the log rows after the first."""
    cmd = ["canopy", "train", "-p", str(params_file), "-q", "--fresh"]
    if ranks:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", "--no-python", *cmd]
    env = clean_env(**({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    with open(models / "live" / "plots" / "metrics" / "images_per_s.tsv") as f:
        rows = [float(row["images_per_s"]) for row in csv.DictReader(f, delimiter="\t")]
    return statistics.mean(rows[1:] if len(rows) > 1 else rows)


def part1(args: argparse.Namespace, root: Path, device: str) -> None:
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(demo_params(root, args.steps, device)))
    subprocess.run(["canopy", "etl", "-p", str(params_file), "-q"], env=clean_env(), check=True,
                   capture_output=True)
    runs = {"1 process": (0, None)}
    if device == "cpu":
        runs["1 process, 1 thread"] = (0, 1)
    usable = torch.cuda.device_count() if device == "cuda" else len(os.sched_getaffinity(0))
    for n in (n for n in args.ranks if n <= usable):  # more ranks than GPUs are refused
        runs[f"torchrun, {n} rank(s)"] = (n, None)
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved: the machine's load hits every variant alike
        for name, (ranks, threads) in runs.items():
            figures[name].append(train_images_per_s(params_file, root / "models", ranks, threads))
    base = statistics.median(figures["1 process"])
    print(f"\n`canopy train`, demo network fp32, {args.steps} steps, batch 16 ({device}):")
    print("| run | images/s (median of rounds) | rounds | vs 1 process |")
    print("|---|---|---|---|")
    for name, values in figures.items():
        med = statistics.median(values)
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {med:.1f} | {shown} | {med / base:.2f}x |")


def part2(args: argparse.Namespace, device: str) -> None:
    import torch.distributed as td
    from torch.nn.parallel import DistributedDataParallel

    from canopy.model.process import process_config
    from canopy.params import parse_params
    from canopy.train.engine import Trainer
    from canopy.train.runtime import resolve_runtime

    raw = demo_params(Path(tempfile.gettempdir()), args.steps, device)
    params = parse_params(raw, source="bench params")
    runtime = resolve_runtime(params.train)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    td.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        # the demo standardises its data: unit stats stand in for the tiles' (a timing only)
        process = process_config(params.diffusion.config(), params.schedule,
                                 {"mean": [0.0] * 3, "std": [1.0] * 3})
        plain = Trainer(params, runtime, process_config=process)
        wrapped = Trainer(params, runtime, process_config=process)
        ids = [0] if device == "cuda" else None
        wrapped.forward = DistributedDataParallel(wrapped.model, device_ids=ids)
        images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8)
        times: dict[str, list[float]] = {"plain": [], "DDP, 1 rank": []}
        for rnd in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, trainer in (("plain", plain), ("DDP, 1 rank", wrapped)):
                times[name].append(_time_steps(trainer, images, args.steps, warm=rnd == 0))
    finally:
        td.destroy_process_group()
    base = statistics.median(times["plain"][1:])
    print(f"\nTrainer.step alone, demo network fp32, batch 16 ({device}):")
    print("| step | images/s (median) | vs plain |")
    print("|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values[1:])
        print(f"| {name} | {16 / med:.1f} | {base / med:.3f}x |")


def _time_steps(trainer, images: torch.Tensor, steps: int, warm: bool) -> float:
    """Seconds per step over `steps` steps (past the lr and EMA warm-ups)."""
    first = 1000
    for s in range(first, first + (3 if warm else 0)):
        trainer.step(images, s)
    _sync(trainer.runtime.device)
    start = time.perf_counter()
    for s in range(first, first + steps):
        loss, _ = trainer.step(images, s)
    float(loss)
    _sync(trainer.runtime.device)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--skip-train", action="store_true", help="part 2 only")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = "AVX-512 BF16" if torch.cpu._is_avx512_bf16_supported() else "no AVX-512 BF16"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs ({cpu}), device {device}; "
          f"load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        if not args.skip_train:
            part1(args, Path(tmp), device)
        part2(copy.copy(args), device)
    print(f"\nload average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
