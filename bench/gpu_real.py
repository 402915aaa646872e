"""Real imagery at GPU scale, in one go: train on real tiles at two sizes, sample, score, and
measure the card's utilisation, within one command's time on a lent GPU.

    python bench/gpu_real.py --tiles TILES --out OUT              # H100/H200: about 9 minutes
    python bench/gpu_real.py --tiles TILES --out OUT --smoke      # tiny, any device: seconds

TILES is a tiles folder that `canopy etl` wrote (e.g. ../shared/data/NEON at 128 px, README
"Real imagery"). Its tiles train the large-tile run; their four quarters, written as a second
tiles folder with the same train/val split (`quarter_tiles`), train the small-tile run. One
tiles folder travels to the GPU machine instead of two: its transfer limit (64 MiB) holds
NEON's 128 px tiles but not both sizes. The results: docs/benchmarks.md, "Real imagery on a
GPU".

For each run, in order (OUT/gpu_real.json is rewritten after every phase, so a run cut short
keeps what it measured):
  1. train with the product's step and loader (train/engine.py Trainer.step, train/data.py),
     bf16, channels_last and torch.compile as `canopy train` picks them on CUDA, for a fixed
     wall-clock budget; images/s, MFU (bench/flops.py), the share of time spent waiting for
     tiles, and the loss curve;
  2. the EMA at several decays kept side by side; each sampled (as `canopy sample` draws image
     i) and scored by SWD against the val tiles (evaluate/swd.py); the best one is kept; then
     that EMA autoguided (sample.autoguidance) by its own copy from a quarter of the way
     through the budget at the noise levels up to 2, scored the same way, and kept instead
     where its SWD is lower;
  3. N samples of the best EMA written as `canopy sample` names them, packed into tar files of
     at most 15 MB (OUT/samples-SIZE-K.tar) for `canopy evaluate` on another machine;
  4. sampling speed at batch 256 with the default sampler.
Then bench/gpu_mfu.py's measurement of the reference network (128 px) with what time is left.

Runs from a plain checkout with torch, numpy, Pillow, einops, typer, tqdm and safetensors: no
pydantic, dvc, dvclive or rasterio (the GPU image has none of them). The recipe mirrors
params.yaml's (EDM's process on standardised data, transpose-only augmentation, DPM-Solver++
at Karras spacing), checked by tests/bench/test_gpu_real.py.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import shutil
import sys
import tarfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when run by runpy
import gpu_mfu  # noqa: E402  (also puts this checkout's packages on the path)
from gpu_mfu import Device  # noqa: E402  (the device, its precision and peak, as gpu_mfu has them)

from canopy import samples as samples_io
from canopy import tiles
from canopy.accelerator import pick_channels_last, pick_device, pick_precision
from canopy.etl.png import encode_png
from canopy.evaluate import swd as swd_mod
from canopy.model.process import process_config
from canopy.model.registry import make_scheduler
from canopy.sample.generate import generate
from canopy.seeding import Stream, numpy_rng
from canopy.train.data import BatchStream, build_index, make_loader, train_shards
from canopy.train.ema import EMA
from canopy.train.engine import Trainer
from canopy.train.mixture import with_skip_mixture
from canopy.train.runtime import Runtime

from flops import count_sampling_flops, count_training_flops, mfu

TAR_LIMIT = 15 * 2**20  # each file back from the GPU machine is at most 16 MB


# ----------------------------------------------------------------------------------------------
# The tiles


def quarter_tiles(src: Path, dst: Path, shard_size: int = 1000) -> Path:
    """Write each tile of the tiles folder `src` as its four quarters (half the side) into a
    new tiles folder `dst`, in the parent's split, keyed `<parent>-q<i>` (i = 0..3 row-major).
    The same grid as tiling the scenes at half the size, except along scene edges that the
    larger grid left out. Idempotent: an existing `dst` with a manifest is kept."""
    if (dst / tiles.MANIFEST_FILE).is_file():
        return dst
    manifest = tiles.read_manifest(src, point_at="--tiles")
    size = manifest["tile_size"]
    half = size // 2
    shards: list[tiles.ShardInfo] = []
    stats = tiles.ChannelStats()  # of the train quarters: the same pixels as the parents'
    with ThreadPoolExecutor(max_workers=8) as pool:  # Pillow's encoder releases the GIL
        for split in tiles.SPLITS:
            writer = tiles.ShardWriter(dst, split, shard_size)
            locations = tiles.list_tiles(src, split, size)
            parents = tiles.read_tiles(locations, size)
            for location, tile in zip(locations, parents):
                quarters = [tile[r * half:(r + 1) * half, c * half:(c + 1) * half]
                            for r in range(2) for c in range(2)]
                for quarter in quarters if split == "train" else []:
                    stats.add(quarter)  # the quarters' power spectrum, at their size
                for i, png in enumerate(pool.map(encode_png, quarters)):
                    writer.add(f"{location.key}-q{i}", png, {"parent": location.key, "quarter": i})
            shards.extend(writer.close())
    tiles.write_manifest(dst, tile_size=half, stride=half, shards=shards,
                         synthetic=bool(manifest.get("synthetic")), filters={},
                         sources=[{"quarters_of": str(src),
                                   "params_hash": manifest.get("params_hash")}],
                         params_hash=f"quarters:{manifest.get('params_hash')}",
                         train_stats=stats.to_json())
    return dst


def read_split(root: Path, split: str) -> np.ndarray:
    size = tiles.read_manifest(root, point_at="--tiles")["tile_size"]
    locations = tiles.list_tiles(root, split, size)
    return np.stack(list(tiles.read_tiles(locations, size)))


# ----------------------------------------------------------------------------------------------
# The recipe


@dataclass(frozen=True)
class Recipe:
    name: str
    tiles: str  # "quarters" (the small-tile run) or "full"
    dim: int
    dim_mults: tuple[int, ...]
    batch: int
    lr: float
    warmup_steps: int
    ema_decays: tuple[float, ...]  # the first is the product's `train.ema_decay`
    train_s: float  # wall-clock budget of the training, compile included
    samples: int  # the samples written for `canopy evaluate`
    select_samples: int  # the samples per EMA scored to pick one
    workers: int
    compile: bool
    max_files: int  # tar files of samples to bring back (the device returns at most 8 files)
    steady_after: int = 20  # steps before timing: compiling and cuDNN's kernel choice
    min_steps: int = 25


# params.yaml's diffusion section (EDM's continuous process on standardised data, v target at
# EDM's lognormal noise levels, the spectral skip with the tiles' mean colours, sampling from
# sigma_max auto, the network bounded at 80, the skip a mixture of the tiles' kinds that the
# network reads) and its sampler; tests/bench checks both against params.yaml.
PRODUCT_DIFFUSION = {"timesteps": 1000, "objective": "v", "loss": "l2", "min_snr_gamma": None,
                     "timestep_sampling": "lognormal", "lognormal_mean": -0.25,
                     "lognormal_std": 1.3, "process": "edm", "standardize": True,
                     "preconditioning": "spectral", "mean_prior": "tiles", "sigma_max": "auto",
                     "network_sigma_max": 80, "skip_components": 64, "skip_input": True}
PRODUCT_AUGMENT = "transpose"
PRODUCT_TIME_MODULATION = "scale_shift"  # params.yaml's model.time_modulation


def recipe_params(recipe: Recipe) -> SimpleNamespace:
    """What Trainer reads of the params: params.yaml's diffusion and augmentation, the schema's
    other defaults, and the recipe's network, batch, lr and EMA. tests/bench checks it against
    the schema and params.yaml."""
    kwargs = {"dim": recipe.dim, "init_dim": None, "dim_mults": list(recipe.dim_mults),
              "channels": 3, "convnext_mult": 2, "norm": "group", "norm_groups": 1,
              "time_modulation": PRODUCT_TIME_MODULATION}
    return SimpleNamespace(
        seed=0,
        schedule="linear",
        model=SimpleNamespace(unet_kwargs=lambda: dict(kwargs)),
        diffusion=SimpleNamespace(**PRODUCT_DIFFUSION),
        train=SimpleNamespace(lr=recipe.lr, warmup_steps=recipe.warmup_steps, weight_decay=0.0,
                              grad_clip=1.0, ema_decay=recipe.ema_decays[0],
                              ema_warmup_steps=recipe.warmup_steps, ema_every=1,
                              batch_size=recipe.batch, augment=PRODUCT_AUGMENT, phema_stds=[],
                              lr_decay="none", lr_decay_fraction=0.2, adam_beta2=0.999,
                              steps=0),
    )


# The default sampler of params.yaml: 20 DPM-Solver++ (2M) steps at EDM's (Karras) noise levels.
SAMPLER = {"name": "dpmpp2m", "steps": 20, "eta": 0.0, "spacing": "karras"}
# Autoguidance as scored here, README's advice for real imagery: the guide is the EMA's copy
# at a quarter of the training budget (sample.guide_at 0.25), w = 2, at the noise levels up
# to 2 (sample.guide_sigma_max): on NEON at the demo's budget it lowered both SWD and FID on
# three seeds, against the levels up to 1 as well as against no guidance (docs/benchmarks.md).
AUTOGUIDANCE = {"weight": 2.0, "guide_at": 0.25, "sigma_max": 2.0}

# On an H200 (2026-12-04) torch.compile's first step took about 90 s at either size, and a run
# of 2,000-10,000 steps keeps the EMA's warm-up ramp, min(decay, (1 + n) / (10 + n)), below
# about 0.996: decays above that are all the same average, so the ones compared sit below it.
GPU_RECIPES = (
    Recipe("neon-64", "quarters", dim=32, dim_mults=(1, 2, 4, 8), batch=256, lr=1e-3,
           warmup_steps=300, ema_decays=(0.999, 0.995, 0.99), train_s=240.0, samples=1000,
           select_samples=512, workers=12, compile=True, max_files=1),
    Recipe("neon-128", "full", dim=32, dim_mults=(1, 2, 4, 8), batch=128, lr=1e-3,
           warmup_steps=200, ema_decays=(0.999, 0.995, 0.99), train_s=200.0, samples=768,
           select_samples=256, workers=12, compile=True, max_files=3),
)
SMOKE_RECIPES = (
    Recipe("smoke-small", "quarters", dim=8, dim_mults=(1, 2), batch=4, lr=1e-3, warmup_steps=2,
           ema_decays=(0.9, 0.5), train_s=1.0, samples=6, select_samples=4, workers=0,
           compile=False, max_files=1, steady_after=2, min_steps=4),
    Recipe("smoke-full", "full", dim=8, dim_mults=(1, 2), batch=4, lr=1e-3, warmup_steps=2,
           ema_decays=(0.9,), train_s=1.0, samples=4, select_samples=4, workers=0,
           compile=False, max_files=1, steady_after=2, min_steps=4),
)


# ----------------------------------------------------------------------------------------------
# Training


def loader_workers(wanted: int, log) -> int:
    """The DataLoader's workers hand batches over through /dev/shm: where it is small (as in
    some containers) they die with a bus error, so take fewer rather than lose the run."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        free = 0
    if wanted and free < 2 * 2**30:
        log(f"/dev/shm has {free / 2**20:.0f} MiB free: loading tiles in the main process")
        return 0
    return wanted


def train(recipe: Recipe, tiles_dir: Path, dev: Device, log
          ) -> tuple[Trainer, dict[float, torch.nn.Module], dict[float, torch.nn.Module], dict]:
    """Trainer.step on the product's loader until the recipe's budget is spent. Returns the
    trainer, the EMA networks by decay, their copies at AUTOGUIDANCE's share of the budget
    (autoguidance's guides), and the figures."""
    start = time.perf_counter()
    params = recipe_params(recipe)
    runtime = Runtime(device=dev.device, amp_dtype=dev.amp_dtype, grad_scaler=False,
                      channels_last=dev.channels_last, compile=recipe.compile,
                      num_workers=recipe.workers, pin_memory=dev.cuda)
    manifest = tiles.read_manifest(tiles_dir, point_at="--tiles")
    index = build_index(train_shards(tiles_dir), tiles_dir)
    # the skip's mixture fitted as canopy train fits it
    stats = with_skip_mixture(tiles.train_stats(manifest, tiles_dir), index,
                              PRODUCT_DIFFUSION["skip_components"], params.seed, log)
    process = process_config(PRODUCT_DIFFUSION, params.schedule, stats)
    trainer = Trainer(params, runtime, process_config=process)
    extra = {d: EMA(trainer.model, d, recipe.warmup_steps, 1) for d in recipe.ema_decays[1:]}
    stream = BatchStream(index, recipe.batch, params.seed, augment=PRODUCT_AUGMENT)
    workers = loader_workers(recipe.workers, log)
    loader = iter(make_loader(stream, workers, dev.cuda))

    deadline = start + recipe.train_s
    guide_time = start + AUTOGUIDANCE["guide_at"] * recipe.train_s
    guides: dict[float, torch.nn.Module] = {}
    guide_step = None
    step, waited, curve, losses = 0, 0.0, [], []
    stats_note = "compiled" if recipe.compile else "eager"
    first_step_s = steady_from = None
    steady_step = 0
    while True:
        fetch = time.perf_counter()
        item = next(loader)
        waited += time.perf_counter() - fetch if steady_from is not None else 0.0
        if "error" in item:
            raise RuntimeError(item["error"])
        try:
            loss, _ = trainer.step(item["images"], step)
        except Exception as err:  # noqa: BLE001
            if step or not recipe.compile or isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            # A compiler failure must not cost the run: the same step, eager.
            log(f"{recipe.name}: torch.compile failed ({gpu_mfu._describe_error(err)}); eager")
            trainer.forward = trainer.model
            stats_note = "compile failed: eager"
            trainer.optimizer.zero_grad(set_to_none=True)
            loss, _ = trainer.step(item["images"], step)
        for ema in extra.values():
            ema.update(trainer.model, step + 1)
        losses.append(loss)
        step += 1
        if guide_step is None and time.perf_counter() >= guide_time:
            guides = {d: copy.deepcopy(m) for d, m in _emas(trainer, extra, recipe).items()}
            guide_step = step
        if step == 1:
            dev.sync()
            first_step_s = time.perf_counter() - start
        if step == recipe.steady_after:  # compile and cuDNN's kernel choice are behind us
            dev.sync()
            steady_from, steady_step = time.perf_counter(), step
        if step % 100 == 0:
            curve.append([step, float(torch.stack(losses).float().mean())])
            losses.clear()
            if time.perf_counter() >= deadline:
                break
        elif time.perf_counter() >= deadline and step >= recipe.min_steps:
            break
    if losses:
        curve.append([step, float(torch.stack(losses).float().mean())])
    dev.sync()
    end = time.perf_counter()
    steady_s = end - (steady_from or start)
    images_per_s = (step - steady_step) * recipe.batch / steady_s if steady_s > 0 else float("nan")
    with torch.device("meta"):
        shape_net = type(trainer.model)(**params.model.unet_kwargs())
    flops = count_training_flops(shape_net, recipe.batch, index.tile_size)
    peak = dev.peak(tf32=False)
    stats = {
        "steps": step, "images_seen": step * recipe.batch, "train_tiles": len(index),
        "epochs": step * recipe.batch / len(index), "seconds": end - start,
        "first_step_s": first_step_s, "images_per_s": images_per_s,
        "training_gflop_per_image": flops.training / 1e9,
        "tflop_per_s": images_per_s * flops.training / 1e12,
        "mfu": mfu(images_per_s * flops.training, peak),
        "data_wait_share": waited / steady_s if steady_s > 0 else None,
        "loss_curve": curve, "mode": stats_note, "guide_step": guide_step,
    }
    log(f"{recipe.name}: {step} steps of {recipe.batch} ({stats['epochs']:.0f} epochs of "
        f"{len(index)} tiles) in {stats['seconds']:.0f} s; {images_per_s:.0f} images/s, MFU "
        f"{gpu_mfu._pct(stats['mfu'])}, first step {first_step_s:.1f} s, waiting for tiles "
        f"{gpu_mfu._pct(stats['data_wait_share'])}")
    return trainer, _emas(trainer, extra, recipe), guides, stats


def _emas(trainer: Trainer, extra: dict[float, EMA], recipe: Recipe) -> dict[float, torch.nn.Module]:
    return {recipe.ema_decays[0]: trainer.ema.model, **{d: e.model for d, e in extra.items()}}


# ----------------------------------------------------------------------------------------------
# Sampling and scoring


def draw(net: torch.nn.Module, trainer: Trainer, n: int, size: int, dev: Device,
         batch: int = 256, guide: torch.nn.Module | None = None) -> np.ndarray:
    """Images 0..n-1 as `canopy sample` draws them with seed 0: (n, H, W, 3) uint8; with
    `guide`, autoguided as AUTOGUIDANCE says."""
    scheduler = make_scheduler(SAMPLER["name"], trainer.diffusion, steps=SAMPLER["steps"],
                               eta=SAMPLER["eta"], spacing=SAMPLER["spacing"])
    layout = torch.channels_last if dev.channels_last else torch.contiguous_format
    # The samplers take the denoiser D(x; sigma): under EDM's process the network wrapped in
    # its preconditioning (the network alone is the residual F, not an image estimate).
    net = trainer.diffusion.denoiser(net.to(dev.device, memory_format=layout).eval())
    if guide is not None:
        guide = trainer.diffusion.denoiser(guide.to(dev.device, memory_format=layout).eval())
    out = [generate(net, scheduler, list(range(i, min(i + batch, n))), 0, (3, size, size),
                    dev.device, dev.amp_dtype, channels_last=dev.channels_last, guide=guide,
                    autoguidance=AUTOGUIDANCE["weight"],
                    guide_sigmas=(0.0, AUTOGUIDANCE["sigma_max"])).numpy()
           for i in range(0, n, batch)]
    return np.concatenate(out)


def swd_score(fake: np.ndarray, val: np.ndarray) -> float:
    [per_level] = swd_mod.swd([fake], val, swd_mod.SwdConfig(), seed=0).per_level
    return swd_mod.mean_over_levels(per_level)


def train_subset(train_tiles: np.ndarray, n: int) -> np.ndarray:
    rng = numpy_rng(0, Stream.EVAL_FLOOR_SUBSET)
    return train_tiles[np.sort(rng.permutation(len(train_tiles))[:n])]


def sampling_speed(net: torch.nn.Module, trainer: Trainer, size: int, dev: Device,
                   batch: int) -> dict:
    draw(net, trainer, batch, size, dev, batch)  # warm-up: kernels and allocator at this batch
    dev.sync()
    start = time.perf_counter()
    draw(net, trainer, batch, size, dev, batch)
    seconds = time.perf_counter() - start
    with torch.device("meta"):
        shape_net = type(net)(**trainer.params.model.unet_kwargs())
    per_call = count_sampling_flops(shape_net, batch, size)
    rate = SAMPLER["steps"] * per_call / seconds
    peak = dev.peak(tf32=False)
    return {"sampler": f"{SAMPLER['name']} {SAMPLER['steps']}", "batch": batch,
            "seconds": seconds, "images_per_s": batch / seconds, "mfu": mfu(rate, peak)}


def pack_samples(images: np.ndarray, out: Path, name: str, max_files: int) -> tuple[list[str], int]:
    """The images as `canopy sample` names them (000000.png ...), in at most `max_files` tar
    files of at most TAR_LIMIT bytes: OUT/samples-<name>-<k>.tar. Returns the files and how
    many images they hold (the first ones, should the files fill up)."""
    written, k, tar, size, packed = [], 0, None, 0, 0
    for index, image in enumerate(images):
        data = samples_io.encode_image(image)
        if tar is None or size + len(data) + 2048 > TAR_LIMIT:
            if tar is not None:
                tar.close()
                tar = None
            if k == max_files:
                break
            path = out / f"samples-{name}-{k}.tar"
            tar, size, k = tarfile.open(path, "w"), 0, k + 1
            written.append(path.name)
        info = tarfile.TarInfo(samples_io.image_name(index))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        size += len(data) + 1024  # the header and the padding to 512-byte blocks
        packed += 1
    if tar is not None:
        tar.close()
    return written, packed


def run_recipe(recipe: Recipe, tiles_dir: Path, dev: Device, out: Path, report: dict,
               save, log) -> None:
    row: dict[str, Any] = {"recipe": asdict(recipe), "sampler": SAMPLER}
    report["runs"].append(row)
    trainer, emas, guides, row["train"] = train(recipe, tiles_dir, dev, log)
    save()
    size = tiles.read_manifest(tiles_dir, point_at="--tiles")["tile_size"]
    val = read_split(tiles_dir, "val")
    floor_set = train_subset(read_split(tiles_dir, "train"), recipe.select_samples)
    row["select"] = {"n": recipe.select_samples, "n_val": len(val),
                     "swd_floor_train_vs_val": swd_score(floor_set, val), "swd_by_ema_decay": {}}
    for decay, net in emas.items():
        fake = draw(net, trainer, recipe.select_samples, size, dev)
        row["select"]["swd_by_ema_decay"][str(decay)] = swd_score(fake, val)
        save()
    scores = row["select"]["swd_by_ema_decay"]
    best = float(min(scores, key=scores.get))
    row["select"]["best_ema_decay"] = best
    log(f"{recipe.name}: SWD by EMA decay {json.dumps(scores)} (train-vs-val floor "
        f"{row['select']['swd_floor_train_vs_val']:.1f}); keeping {best}")
    guide = guides.get(best)
    if guide is not None:
        fake = draw(emas[best], trainer, recipe.select_samples, size, dev, guide=guide)
        row["select"]["autoguidance"] = {**AUTOGUIDANCE, "guide_step": row["train"]["guide_step"],
                                         "swd": swd_score(fake, val)}
        guided = row["select"]["autoguidance"]["swd"] < scores[str(best)]
        row["select"]["autoguidance"]["kept"] = guided
        guide = guide if guided else None
        log(f"{recipe.name}: autoguided by step {row['train']['guide_step']}: SWD "
            f"{row['select']['autoguidance']['swd']:.1f} against {scores[str(best)]:.1f}; "
            f"{'kept' if guided else 'not kept'}")
        save()
    start = time.perf_counter()
    images = draw(emas[best], trainer, recipe.samples, size, dev, guide=guide)
    seconds = time.perf_counter() - start
    files, packed = pack_samples(images, out, recipe.name, recipe.max_files)
    row["final"] = {"n": len(images), "seconds": seconds, "files": files, "packed": packed}
    save()
    row["sampling_speed"] = sampling_speed(emas[best], trainer, size, dev,
                                           256 if dev.cuda else 4)
    log(f"{recipe.name}: {packed} of {len(images)} samples packed; sampling "
        f"{row['sampling_speed']['images_per_s']:.0f} images/s at batch "
        f"{row['sampling_speed']['batch']}")
    save()


# ----------------------------------------------------------------------------------------------
# The run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=Path, required=True, help="a tiles folder of `canopy etl`")
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--work", type=Path, help="scratch folder (default: OUT/../gpu_real_work)")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, seconds: any device")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="wall-clock seconds for everything; the MFU part gets what is left")
    parser.add_argument("--skip-mfu", action="store_true")
    args = parser.parse_args(argv)

    clock = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out.parent / "gpu_real_work"
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device("auto", "--device")
    dev = Device(device, pick_precision("auto", device, "precision"),
                 pick_channels_last("auto", device), peak_override=None)
    if dev.cuda:
        torch.backends.cudnn.benchmark = True
    gpu_mfu._set_recompile_limit(64)
    report: dict[str, Any] = {"runs": [], "env": gpu_mfu.environment(gpu_mfu.GPU_PLAN, dev)}

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - clock
        (args.out / "gpu_real.json").write_text(json.dumps(report, indent=2, default=str))

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - clock:5.0f} s] {message}"
        print(line, flush=True)
        with open(args.out / "gpu_real.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    quarters = quarter_tiles(args.tiles, work / "quarters")
    log(f"tiles: {args.tiles} and its quarters {quarters}")
    for recipe in SMOKE_RECIPES if args.smoke else GPU_RECIPES:
        tiles_dir = quarters if recipe.tiles == "quarters" else args.tiles
        try:
            run_recipe(recipe, tiles_dir, dev, args.out, report, save, log)
        except Exception as err:  # noqa: BLE001 (one failed run must not lose the others)
            report["runs"].append({"recipe": recipe.name, "error": traceback.format_exc()[-2000:]})
            log(f"{recipe.name} failed: {err!r}")
        finally:
            save()
            gpu_mfu.free_memory(dev)

    left = args.budget_s - (time.perf_counter() - clock)
    if args.skip_mfu or left < 30:
        report["mfu_skipped"] = f"{left:.0f} s left"
        save()
        return
    mfu_args = ["--out", str(args.out / "mfu"), "--budget-s", f"{left - 5:.0f}", "--no-late"]
    mfu_args += ["--smoke"] if args.smoke else ["--batches", "16", "128", "--seconds", "2"]
    log(f"gpu_mfu.py {' '.join(mfu_args)}")
    try:
        plan = gpu_mfu.plan_from(gpu_mfu.parse_args(mfu_args))
        if not args.smoke:  # the training figures first; sampling and loader are measured above
            plan = replace(plan, candidates=("reduce-overhead",), loader_workers=(),
                           sampler_steps=(("dpmpp2m", 20),))
        gpu_mfu.run(plan, dev, args.out / "mfu")
    except Exception:  # noqa: BLE001
        report["mfu_error"] = traceback.format_exc()[-2000:]
    save()
    log("done")


if __name__ == "__main__":
    main()
