"""The weights that `canopy train` writes under models/ and `canopy sample` reads (docs/contract.md,
`models/`): safetensors files, so nothing is unpickled.

    models/ema.safetensors                          the export: EMA weights, with safetensors
                                                    metadata "format" = canopy.model/2 (/1 read
                                                    too), "config" = JSON {model, diffusion,
                                                    schedule, [data_stats,] seed, tile_size,
                                                    step, params_hash, data_hash} and
                                                    "tensors_sha256" = sha256 of the tensor
                                                    bytes (after the header; absent in exports
                                                    written before it was recorded)
    models/state/step-NNNNNNNN/model.safetensors    raw weights of a training state (the rest of
                                                    the state is train's own: train/checkpoint.py)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from canopy.errors import UserError
from canopy.fsutil import atomic_write_bytes
from canopy.hashing import sha256_bytes

# canopy.model/2 added the noise process and data statistics to the config (model/process.py
# build fills the defaults of keys a /1 config lacks: those exports rebuild as they were).
EXPORT_FORMAT = "canopy.model/2"
# canopy.model/3: a conditioned model (its config's model holds `condition`), which a canopy
# older than conditions cannot build; unconditioned exports stay /2, byte for byte.
CONDITIONED_FORMAT = "canopy.model/3"
# canopy.model/4: a network with attention (model.mid_attention_heads), which an older canopy
# cannot build; exports without it keep their format.
ATTENTION_FORMAT = "canopy.model/4"
# canopy.model/5: a denoiser with the tile-mean prior (diffusion.mean_prior: tiles) or the
# network bounded in noise level (diffusion.network_sigma_max), which an older canopy would
# build without them and sample wrongly, without a word.
DENOISER_FORMAT = "canopy.model/5"
# canopy.model/6: a skip that is a mixture of the tiles' kinds (diffusion.skip_components),
# whose fitted components an older canopy would not read.
MIXTURE_FORMAT = "canopy.model/6"
# canopy.model/7: a network that reads the skip's estimate beside the noisy image
# (diffusion.skip_input), whose first convolution an older canopy would build for the image
# alone and fail to load.
SKIP_INPUT_FORMAT = "canopy.model/7"
READ_FORMATS = ("canopy.model/1", EXPORT_FORMAT, CONDITIONED_FORMAT, ATTENTION_FORMAT,
                DENOISER_FORMAT, MIXTURE_FORMAT, SKIP_INPUT_FORMAT)
EXPORT_FILE = "ema.safetensors"
STATE_DIR = "state"
STEP_DIR_PREFIX = "step-"
RAW_WEIGHTS_FILE = "model.safetensors"
CHECKSUM_KEY = "tensors_sha256"
_RETRAIN = "re-run `canopy train`"


def step_dir_name(step: int) -> str:
    """The state folder of `step`; zero-padded, so name order is step order."""
    return f"{STEP_DIR_PREFIX}{step:08d}"


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict as safetensors stores it: detached, on the CPU, contiguous."""
    return {name: t.detach().to("cpu").contiguous() for name, t in state.items()}


def save_canonical(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes that depend only on the tensors and metadata: safetensors writes its
    JSON header in hash-map order, so equal inputs gave different files from run to run (and
    another checkpoint sha256 in every samples manifest). The header is rewritten with sorted
    keys; the tensor offsets in it are relative to the data, which stays as it is."""
    data = save(state, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


def write_export(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """The export at `path` (atomically): `state` plus the config that rebuilds the network."""
    tensors = cpu_tensors(state)
    # The checksum covers the tensor bytes, which do not depend on the metadata it joins.
    data = save_canonical(tensors)
    metadata = {"format": export_format(config),
                "config": json.dumps(config, sort_keys=True),
                CHECKSUM_KEY: sha256_bytes(_tensor_bytes(data))}
    atomic_write_bytes(path, save_canonical(tensors, metadata=metadata))


def export_format(config: dict[str, Any]) -> str:
    """The oldest format whose readers build this config's network and process rightly."""
    model = config.get("model", {})
    diffusion = config.get("diffusion", {})
    if diffusion.get("skip_input"):
        return SKIP_INPUT_FORMAT
    if diffusion.get("skip_components", 1) > 1:
        return MIXTURE_FORMAT
    if (diffusion.get("mean_prior", "gaussian") != "gaussian"
            or diffusion.get("network_sigma_max") is not None):
        return DENOISER_FORMAT
    if model.get("mid_attention_heads"):
        return ATTENTION_FORMAT
    return CONDITIONED_FORMAT if model.get("condition") else EXPORT_FORMAT


def _tensor_bytes(data: bytes) -> bytes:
    """What follows the header of safetensors bytes: the tensors' data."""
    return data[8 + int.from_bytes(data[:8], "little"):]


def read_export_config(path: Path) -> dict[str, Any]:
    """The config of the export at `path`, checked; its tensors are not loaded."""
    if not path.is_file():
        raise UserError(f"{path} not found: train a model first (`canopy train`, or `dvc repro`)"
                        ", or point --models at the folder `canopy train` wrote")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} cannot be read ({err}): it is corrupt; {_RETRAIN}") from None
    if metadata.get("format") not in READ_FORMATS:
        raise UserError(f"{path} is not a Canopy model (format {metadata.get('format')!r}, "
                        f"expected {EXPORT_FORMAT!r})")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: its config metadata is unreadable ({err})") from None
    if not isinstance(config, dict) or "tile_size" not in config or "model" not in config:
        raise UserError(f"{path}: its config lacks the model shape or tile size")
    return config


def read_weights(path: Path, file_sha256: str | None = None,
                 fits: Callable[[dict[str, torch.Tensor]], None] | None = None
                 ) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (the export or a state's raw weights), on the CPU,
    checked: the whole file against `file_sha256` when given (a training state records
    it), else the tensor bytes against the checksum in the file's metadata where there is
    one (flipped bytes under an intact header would otherwise load as valid weights); and
    every value finite. `fits` (e.g. loading them into a network) runs before the checks, so
    that weights of another network are named as such rather than as damaged."""
    try:
        data = path.read_bytes()
        tensors = load(data)
        if file_sha256 is not None:
            checked, expected = data, file_sha256
        else:
            checked, expected = _tensor_bytes(data), _recorded_checksum(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} cannot be read ({err}): it is corrupt; {_RETRAIN}") from None
    if fits is not None:
        fits(tensors)
    if expected is not None and sha256_bytes(checked) != expected:
        raise UserError(f"{path} is damaged: its tensors do not match the sha256 recorded when "
                        f"it was written; {_RETRAIN}")
    refuse_non_finite(tensors, path)
    return tensors


def _recorded_checksum(path: Path) -> str | None:
    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get(CHECKSUM_KEY)


def refuse_non_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """NaN or infinite weights make NaN images, which would be written as black ones."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{path}: {name} holds {bad} NaN or infinite value(s) of "
                            f"{tensor.numel()}: the weights are damaged or training diverged; "
                            f"{_RETRAIN}")


def read_export(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(EMA state_dict, config) of the export at `path`."""
    config = read_export_config(path)
    return read_weights(path), config


def latest_raw_weights(models: Path) -> Path:
    """The raw weights of the newest training state under `models`."""
    states = sorted((models / STATE_DIR).glob(f"{STEP_DIR_PREFIX}*/{RAW_WEIGHTS_FILE}"))
    if not states:
        raise UserError(f"no training state with raw weights under {models / STATE_DIR}: "
                        "use sample.weights: ema")
    return states[-1]
