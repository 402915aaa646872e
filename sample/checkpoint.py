"""The network and diffusion that `canopy train` exported, rebuilt for sampling (the files:
canopy/weights.py and docs/contract.md, models/)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from canopy import phema
from canopy import weights as weights_io
from canopy.errors import UserError
from canopy.hashing import sha256_bytes, sha256_file
from canopy.model.diffusion import GaussianDiffusion
from canopy.model.process import EDMProcess, build
from canopy.model.unet import Unet
from canopy.tiles import are_tile_means, is_spectrum


@dataclass
class Checkpoint:
    net: Unet
    diffusion: GaussianDiffusion | EDMProcess  # the noise process (model/process.py)
    config: dict[str, Any]
    path: Path
    sha256: str

    @property
    def condition(self) -> dict[str, list[str] | None]:
        """A conditioned model's kinds with their classes (model/condition.py); {} if none."""
        return dict(self.config["model"].get("condition") or {})

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = int(self.config["tile_size"])
        return (int(self.config["model"].get("channels", 3)), size, size)


def load_checkpoint(models: Path, weights: str = "ema", ema_std: float | None = None,
                    check: Callable[[dict[str, Any], Path], None] | None = None,
                    at_step: int | None = None) -> Checkpoint:
    """The network (eval mode, CPU) and diffusion described by models/ema.safetensors, with
    the EMA weights, those of the latest training state (`weights` "raw"), or (`ema_std`) the
    post-hoc EMA of that relative std rebuilt from models/phema/ at the export's step (or at
    `at_step`, a snapshot's step: an earlier model of the same run).

    The export's config is checked with the params schema's rules, then by `check` (config,
    export path: e.g. against params.yaml), before any weight is read or network built: an
    edited config must not allocate a huge network or fail inside torch."""
    export = models / weights_io.EXPORT_FILE
    config = weights_io.read_export_config(export)
    check_export_config(config, export)
    if check is not None:
        check(config, export)
    try:
        net, diffusion = build(config)  # defaults filled for keys older exports lack
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{export}: its config cannot rebuild the network ({err}); "
                        "re-run `canopy train`") from None
    digest = None
    if ema_std is not None:
        step = at_step if at_step is not None else config.get("step")
        state, step = phema.reconstruct(models, ema_std, int(step) if step is not None else None)
        # names the weights, no file
        name = f"ema_std-{ema_std:g}" + (f"-step-{step}" if at_step is not None else "")
        path = models / phema.FOLDER / name
        if at_step is not None:
            config = {**config, "step": step}  # the step of these weights, not the export's
        weights_io.refuse_non_finite(state, path)
        _load_into(net, state, path, config)
        digest = sha256_bytes(weights_io.save_canonical(state))
    else:
        path = export if weights == "ema" else weights_io.latest_raw_weights(models)
        # The shapes first: weights of another network say so, whatever their checksum.
        weights_io.read_weights(path, file_sha256=_recorded_state_sha256(path),
                                fits=lambda state: _load_into(net, state, path, config))
    return Checkpoint(net.eval(), diffusion, config, path, digest or sha256_file(path))


def load_guide(models: Path, export_step: int | None, guide_at: float, ema_std: float
               ) -> Checkpoint:
    """Autoguidance's guide (sample.autoguidance): the same network earlier in its training,
    the post-hoc EMA of `ema_std` at the snapshot whose step is nearest to guide_at x the
    export's step (the earlier of two equally near), before the export's own step."""
    hint = ("train with train.phema_stds (e.g. [0.05, 0.1]) to write the snapshots the guide "
            "is rebuilt from, or set sample.autoguidance: 1 (off)")
    if not phema.snapshot_files(models / phema.FOLDER):
        raise UserError(f"sample.autoguidance needs post-hoc EMA snapshots in "
                        f"{models / phema.FOLDER}, and there are none: {hint}")
    found = phema.snapshots(models)
    final = export_step if export_step is not None else found[-1].step
    earlier = [snap.step for snap in found if 0 < snap.step < final]
    if not earlier:
        raise UserError(f"sample.autoguidance: {models / phema.FOLDER} holds no snapshot before "
                        f"the export's step {final}, so there is no earlier model to guide "
                        f"with: {hint}")
    target = guide_at * final
    step = min(earlier, key=lambda s: (abs(s - target), s))
    return load_checkpoint(models, "ema", ema_std, at_step=step)


def _load_into(net: Unet, state: dict, path: Path, config: dict[str, Any]) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(f"{path} holds weights of another model shape than its config "
                        f"{config['model']} ({detail}); re-run `canopy train`") from None


def _recorded_state_sha256(path: Path) -> str | None:
    """The sha256 of a training state's raw weights file as the state.json beside it records
    it (None for the export, which records its own)."""
    try:
        state = json.loads((path.parent / "state.json").read_text(encoding="utf-8"))
        found = state["files"][path.name]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, str) else None


def check_export_config(config: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, an export config that the params schema would refuse: the same
    ranges and choices as params.yaml's model, diffusion, schedule and etl.tile_size."""
    from canopy.model.params import DiffusionParams, ModelParams
    from canopy.params import CanopyParams

    def invalid(where: str, problem: str) -> UserError:
        return UserError(f"{path}: its config is invalid ({where}: {problem}); it was edited or "
                         "damaged: re-run `canopy train`")

    for section, schema in (("model", ModelParams), ("diffusion", DiffusionParams)):
        value = config.get(section)
        if not isinstance(value, dict):
            raise invalid(section, "missing or not a mapping")
        if section == "model":
            value = _as_model_params(value)
        try:
            schema.model_validate(value)
        except ValidationError as err:
            problem = err.errors(include_url=False)[0]
            where = ".".join([section, *map(str, problem["loc"])])
            raise invalid(where, problem["msg"]) from None
    schedules = CanopyParams.model_fields["schedule"].annotation.__args__
    if config.get("schedule") not in schedules:
        raise invalid("schedule", f"{config.get('schedule')!r}, expected one of {schedules}")
    _check_tile_size(config, invalid)
    stats = config.get("data_stats")
    if stats is not None and not _finite_stats(stats):
        raise invalid("data_stats", "expected mean and std lists of three finite numbers, "
                                    "std positive")
    if config["diffusion"].get("preconditioning") == "spectral" and not (
            isinstance(stats, dict) and is_spectrum(stats.get("spectrum"))):
        raise invalid("data_stats.spectrum", "preconditioning spectral needs the tile size and "
                                             "symmetric 3 x 3 cross-power matrices")
    if config["diffusion"].get("mean_prior", "gaussian") == "tiles":
        means, bandwidth = stats.get("tile_means"), stats.get("tile_mean_bandwidth")
        if not (are_tile_means(means) and len(means) >= 8):
            raise invalid("data_stats.tile_means", "mean_prior tiles needs at least 8 mean "
                                                   "colours in [-1, 1]")
        if type(bandwidth) is not float or not 0 < bandwidth < math.inf:
            raise invalid("data_stats.tile_mean_bandwidth", "expected a positive number")
    if config["diffusion"].get("skip_components", 1) > 1 and not _is_skip_mixture(
            stats.get("skip_mixture")):
        raise invalid("data_stats.skip_mixture", "skip_components needs positive weights, one "
                                                 "per component of mean, std and spectrum")


def _is_skip_mixture(mixture: Any) -> bool:
    """Whether `mixture` is train/mixture.py's fit: {"weights", "components"} of equal length,
    each component a ChannelStats entry with a spectrum."""
    if not isinstance(mixture, dict):
        return False
    weights, components = mixture.get("weights"), mixture.get("components")
    if not (isinstance(weights, list) and isinstance(components, list)
            and 1 <= len(weights) == len(components)):
        return False
    if not all(type(w) in (int, float) and 0 < w < math.inf for w in weights):
        return False
    return all(_finite_stats(c) and is_spectrum(c.get("spectrum")) for c in components)


def _check_tile_size(config: dict[str, Any], invalid: Callable[[str, str], UserError]) -> None:
    from canopy.model.params import ModelParams
    from canopy.schema import TILE_SIZE_MAX, TILE_SIZE_MIN

    tile_size = config.get("tile_size")
    if type(tile_size) is not int or not TILE_SIZE_MIN <= tile_size <= TILE_SIZE_MAX:
        raise invalid("tile_size", f"{tile_size!r}, expected an integer in "
                                   f"{TILE_SIZE_MIN}..{TILE_SIZE_MAX}")
    factor = ModelParams.model_validate(_as_model_params(config["model"])).downsample_factor
    if tile_size % factor:
        raise invalid("tile_size", f"{tile_size} is not a multiple of {factor}, the network's "
                                   "downsampling factor")


def _as_model_params(model: dict[str, Any]) -> dict[str, Any]:
    """The export's `model` as params.yaml spells it: a conditioned export records each kind
    of model.condition with its class names, params list the kinds."""
    condition = model.get("condition")
    if isinstance(condition, dict):
        return {**model, "condition": list(condition)}
    return model


def _finite_stats(stats: Any) -> bool:
    if not isinstance(stats, dict):
        return False
    lists = [stats.get("mean"), stats.get("std")]
    if not all(isinstance(values, list) and len(values) == 3 for values in lists):
        return False
    numbers = [v for values in lists for v in values]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in numbers):
        return False
    return all(v > 0 for v in stats["std"])
