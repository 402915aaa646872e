"""What `canopy train` writes under paths.models (default models/; README "Files"):

    models/ema.safetensors              EMA weights (fp32) for `canopy sample`: the export,
                                        whose format canopy/weights.py writes and reads
    models/state/step-00001000/         the full training state, for resuming
        model.safetensors               raw weights (also read by `canopy sample`, weights: raw)
        ema.safetensors                 EMA weights
        optimizer.safetensors           AdamW moments, keys "<param index>.<name>"
        state.json                      step, hashes, resume params, grad scaler, file sha256s

Each state folder is written to a hidden staging folder and renamed into place (atomic), then
older ones are deleted, so a kill -9 at any moment leaves the last complete one. Nothing is
unpickled when loading: safetensors and JSON only. RNG states are not stored because every
random draw is seeded from (seed, step): the data order, the augmentations, t and the noise.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from canopy import weights
from canopy.fsutil import atomic_dir
from canopy.hashing import sha256_bytes

STATE_FORMAT = "canopy.train-state/1"


@dataclass
class Resume:
    step: int  # 0 = fresh start
    reason: str  # why not resumed ("" when resumed or nothing was there)
    world_size: int = 1  # torchrun ranks that wrote the state (state.json; absent = 1)


def state_dirs(state_root: Path) -> list[Path]:
    """Complete state folders, newest (highest step) first."""
    if not state_root.is_dir():
        return []
    prefix = weights.STEP_DIR_PREFIX
    found = [
        p for p in state_root.iterdir()
        if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix):].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(prefix):]), reverse=True)


def clear_stale(state_root: Path) -> None:
    """Remove staging folders a killed run left behind (hidden siblings, never loaded)."""
    if state_root.is_dir():
        for p in state_root.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def move_aside(state_root: Path) -> Path | None:
    """Rename a state that will not be resumed to a sibling `state.old-<step>` instead of
    deleting it: days of training are never lost to a params or data change (only `--fresh`
    deletes). Returns where it went (None when there was nothing to keep)."""
    folders = state_dirs(state_root)
    if not folders:
        shutil.rmtree(state_root, ignore_errors=True)  # only staging leftovers: nothing to keep
        return None
    step = int(folders[0].name[len(weights.STEP_DIR_PREFIX):])
    target = state_root.with_name(f"{state_root.name}.old-{step}")
    n = 1
    while target.exists():
        n += 1
        target = state_root.with_name(f"{state_root.name}.old-{step}-{n}")
    state_root.rename(target)
    return target


def save_state(
    state_root: Path,
    step: int,
    model: torch.nn.Module,
    ema_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: dict[str, Any],
) -> Path:
    """Write the state at `step` atomically, then delete older states."""
    target = state_root / weights.step_dir_name(step)
    blobs = {
        weights.RAW_WEIGHTS_FILE: weights.save_canonical(weights.cpu_tensors(model.state_dict())),
        "ema.safetensors": weights.save_canonical(weights.cpu_tensors(ema_model.state_dict())),
        "optimizer.safetensors": weights.save_canonical(_optimizer_tensors(optimizer)),
    }
    state = {
        "format": STATE_FORMAT,
        "step": step,
        **info,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "files": {name: sha256_bytes(blob) for name, blob in blobs.items()},
    }
    if target.exists():
        shutil.rmtree(target)  # only an older run's leftover: the newest state is never rewritten
    with atomic_dir(target) as staging:
        for name, blob in blobs.items():
            (staging / name).write_bytes(blob)
        (staging / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    for old in state_dirs(state_root):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{index}.{name}"] = tensor.detach().to("cpu").contiguous()
    return out


def read_state_json(folder: Path) -> dict[str, Any]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown format {state.get('format') if isinstance(state, dict) else None!r}")
    return state


def try_resume(
    state_root: Path,
    expect: dict[str, Any],
    model: torch.nn.Module,
    ema_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    max_step: int,
    tidy: bool = True,
) -> Resume:
    """Load the newest state if it was made with the same params and data (`expect`: the
    `params_hash`, `data_hash` and the `resume_params` they hash). Otherwise leave the
    objects untouched and say why a fresh start is needed. `tidy`: first remove what killed
    runs left (torchrun ranks other than 0 only read)."""
    if tidy:
        clear_stale(state_root)
    folders = state_dirs(state_root)
    if not folders:
        return Resume(0, "")
    folder = folders[0]
    try:
        state = read_state_json(folder)
        step = int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Resume(0, f"{folder} is unreadable ({err})")
    if state.get("data_hash") != expect["data_hash"]:
        return Resume(0, f"{folder} was trained on other data (the train shards changed)")
    if state.get("params_hash") != expect["params_hash"]:
        changed = _changed_keys(state.get("resume_params") or {}, expect["resume_params"])
        return Resume(0, f"{folder} was trained with other params ({changed or 'unknown change'})")
    if step > max_step:
        return Resume(0, f"{folder} is at step {step}, past train.steps {max_step}")
    try:
        blobs = {}
        for name, digest in state["files"].items():
            blob = (folder / name).read_bytes()
            if sha256_bytes(blob) != digest:
                raise ValueError(f"{name} does not match its sha256")
            blobs[name] = blob
        model_sd = load(blobs[weights.RAW_WEIGHTS_FILE])
        ema_sd = load(blobs["ema.safetensors"])
        optim_sd = _optimizer_state(load(blobs["optimizer.safetensors"]), optimizer)
        # Check everything before loading anything: no half-loaded objects on a mismatch.
        _check_matches(model, model_sd)
        _check_matches(ema_model, ema_sd)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, RuntimeError) as err:
        return Resume(0, f"{folder} is corrupt or does not fit this model ({err})")
    model.load_state_dict(model_sd)
    ema_model.load_state_dict(ema_sd)
    optimizer.load_state_dict(optim_sd)
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Resume(step, "", int(state.get("world_size") or 1))


def _check_matches(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    if set(own) != set(state):
        missing = sorted(set(own) - set(state))[:3]
        extra = sorted(set(state) - set(own))[:3]
        raise ValueError(f"weights differ in names (missing {missing}, unexpected {extra})")
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape) or state[name].dtype != tensor.dtype:
            got, want = tuple(state[name].shape), tuple(tensor.shape)
            raise ValueError(f"{name} has shape {got}, expected {want}")


def _optimizer_state(flat: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict:
    """Rebuild an optimizer state_dict: saved per-parameter tensors, current param groups (the
    hyper-parameters are part of the params hash, so they match)."""
    current = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        index, name = key.split(".", 1)
        if not 0 <= int(index) < len(params):
            raise ValueError(f"optimizer state for parameter {index} of {len(params)}")
        param = params[int(index)]
        if tensor.ndim:
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"optimizer {name} of parameter {index} has the wrong shape")
            # Same strides as the parameter (channels_last): fused AdamW walks both tensors'
            # memory in step, so a moment stored in another layout would be mis-applied.
            tensor = torch.empty_like(param, dtype=tensor.dtype).copy_(tensor)
        per_param.setdefault(int(index), {})[name] = tensor
    return {"state": per_param, "param_groups": current["param_groups"]}


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _changed_keys(a, b, f"{prefix}{key}.")
            if inner:
                changes.append(inner)
        elif a != b:
            changes.append(f"{prefix}{key} {a!r} -> {b!r}")
    return ", ".join(changes)


def export_ema(path: Path, ema_model: torch.nn.Module, config: dict[str, Any]) -> None:
    """models/ema.safetensors: EMA weights plus what `sample` needs to rebuild the network."""
    weights.write_export(path, ema_model.state_dict(), config)
