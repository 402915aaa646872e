"""Read what `canopy train` wrote (format in README "models/"): safetensors and JSON only.

    models/ema.safetensors             EMA weights; metadata "format" = canopy.model/1 and
                                       "config" = JSON {model, diffusion, schedule, tile_size, step...}
    models/state/step-NNNNNNNN/model.safetensors   raw weights of the latest training state
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from canopy.errors import UserError
from canopy.hashing import sha256_file
from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.unet import Unet

EXPORT_FORMAT = "canopy.model/1"


@dataclass
class Checkpoint:
    net: Unet
    diffusion: GaussianDiffusion
    config: dict[str, Any]
    path: Path
    sha256: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = int(self.config["tile_size"])
        return (int(self.config["model"].get("channels", 3)), size, size)


def load_checkpoint(models: Path, weights: str = "ema") -> Checkpoint:
    """The network (eval mode, CPU) and diffusion described by models/ema.safetensors."""
    export = models / "ema.safetensors"
    config = _read_config(export)
    path = export if weights == "ema" else _latest_raw(models)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} cannot be read ({err}): it is corrupt; re-run `canopy train`") from None
    try:
        net = Unet(**config["model"])
        betas = make_betas(config["schedule"], int(config["diffusion"]["timesteps"]))
        diffusion = GaussianDiffusion(betas, config["diffusion"]["objective"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{export}: its config cannot rebuild the network ({err}); "
                        "re-run `canopy train`") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(f"{path} holds weights of another model shape than its config "
                        f"{config['model']} ({detail}); re-run `canopy train`") from None
    return Checkpoint(net.eval(), diffusion, config, path, sha256_file(path))


def _read_config(export: Path) -> dict[str, Any]:
    if not export.is_file():
        raise UserError(f"{export} not found: train a model first (`canopy train`, or `dvc repro`)"
                        ", or point --models at the folder `canopy train` wrote")
    try:
        with safe_open(str(export), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{export} cannot be read ({err}): it is corrupt; "
                        "re-run `canopy train`") from None
    if metadata.get("format") != EXPORT_FORMAT:
        raise UserError(f"{export} is not a Canopy model (format {metadata.get('format')!r}, "
                        f"expected {EXPORT_FORMAT!r})")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise UserError(f"{export}: its config metadata is unreadable ({err})") from None
    if not isinstance(config, dict) or "tile_size" not in config or "model" not in config:
        raise UserError(f"{export}: its config lacks the model shape or tile size")
    return config


def _latest_raw(models: Path) -> Path:
    states = sorted((models / "state").glob("step-*/model.safetensors"))
    if not states:
        raise UserError(f"no training state with raw weights under {models / 'state'}: "
                        "use sample.weights: ema")
    return states[-1]
