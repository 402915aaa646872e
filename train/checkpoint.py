"""What `canopy train` writes under paths.models (default models/; docs/contract.md):

    models/ema.safetensors              EMA weights (fp32) for `canopy sample`: the export,
                                        whose format canopy/weights.py writes and reads
    models/state/step-00001000/         the full training state, for resuming
        model.safetensors               raw weights (also read by `canopy sample`, weights: raw)
        ema.safetensors                 EMA weights
        optimizer.safetensors           AdamW moments, keys "<param index>.<name>"
        phema.safetensors               post-hoc EMA profiles, keys "<profile>/<name>" (only
                                        with train.phema_stds)
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
from canopy.fsutil import OutputKind, atomic_dir
from canopy.hashing import sha256_bytes

STATE_FORMAT = "canopy.train-state/1"


def _is_state_folder(folder: Path) -> bool:
    try:
        return read_state_json(folder).get("format") == STATE_FORMAT
    except (OSError, ValueError):
        return False


STATE_OUTPUT = OutputKind("training state folder", "paths.models", _is_state_folder)


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
    parts: dict[str, Any],
    scaler: torch.amp.GradScaler,
    info: dict[str, Any],
) -> Path:
    """Write the state at `step` atomically, then delete older states. `parts` names each
    piece of the training state (the network "model", its EMA "ema", the post-hoc EMA
    profiles "phema", the optimizer "optimizer", see `parts_of`): each has a state_dict of
    tensors, saved as <name>.safetensors."""
    target = state_root / weights.step_dir_name(step)
    blobs = {
        f"{name}.safetensors": weights.save_canonical(weights.cpu_tensors(part.state_dict()))
        for name, part in parts.items()
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
    with atomic_dir(target, STATE_OUTPUT) as staging:
        for name, blob in blobs.items():
            (staging / name).write_bytes(blob)
        (staging / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    for old in state_dirs(state_root):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


class OptimizerState:
    """The optimizer as a part of the training state: its per-parameter moments as flat
    tensors "<param index>.<name>" (the hyper-parameters are in the params hash)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, torch.Tensor]:
        return _optimizer_tensors(self.optimizer)

    def prepare_state(self, flat: dict[str, torch.Tensor]) -> dict:
        return _optimizer_state(flat, self.optimizer)

    def load_prepared(self, prepared: dict) -> None:
        self.optimizer.load_state_dict(prepared)


def parts_of(model: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer,
             phema: Any = None, uncertainty: torch.nn.Module | None = None) -> dict[str, Any]:
    """The named parts of a training state, in the order they are written."""
    parts: dict[str, Any] = {"model": model, "ema": ema, "optimizer": OptimizerState(optimizer)}
    if phema is not None:
        parts["phema"] = phema
    if uncertainty is not None:
        parts["uncertainty"] = uncertainty
    return parts


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
    parts: dict[str, Any],
    scaler: torch.amp.GradScaler,
    max_step: int,
    tidy: bool = True,
) -> Resume:
    """Load the newest state if it was made with the same params and data (`expect`: the
    `params_hash`, `data_hash` and the `resume_params` they hash) into `parts` (by name, as
    save_state wrote them). Otherwise leave the objects untouched and say why a fresh start
    is needed. `tidy`: first remove what killed runs left (torchrun ranks other than 0 only
    read)."""
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
        found = _with_absent(state.get("resume_params") or {}, expect)
        changed = _changed_keys(found, _with_absent(expect["resume_params"], expect))
        return Resume(0, f"{folder} was trained with other params ({changed or 'unknown change'}"
                         "; set them back to resume it)")
    if step > max_step:
        return Resume(0, f"{folder} is at step {step}, past train.steps {max_step}")
    missing = [name for name in parts if f"{name}.safetensors" not in state.get("files", {})]
    if missing:
        return Resume(0, f"{folder} holds no {', '.join(missing)} state (written by an older "
                         "Canopy or another recipe)")
    try:
        prepared = {}
        for name, part in parts.items():
            file = f"{name}.safetensors"
            blob = (folder / file).read_bytes()
            if sha256_bytes(blob) != state["files"][file]:
                raise ValueError(f"{file} does not match its sha256")
            flat = load(blob)
            if hasattr(part, "prepare_state"):
                prepared[name] = part.prepare_state(flat)
            else:
                _check_matches(part, flat)
                prepared[name] = flat
        # Everything was checked before anything is loaded: no half-loaded objects on a mismatch.
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, RuntimeError) as err:
        return Resume(0, f"{folder} is corrupt or does not fit this model ({err})")
    for name, part in parts.items():
        if hasattr(part, "load_prepared"):
            part.load_prepared(prepared[name])
        else:
            part.load_state_dict(prepared[name])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return Resume(step, "", int(state.get("world_size") or 1))


def _check_matches(part: Any, state: dict[str, torch.Tensor]) -> None:
    own = part.state_dict()
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


def _with_absent(resume_params: dict[str, Any], expect: dict[str, Any]) -> dict[str, Any]:
    """`resume_params` with the keys it leaves out at the value they mean (`absent_means`: a
    key added later is left out at the value that trains as before it existed)."""
    out = json.loads(json.dumps(resume_params))
    for section, later in expect.get("absent_means", {}).items():
        if isinstance(out.get(section), dict):
            out[section] = {**json.loads(json.dumps(later)), **out[section]}
    return out


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
