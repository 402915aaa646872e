"""`canopy sample`: EMA weights in models/ -> data/samples/ (PNGs, manifest, grid; the files:
canopy/samples.py and docs/contract.md).

Under torchrun (canopy/distributed.py) rank r of W draws images r, r + W, r + 2W, ... into
the staging folder rank 0 made (and holds the lock of); rank 0 then writes the grid and the
manifest and swaps the folder into place. Image i depends only on (seed, i), not on which
batch it was drawn in, so the files are those of one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from canopy import conditions, distributed, samples
from canopy.accelerator import (
    pick_channels_last,
    pick_device,
    pick_precision,
    precision_name,
)
from canopy.errors import UserError
from canopy.fsutil import atomic_dir, check_replaceable, output_lock
from canopy.model.condition import ordered_kinds
from canopy.model.registry import make_scheduler
from canopy.model.scheduler import Scheduler
from canopy.params import CanopyParams
from canopy.sample.checkpoint import Checkpoint, load_checkpoint, load_guide
from canopy.sample.generate import generate


@dataclass
class SampleResult:
    out: Path
    n: int
    device: str
    precision: str
    steps: int


def run_sample(params: CanopyParams, out: Path, models: Path, *, progress: bool) -> SampleResult:
    settings = params.sample
    dist = distributed.from_env()
    check_replaceable(out, samples.SAMPLES_OUTPUT)  # before any work: refuse a wrong path now
    # The checkpoint has params' diffusion.timesteps, so params' own check that sample.steps
    # fits them holds for the checkpoint too.
    checkpoint = load_checkpoint(models, settings.weights, settings.ema_std,
                                 check=params_check(params))
    check_condition(checkpoint, params)
    device = pick_device(settings.device, "sample.device")
    distributed.check_devices(dist, device, "sample.device")
    device = dist.device(device)
    amp_dtype = pick_precision(settings.precision, device, "sample.precision")
    sampler = make_scheduler(settings.sampler, checkpoint.diffusion, steps=settings.steps,
                             eta=settings.eta, spacing=settings.spacing)
    channels_last = pick_channels_last(settings.channels_last, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = checkpoint.net.to(device, memory_format=layout)
    checkpoint.diffusion.to(device)
    net = checkpoint.diffusion.denoiser(net)  # the network itself under the vp process
    guide = None
    if settings.autoguidance != 1:
        guide = load_guide(models, checkpoint.config.get("step"), settings.guide_at,
                           settings.guide_ema_std)
    guide_net = (guide.diffusion.to(device).denoiser(guide.net.to(device, memory_format=layout))
                 if guide is not None else None)

    progress = progress and dist.is_main
    with distributed.process_group(dist, device, settings.dist_timeout_s):
        records = _sample_all(params, dist, out, net, sampler, checkpoint, device, amp_dtype,
                              channels_last, progress, guide, guide_net)
        distributed.barrier(dist, "the swap of the samples folder")  # rank 0 has swapped it in
    return SampleResult(out, len(records), str(device), precision_name(amp_dtype),
                        len(sampler.timesteps))


def _sample_all(params: CanopyParams, dist: distributed.Dist, out: Path, net: torch.nn.Module,
                sampler: Scheduler, checkpoint: Checkpoint, device: torch.device, amp_dtype,
                channels_last: bool, progress: bool, guide: Checkpoint | None,
                guide_net: torch.nn.Module | None) -> list[samples.ImageRecord]:
    """Draw this rank's images into the staging folder; rank 0 finishes the folder (grid,
    manifest) and swaps it into place. Returns the records of every image. `guide`: the
    autoguidance guide's checkpoint and `guide_net` its denoiser (None when off)."""
    settings = params.sample
    with distributed.main_context(dist, lambda: _locked_staging(out),
                                  "making the staging folder") as made:
        staging = Path(distributed.broadcast(dist, str(made) if made else None, "sampling"))
        mine = list(range(dist.rank, settings.n, dist.world))
        records = []
        bar = tqdm(total=len(mine), desc="images", unit="img", disable=not progress)
        for first in range(0, len(mine), settings.batch_size):
            indices = mine[first:first + settings.batch_size]
            asked, rows = _conditions(checkpoint, settings, indices)
            images = generate(net, sampler, indices, params.seed, checkpoint.image_shape, device,
                              amp_dtype, progress, channels_last, rows, settings.guidance,
                              guide_net, settings.autoguidance, settings.guide_sigmas)
            for index, image, condition in zip(indices, images.numpy(), asked):
                record = samples.write_image(staging, index, image)
                records.append(replace(record, condition=condition) if condition else record)
            bar.update(len(indices))
        bar.close()
        # Every rank's images are in the folder once every rank has sent its records.
        records = sorted((r for part in distributed.gather(dist, records, "sampling") for r in part),
                         key=lambda record: record.file)
        if dist.is_main:
            if settings.grid_images:
                samples.write_grid(staging, min(settings.grid_images, settings.n),
                                   [record.condition for record in records])
            _write_manifest(staging, params, checkpoint, sampler, device, amp_dtype,
                            channels_last, records, guide)
    return records


def _conditions(checkpoint: Checkpoint, settings, indices: list[int]
                ) -> tuple[list[dict | None], torch.Tensor | None]:
    """(each image's requested condition, the condition rows the network takes) for images
    `indices`: (Nones, None) for an unconditioned model; under guidance 0 the model's own
    unconditional mode (rows of NaN, no condition recorded)."""
    condition = checkpoint.condition
    if not condition:
        return [None] * len(indices), None
    if settings.guidance == 0:
        return [None] * len(indices), torch.full((len(indices), len(condition)), float("nan"))
    asked = conditions.requested(condition, settings.condition, indices)
    return asked, torch.from_numpy(conditions.condition_rows(condition, asked))


def check_condition(checkpoint: Checkpoint, params: CanopyParams) -> None:
    """Refuse a condition or guidance the checkpoint cannot honour, before any image."""
    settings = params.sample
    condition = checkpoint.condition
    if not condition:
        if settings.condition or settings.guidance not in (0.0, 1.0):
            raise UserError(f"{checkpoint.path} is not conditioned (model.condition was empty "
                            "when it was trained): remove sample.condition and set "
                            "sample.guidance to 1, or train with model.condition")
        return
    if settings.guidance != 0:
        conditions.requested(condition, settings.condition, [0])  # names what is wrong


@contextlib.contextmanager
def _locked_staging(out: Path) -> Iterator[Path]:
    with output_lock(out, "canopy sample"), \
            atomic_dir(out, samples.SAMPLES_OUTPUT) as staging:
        yield staging


def params_check(params: CanopyParams) -> Callable[[dict, Path], None]:
    """load_checkpoint's `check`: the export's config against params.yaml, before building."""
    return lambda config, path: check_config_matches_params(config, path, params)


def check_config_matches_params(config: dict, path: Path, params: CanopyParams) -> None:
    wanted = {"model": params.model.unet_kwargs(), "schedule": params.schedule,
              "timesteps": params.diffusion.timesteps, "objective": params.diffusion.objective,
              "process": params.diffusion.process}
    wanted["condition"] = params.model.condition
    found = {"model": {k: v for k, v in config["model"].items() if k != "condition"},
             "condition": ordered_kinds(list(config["model"].get("condition") or {})),
             "schedule": config.get("schedule"),
             "timesteps": config["diffusion"].get("timesteps"),
             "objective": config["diffusion"].get("objective"),
             "process": config["diffusion"].get("process", "vp")}
    changed = [f"{key} {found[key]!r} -> {wanted[key]!r}" for key in wanted if found[key] != wanted[key]]
    if changed:
        raise UserError(f"{path} was trained with other settings than params.yaml "
                        f"({'; '.join(changed)}): re-run `canopy train` (or `dvc repro`)")


def _write_manifest(folder: Path, params: CanopyParams, checkpoint: Checkpoint, sampler: Scheduler,
                    device: torch.device, amp_dtype, channels_last: bool,
                    records: list[samples.ImageRecord], guide: Checkpoint | None) -> None:
    settings = params.sample
    samples.write_manifest(folder, samples.SamplesManifest(
        n=settings.n,
        seed=params.seed,
        sampler=settings.sampler,
        steps=len(sampler.timesteps),
        eta=sampler.eta,
        timestep_spacing=sampler.spacing,
        weights=settings.weights,
        checkpoint=samples.CheckpointRecord(checkpoint.path.name, checkpoint.sha256,
                                            checkpoint.config.get("step")),
        tile_size=checkpoint.image_shape[1],
        device=device.type,
        precision=precision_name(amp_dtype),
        channels_last=channels_last,
        images=records,
        guidance=settings.guidance if checkpoint.condition else None,
        condition=dict(settings.condition) if checkpoint.condition else None,
        autoguidance=samples.Autoguidance(
            settings.autoguidance, settings.guide_ema_std, settings.guide_sigma_min,
            settings.guide_sigma_max,
            samples.CheckpointRecord(guide.path.name, guide.sha256, guide.config.get("step"))
        ) if guide is not None else None,
    ))
