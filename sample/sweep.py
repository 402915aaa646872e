"""`canopy ema sweep`: which post-hoc EMA std samples best? Each std is rebuilt from the
snapshots in models/phema/ (canopy/phema.py), sampled with the sample section's settings
(image i from (seed, i), as `canopy sample` draws it), and scored with evaluate's SWD against
the val tiles, beside the export's own EMA and the real-vs-real floor (train tiles against the
same val tiles). Nothing is written: set the best as sample.ema_std.

The val tiles choose the std here, so a final figure on those same tiles is slightly
optimistic; with many val tiles and a handful of stds the bias is small.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from canopy import phema, tiles
from canopy.accelerator import pick_channels_last, pick_device, pick_precision
from canopy.errors import UserError
from canopy.evaluate import images as images_io
from canopy.evaluate import swd as swd_mod
from canopy.model.registry import make_scheduler
from canopy.params import CanopyParams
from canopy.sample.checkpoint import load_checkpoint
from canopy.sample.generate import generate
from canopy.sample.run import params_check
from canopy.seeding import Stream, numpy_rng

DEFAULT_STDS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25)


@dataclass
class SweepRow:
    std: float | None  # None: the export's EMA (train.ema_decay)
    swd: float


@dataclass
class SweepResult:
    rows: list[SweepRow]
    floor: float
    n: int
    n_real: int
    step: int

    @property
    def best(self) -> SweepRow:
        return min((r for r in self.rows if r.std is not None), key=lambda r: r.swd)

    def to_json(self) -> str:
        return json.dumps({
            "step": self.step, "n_samples": self.n, "n_real": self.n_real,
            "swd_floor": round(self.floor, 4),
            "swd": [{"ema_std": r.std, "swd": round(r.swd, 4)} for r in self.rows],
            "best_ema_std": self.best.std,
        }, indent=2)


def sweep(params: CanopyParams, stds: list[float], n: int, models: Path, tiles_dir: Path,
          progress: bool = False) -> SweepResult:
    for std in stds:
        try:
            phema.check_std(std, "each std (--stds)")
        except ValueError as err:
            raise UserError(str(err)) from None
    settings, ev = params.sample, params.evaluate
    manifest = tiles.read_manifest(tiles_dir, point_at="--tiles")
    size = manifest["tile_size"]
    val_refs = images_io.tiles_by_key(tiles_dir, "val", ev.verify_shards)
    train_refs = images_io.tiles_by_key(tiles_dir, "train", ev.verify_shards)
    if not val_refs or not train_refs:
        raise UserError(f"{tiles_dir} needs both train and val tiles: re-run `canopy etl`")
    pick = images_io.seeded_subset(len(val_refs), ev.max_real,
                                   numpy_rng(params.seed, Stream.EVAL_VAL_SUBSET))
    val = images_io.stack(tiles.read_tiles([val_refs[i] for i in pick], size), len(pick), size)
    pick = images_io.seeded_subset(len(train_refs), n, numpy_rng(params.seed, Stream.EVAL_FLOOR_SUBSET))
    floor = images_io.stack(tiles.read_tiles([train_refs[i] for i in pick], size), len(pick), size)

    device = pick_device(settings.device, "sample.device")
    amp_dtype = pick_precision(settings.precision, device, "sample.precision")
    channels_last = pick_channels_last(settings.channels_last, device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    sets, step = [], 0
    choices: list[float | None] = [None, *stds]
    for std in tqdm(choices, desc="stds", disable=not progress):
        checkpoint = load_checkpoint(models, "ema", std, check=params_check(params))
        step = int(checkpoint.config.get("step") or 0)
        scheduler = make_scheduler(settings.sampler, checkpoint.diffusion, steps=settings.steps,
                                   eta=settings.eta, spacing=settings.spacing)
        net = checkpoint.net.to(device, memory_format=layout)
        checkpoint.diffusion.to(device)
        # As `canopy sample` does: the process's preconditioning around the network (edm),
        # or the network itself (vp). Without it an edm model's samples were noise.
        net = checkpoint.diffusion.denoiser(net)
        parts = []
        for first in range(0, n, settings.batch_size):
            indices = list(range(first, min(n, first + settings.batch_size)))
            parts.append(generate(net, scheduler, indices, params.seed, checkpoint.image_shape,
                                  device, amp_dtype, False, channels_last).numpy())
        sets.append(np.concatenate(parts))
    config = swd_mod.SwdConfig(ev.swd_patch_size, ev.swd_patches_per_image, ev.swd_projections,
                               ev.swd_repeats, ev.swd_min_resolution)
    scores = swd_mod.swd([*sets, floor], val, config, params.seed).per_level
    values = [swd_mod.mean_over_levels(s) for s in scores]
    rows = [SweepRow(std, value) for std, value in zip(choices, values)]
    return SweepResult(rows, values[-1], n, len(val), step)


def report(result: SweepResult) -> str:
    lines = [f"SWD of {result.n} samples against {result.n_real} val tiles at step "
             f"{result.step} (floor {result.floor:.1f}: train tiles against the same val tiles)",
             f"{'ema_std':>10} {'swd':>9} {'/floor':>7}"]
    best = result.best
    for row in result.rows:
        name = "export" if row.std is None else f"{row.std:g}"
        mark = "  <- best" if row is best else ""
        lines.append(f"{name:>10} {row.swd:9.1f} {row.swd / result.floor:7.2f}{mark}")
    lines.append(f"best: sample.ema_std {best.std:g} (`dvc exp run -S sample.ema_std={best.std:g}`)")
    return "\n".join(lines)


def print_report(result: SweepResult, as_json: bool) -> None:
    print(result.to_json() if as_json else report(result), file=sys.stdout)
