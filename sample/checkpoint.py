"""The network and diffusion that `canopy train` exported, rebuilt for sampling (the files:
canopy/weights.py and docs/contract.md, models/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canopy import phema
from canopy import weights as weights_io
from canopy.errors import UserError
from canopy.hashing import sha256_bytes, sha256_file
from canopy.model.diffusion import GaussianDiffusion
from canopy.model.process import EDMProcess, build
from canopy.model.unet import Unet


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


def load_checkpoint(models: Path, weights: str = "ema", ema_std: float | None = None) -> Checkpoint:
    """The network (eval mode, CPU) and diffusion described by models/ema.safetensors, with
    the EMA weights, those of the latest training state (`weights` "raw"), or (`ema_std`) the
    post-hoc EMA of that relative std rebuilt from models/phema/ at the export's step."""
    export = models / weights_io.EXPORT_FILE
    config = weights_io.read_export_config(export)
    digest = None
    if ema_std is not None:
        step = config.get("step")
        state, _ = phema.reconstruct(models, ema_std, int(step) if step is not None else None)
        path = models / phema.FOLDER / f"ema_std-{ema_std:g}"  # names the weights, no file
        digest = sha256_bytes(weights_io.save_canonical(state))
    else:
        path = export if weights == "ema" else weights_io.latest_raw_weights(models)
        state = weights_io.read_weights(path)
    try:
        net, diffusion = build(config)  # defaults filled for keys older exports lack
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{export}: its config cannot rebuild the network ({err}); "
                        "re-run `canopy train`") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(f"{path} holds weights of another model shape than its config "
                        f"{config['model']} ({detail}); re-run `canopy train`") from None
    return Checkpoint(net.eval(), diffusion, config, path, digest or sha256_file(path))
