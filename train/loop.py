"""`canopy train`: the training loop (nanoGPT-style: one small explicit loop).

    tiles -> batches (train/data.py) -> Trainer.step (train/engine.py) -> metrics (dvclive),
    preview grids, checkpoints (train/checkpoint.py)

Resuming: the newest state under <out>/state/ is loaded when its params hash (the keys that
change what is learnt, train/params.py RESUME_TRAIN_KEYS) and data hash match; since every
random draw is seeded from (seed, step), N steps straight and N/2 + resume + N/2 give the
same weights. Otherwise the run starts fresh, says why, and moves the old state aside to
<out>/state.old-<step> (only --fresh deletes it).

Under torchrun (canopy/distributed.py) every rank runs this loop on its slice of each global
batch; rank 0 alone holds the output lock and writes (checkpoints, export, metrics,
previews). A stop signal to any rank is shared once per step (a MAX all-reduce), so all stop
after the same step and rank 0 saves it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from canopy import conditions, distributed, phema, tiles, weights
from canopy.distributed import Dist
from canopy.errors import UserError
from canopy.fsutil import output_lock, remove_stale_temp_files
from canopy.hashing import sha256_json
from canopy.model.process import process_config
from canopy.params import CanopyParams
from canopy.signals import StopAfterStep, ignore_stop_signals
from canopy.train import checkpoint, live
from canopy.train.data import (
    BatchStream,
    CropPlan,
    TileIndex,
    build_index,
    data_hash,
    make_loader,
    read_manifest,
    train_shards,
)
from canopy.train.engine import Trainer, network_config
from canopy.train.mixture import with_skip_mixture
from canopy.train.params import LATER_RESUME_TRAIN_KEYS, RESUME_TRAIN_KEYS, steps_shape_training
from canopy.train.preview import sample_grid
from canopy.train.runtime import Runtime, resolve_runtime


@dataclass
class TrainResult:
    step: int  # steps done when the run ended
    start: int  # step it resumed from (0: fresh)
    interrupted: int | None  # the signal that stopped it early, if any
    out: Path


def resume_params(params: CanopyParams) -> dict[str, Any]:
    """The params a checkpoint must share to be resumed (see RESUME_TRAIN_KEYS)."""
    dumped = params.model_dump(mode="json")
    return {
        "format": checkpoint.STATE_FORMAT,
        "seed": dumped["seed"],
        "schedule": dumped["schedule"],
        "model": params.model.unet_kwargs()  # the weights' own record of the shape
        | ({"condition": params.model.condition} if params.model.condition else {}),
        "diffusion": params.diffusion.config(),
        "train": {key: _as_before(key, dumped["train"][key]) for key in RESUME_TRAIN_KEYS}
        | {key: dumped["train"][key] for key, before in LATER_RESUME_TRAIN_KEYS.items()
           if dumped["train"][key] != before}
        | ({"steps": dumped["train"]["steps"]} if steps_shape_training(params.train) else {}),
    }


def _as_before(key: str, value: Any) -> Any:
    """train.augment as the boolean it was before it named its symmetries (all = true,
    none = false), so that the checkpoints of earlier runs still resume."""
    if key == "augment" and value in ("all", "none"):
        return value == "all"
    return value


def train(
    params: CanopyParams,
    *,
    quiet: bool = False,
    fresh: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    dist = distributed.from_env()
    _check_batch_split(params.train.batch_size, dist.world)
    runtime = resolve_runtime(params.train)
    distributed.check_devices(dist, runtime.device, "train.device")
    runtime = replace(runtime, device=dist.device(runtime.device))
    models = Path(params.paths.models)
    with distributed.process_group(dist, runtime.device, params.train.dist_timeout_s), \
            distributed.main_context(dist, lambda: output_lock(models, "canopy train"),
                                     "taking the output lock"):
        return _train(params, runtime, dist, quiet=quiet, fresh=fresh, on_step=on_step)


def _check_batch_split(batch_size: int, world: int) -> None:
    """Each rank takes an equal slice of the global batch (so DDP's mean of the gradients is
    the gradient of the whole batch's mean loss)."""
    if world > batch_size:
        raise UserError(f"{world} ranks (torchrun) for a train.batch_size of {batch_size}: "
                        f"start at most {batch_size} processes or raise train.batch_size")
    if batch_size % world:
        raise UserError(f"train.batch_size {batch_size} does not split into {world} equal "
                        f"slices (one per torchrun rank): use a batch_size divisible by {world}")


def _train(params: CanopyParams, runtime: Runtime, dist: Dist, *, quiet: bool, fresh: bool,
           on_step: Callable[[int], None] | None) -> TrainResult:
    tp = params.train
    data_dir, out = Path(params.paths.tiles), Path(params.paths.models)
    say = _sayer(quiet)
    if dist.is_main and out.is_dir():
        remove_stale_temp_files(out)  # a killed export's, or DVC would hash it into the output

    manifest = read_manifest(data_dir)
    shards = train_shards(data_dir)
    index = build_index(shards, data_dir, tp.verify_shards)
    factor = params.model.downsample_factor
    if index.tile_size % factor:
        raise UserError(
            f"tiles are {index.tile_size} px, not a multiple of {factor}, the U-Net's "
            f"down-sampling factor for model.dim_mults {params.model.dim_mults}: "
            "re-run etl with another tile_size or use fewer dim_mults"
        )
    for d in tp.crop_sizes if tp.crop_fraction > 0 else []:
        if index.tile_size % (d * factor):
            raise UserError(
                f"train.crop_sizes {tp.crop_sizes}: a 1/{d} crop of the {index.tile_size} px tiles "
                f"is not a whole multiple of {factor} px, the U-Net's down-sampling factor: use "
                "smaller divisors in train.crop_sizes or set train.crop_fraction: 0"
            )
    if params.model.channels != 3:
        raise UserError(f"model.channels is {params.model.channels} but tiles are RGB: set it to 3")

    condition = None
    if params.model.condition:
        index, condition = _with_conditions(index, params.model.condition, say)
    try:
        stats = with_skip_mixture(tiles.train_stats(manifest, data_dir), index,
                                  params.diffusion.skip_components, params.seed, say)
        process = process_config(params.diffusion.config(), params.schedule, stats,
                                 (condition or {}).get("region"))
    except ValueError as err:
        raise UserError(str(err)) from None
    trainer = Trainer(params, runtime, dist, process, condition)
    expect = {"resume_params": resume_params(params), "data_hash": data_hash(data_dir, shards, manifest)}
    expect["params_hash"] = sha256_json(expect["resume_params"])
    expect["absent_means"] = {"train": LATER_RESUME_TRAIN_KEYS}
    state_root = out / "state"
    resume = _resume(trainer, state_root, expect, tp.steps, dist, fresh)
    start = resume.step
    say(
        f"{len(index)} train tiles of {index.tile_size} px; {runtime.describe()}"
        + (f" x {dist.world} ranks (torchrun)" if dist.enabled else "") + "; "
        + (f"resuming at step {start} of {tp.steps}" if start else f"training {tp.steps} steps")
    )
    info = {k: expect[k] for k in ("params_hash", "data_hash", "resume_params")}
    if dist.enabled:  # not in the params hash: another world size may resume this state
        info["world_size"] = dist.world
    config = _export_config(params, index.tile_size, expect, process, condition)

    curves = live.open_live(out / "live", start) if dist.is_main else live.NoLive()
    crop = CropPlan.from_params(tp.crop_fraction, tp.crop_sizes, tp.crop_full_final, tp.steps)
    stream = BatchStream(index, tp.batch_size, params.seed, tp.augment, start=start,
                         part=dist.shard(tp.batch_size), crop=crop)
    loader = make_loader(stream, runtime.num_workers, runtime.pin_memory, ignore_stop_signals)

    step, saved, halt = start, start, None
    with StopAfterStep(_say_always) as stop, distributed.collectives("training"), \
            _progress(tp.steps, start, quiet or not dist.is_main) as bar:
        batches = iter(loader)
        meter = live.Meter(dist)
        while step < tp.steps and halt is None:
            item = next(batches)
            if "error" in item:
                raise UserError(item["error"])
            loss, grad_norm = trainer.step(item["images"], step, item.get("conditions"))
            step += 1
            meter.add(loss, grad_norm, len(item["images"]) * dist.world)
            bar.update(1)
            if step % tp.log_every == 0 or step == tp.steps:
                row = meter.flush(step)
                live.log_metrics(curves, step, row, trainer.lr_at(step - 1))
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}")
            if dist.is_main and tp.preview_images and step % tp.sample_every == 0:
                grid = sample_grid(
                    trainer.ema.model, trainer.diffusion, runtime, tp.preview_images,
                    tp.preview_steps, index.tile_size, params.seed,
                )
                curves.log_image(f"samples/{step}.png", grid)
            halt = _agreed_signal(stop, dist, runtime)
            if (dist.is_main and trainer.phema is not None
                    and (step % tp.phema_every == 0 or step == tp.steps)):
                # Before the checkpoint: a resume drops snapshots past its step, never lacks one.
                _write_snapshot(trainer, out, step)
            if step % tp.checkpoint_every == 0 or step == tp.steps or halt is not None:
                meter.check_finite(step)
                if dist.is_main:
                    _save(trainer, state_root, out, step, info, config)
                saved = step
                say(f"step {step}/{tp.steps}: checkpoint saved to {state_root}")
            if on_step is not None:
                on_step(step)
            if not dist.enabled:  # one process sees a signal at once (ranks: at the next step)
                halt = stop.signum
        if saved != step:  # stopped by a signal raised inside on_step or the last step
            meter.check_finite(step)
            _save(trainer, state_root, out, step, info, config)
        final = config | {"step": step}
        if (dist.is_main and start == step == tp.steps
                and not _export_is_current(out / "ema.safetensors", final)):
            # Nothing left to train, but `sample` needs a readable export of this state: a
            # missing, truncated or stale one is written again from the resumed EMA weights.
            checkpoint.export_ema(out / "ema.safetensors", trainer.ema.model, final)
        if (dist.is_main and start == step == tp.steps and trainer.phema is not None
                and not (out / phema.FOLDER / phema.snapshot_name(step)).is_file()):
            _write_snapshot(trainer, out, step)  # the resumed profiles are those of this step
    curves.end()
    # No rank reports success before rank 0's last checkpoint is on disk.
    distributed.barrier(dist, "the last checkpoint")
    if halt is not None:
        _say_always(f"stopped at step {step} (checkpoint saved); re-run `canopy train` to resume")
    else:
        say(f"done: {step} steps; EMA weights in {out / 'ema.safetensors'}")
    return TrainResult(step=step, start=start, interrupted=halt, out=out)


def _agreed_signal(stop: StopAfterStep, dist: Dist, runtime: Runtime) -> int | None:
    """The stop signal, if any; under torchrun the one any rank received (one tiny
    all-reduce per step), so that every rank stops after the same step."""
    if not dist.enabled:
        return stop.signum
    return distributed.max_int(dist, stop.signum or 0, runtime.device) or None


def _resume(trainer: Trainer, state_root: Path, expect: dict, max_step: int, dist: Dist,
            fresh: bool) -> checkpoint.Resume:
    """Load the newest state if it fits (checkpoint.try_resume). Under torchrun rank 0
    decides (and alone deletes or moves aside); then the other ranks load the same folder,
    and all check that they did."""
    parts = checkpoint.parts_of(trainer.model, trainer.ema, trainer.optimizer, trainer.phema,
                                trainer.uncertainty)
    args = (parts, trainer.scaler, max_step)
    resume = checkpoint.Resume(0, "")
    snapshots = state_root.parent / phema.FOLDER
    if dist.is_main:
        if fresh:
            shutil.rmtree(state_root, ignore_errors=True)
            shutil.rmtree(snapshots, ignore_errors=True)
        resume = checkpoint.try_resume(state_root, expect, *args)
        if resume.reason:
            kept = checkpoint.move_aside(state_root)
            if kept is not None and snapshots.is_dir():  # they belong to that state
                target = kept.with_name(kept.name.replace(state_root.name, phema.FOLDER, 1))
                if target.exists():
                    target = target.with_name(f"{target.name}-{os.getpid()}")
                snapshots.rename(target)
            where = (f"; the old state is kept in {kept} (move it back to resume it, or delete "
                     "it; `--fresh` starts over without keeping it)" if kept else "")
            _say_always(f"starting fresh: {resume.reason}{where}")
        snapshots.mkdir(parents=True, exist_ok=True)  # a DVC output, even when off
        phema.mark_folder(snapshots, trainer.phema.stds if trainer.phema is not None else ())
        # Snapshots past the resumed step were written after the last checkpoint of a killed
        # run (or belong to no state at all when starting fresh).
        phema.drop_after(snapshots, resume.step)
    if not dist.enabled:
        return resume
    wanted = distributed.broadcast(dist, resume, "resuming")
    if not dist.is_main and wanted.step:
        resume = checkpoint.try_resume(state_root, expect, *args, tidy=False)
    steps = distributed.gather(dist, resume.step, "resuming")
    if any(found != wanted.step for found in steps):
        lost = [rank for rank, found in enumerate(steps) if found != wanted.step]
        raise UserError(f"rank 0 resumes {state_root} at step {wanted.step} but rank(s) "
                        f"{lost} found {[steps[r] for r in lost]}: every node must see the same "
                        "paths.models (a shared filesystem), or start with --fresh")
    if wanted.step and wanted.world_size != dist.world:
        _say_always(f"resuming a state trained by {wanted.world_size} process(es) with "
                    f"{dist.world}: same global batch and draws, so the weights follow within "
                    "float rounding, not bit for bit")
    return wanted


def _save(trainer: Trainer, state_root: Path, out: Path, step: int, info: dict, config: dict) -> None:
    parts = checkpoint.parts_of(trainer.model, trainer.ema, trainer.optimizer, trainer.phema,
                                trainer.uncertainty)
    checkpoint.save_state(state_root, step, parts, trainer.scaler, info)
    checkpoint.export_ema(out / "ema.safetensors", trainer.ema.model, config | {"step": step})


def _write_snapshot(trainer: Trainer, out: Path, step: int) -> None:
    assert trainer.phema is not None
    phema.write_snapshot(out / phema.FOLDER, step, trainer.phema.stds, trainer.phema.states())


def _export_is_current(path: Path, config: dict[str, Any]) -> bool:
    """Whether `path` is a readable export with exactly this config."""
    try:
        _, found = weights.read_export(path)
    except UserError:
        return False
    return found == json.loads(json.dumps(config))  # as stored: tuples come back as lists


def _with_conditions(index: TileIndex, kinds: list[str], say: Callable[[str], None]
                     ) -> tuple[TileIndex, dict[str, list[str] | None]]:
    """The index with each train tile's condition row, and the model's condition (its kinds
    with their classes), from the tiles' metadata (canopy/conditions.py)."""
    values = conditions.tiles_values(tiles.read_metadata(index.locations))
    condition = conditions.model_condition(kinds, values)
    rows = conditions.condition_rows(condition, values)
    classes = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in condition.items() if names)
    absent = {k: n for k, n in conditions.absent_counts(rows, list(condition)).items() if n}
    say(f"conditioned on {', '.join(condition)}" + (f" ({classes})" if classes else "")
        + (f"; tiles without a value, trained as unconditioned for it: {absent}" if absent else ""))
    return replace(index, conditions=rows), condition


def _export_config(params: CanopyParams, tile_size: int, expect: dict,
                   process: dict[str, Any], condition: dict | None = None) -> dict[str, Any]:
    """What rebuilds the network and its process (model/process.py build): `process` holds
    the diffusion section (sigma_data resolved), the schedule and any data stats; the model's
    keyword arguments hold a conditioned model's condition (kinds and classes)."""
    return {
        "model": network_config(params, condition),
        **process,
        "seed": params.seed,
        "tile_size": tile_size,
        "params_hash": expect["params_hash"],
        "data_hash": expect["data_hash"],
    }


def _progress(total: int, initial: int, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(),
        desc="train",
    )


def _sayer(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            _say_always(message)

    return say


def _say_always(message: str) -> None:
    from tqdm import tqdm

    if not distributed.is_main_process():
        return  # under torchrun rank 0 speaks for all
    tqdm.write(f"canopy train: {message}", file=sys.stderr)
