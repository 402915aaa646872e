"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", section 3 and appendix C; reference: NVlabs/edm2 training/phema.py): the snapshots
that `canopy train` writes under models/phema/ and the reconstruction that `canopy sample`
(sample.ema_std) and `canopy ema sweep` read them with.

A power-function EMA averages the weights of steps 0..t with weight proportional to
tau^gamma: its width is a fixed fraction of the run, the relative standard deviation
std = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))). Training keeps two such averages (two
stds, e.g. 0.05 and 0.10) and saves both every few steps. Each snapshot is a known profile
over past steps, so the profile of any other std at the last step is approximated by the
least-squares combination of the snapshots (the inner products of power-function profiles
have a closed form, Algorithm 3); the weights are the same combination of the snapshots.

    models/phema/snapshot-NNNNNNNN.safetensors   fp32 tensors "<profile index>/<state_dict key>",
                                                 metadata format = canopy.phema-snapshot/1,
                                                 step, stds (JSON list)

One writer and reader of that format: this module. Train writes a snapshot at every
train.phema_every steps and at its last step; on resume it deletes those past the resumed
step (written after the checkpoint by a run that was killed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from canopy import weights
from canopy.errors import UserError
from canopy.fsutil import atomic_write_bytes, atomic_write_text

SNAPSHOT_FORMAT = "canopy.phema-snapshot/1"
FOLDER = "phema"
PREFIX = "snapshot-"
# The widest profile there is: gamma -> 0 (a plain average of every step so far).
MAX_STD = float(np.sqrt(1.0 / 12.0))


def exp_to_std(exp: float | np.ndarray) -> np.ndarray:
    """The relative std of the power-function profile of exponent gamma (EDM2 eq. 123)."""
    exp = np.float64(exp)
    return np.sqrt((exp + 1) / (exp + 2) ** 2 / (exp + 3))


def std_to_exp(std: float | np.ndarray) -> np.ndarray:
    """gamma of a relative std: the largest real root of gamma^3 + 7 gamma^2 + (16 - std^-2)
    gamma + 12 - std^-2 (EDM2 eq. 126, Algorithm 2)."""
    std = np.float64(std)
    tmp = std.flatten() ** -2
    exp = [np.roots([1, 7, 16 - t, 12 - t]).real.max() for t in tmp]
    return np.float64(exp).reshape(std.shape)


def beta(std: float, step: int) -> float:
    """The decay of the update after step `step` (1-based, one optimizer step per update):
    (1 - 1/t)^(gamma + 1) (EDM2 eq. 127 with t counted in steps). 0 at step 1: the profile
    starts as a copy of the weights."""
    return float((1.0 - 1.0 / step) ** (float(std_to_exp(std)) + 1.0))


def correlation(a_ofs, a_std, b_ofs, b_std) -> np.ndarray:
    """Inner products of the profiles (ending at a_ofs with a_std) and (b_ofs, b_std), each
    normalised to unit mass (EDM2 eq. 151, Algorithm 3). Only the ratio of the ends counts."""
    a_exp = std_to_exp(a_std)
    b_exp = std_to_exp(b_std)
    t_ratio = a_ofs / b_ofs
    t_exp = np.where(a_ofs < b_ofs, b_exp, -a_exp)
    t_max = np.maximum(a_ofs, b_ofs)
    num = (a_exp + 1) * (b_exp + 1) * t_ratio ** t_exp
    den = (a_exp + b_exp + 1) * t_max
    return num / den


def solve_coefficients(in_ofs, in_std, out_ofs, out_std) -> np.ndarray:
    """The least-squares weights [len(in), len(out)] of the snapshot profiles (in_ofs, in_std)
    that best match the profiles (out_ofs, out_std), normalised to sum 1 (Algorithm 3)."""
    in_ofs, in_std = np.broadcast_arrays(np.float64(in_ofs), np.float64(in_std))
    out_ofs, out_std = np.broadcast_arrays(np.float64(out_ofs), np.float64(out_std))
    rv = lambda x: np.float64(x).reshape(-1, 1)  # noqa: E731
    cv = lambda x: np.float64(x).reshape(1, -1)  # noqa: E731
    a = correlation(rv(in_ofs), rv(in_std), cv(in_ofs), cv(in_std))
    b = correlation(rv(in_ofs), rv(in_std), cv(out_ofs), cv(out_std))
    x = np.linalg.solve(a, b)
    return x / np.sum(x, axis=0)


def check_std(std: float, what: str) -> None:
    if not 0.0 < std < MAX_STD:
        raise ValueError(f"{what} must be between 0 and {MAX_STD:.4f} (the relative std of a "
                         f"plain average of the whole run), got {std}")


# --- the snapshot files -----------------------------------------------------------------------

def snapshot_name(step: int) -> str:
    return f"{PREFIX}{step:08d}.safetensors"


# Written in models/phema/ when train.phema_stds is empty: DVC warns of an empty output folder
# at every run, and the note says why there are no snapshots.
OFF_NOTE = "NONE.txt"


def mark_folder(folder: Path, stds: Sequence[float]) -> None:
    """Keep the note in `folder` exactly when no profiles are kept (snapshots never start with
    it, so readers skip it)."""
    note = folder / OFF_NOTE
    if stds:
        note.unlink(missing_ok=True)
    elif not note.is_file():
        atomic_write_text(note, "No post-hoc EMA snapshots: train.phema_stds was empty when this "
                                "model was trained (sample.ema_std needs them).\n")


def snapshot_files(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every snapshot in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        digits = path.name[len(PREFIX):-len(".safetensors")]
        if path.name.startswith(PREFIX) and path.name.endswith(".safetensors") and digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def write_snapshot(folder: Path, step: int, stds: list[float],
                   states: list[dict[str, torch.Tensor]]) -> Path:
    """One snapshot (every profile at `step`), atomically."""
    tensors = {f"{i}/{name}": t for i, state in enumerate(states) for name, t in state.items()}
    metadata = {"format": SNAPSHOT_FORMAT, "step": str(step), "stds": json.dumps(list(stds))}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / snapshot_name(step)
    atomic_write_bytes(path, weights.save_canonical(weights.cpu_tensors(tensors), metadata))
    return path


def drop_after(folder: Path, step: int) -> None:
    """Delete the snapshots past `step` (a killed run wrote them after its last checkpoint)."""
    for found, path in snapshot_files(folder):
        if found > step:
            path.unlink()


@dataclass(frozen=True)
class Snapshot:
    step: int
    stds: tuple[float, ...]
    path: Path


def read_snapshot_info(path: Path) -> Snapshot:
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
        return Snapshot(int(metadata["step"]), tuple(float(s) for s in json.loads(metadata["stds"])),
                        path)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path} is not a readable post-hoc EMA snapshot ({err}): re-run "
                        "`canopy train --fresh`") from None


def snapshots(models: Path) -> list[Snapshot]:
    """Every snapshot under models/phema/, oldest first, checked."""
    found = [read_snapshot_info(path) for _, path in snapshot_files(models / FOLDER)]
    if not found:
        raise UserError(f"no post-hoc EMA snapshots in {models / FOLDER}: train with "
                        "train.phema_stds (e.g. [0.05, 0.1]) to write them, or set "
                        "sample.ema_std: null to use the export's EMA")
    return found


def coefficients(found: list[Snapshot], std: float, at_step: int) -> list[tuple[Path, int, float]]:
    """(snapshot path, profile index, weight) of the reconstruction of `std` at `at_step`."""
    check_std(std, "the ema std")
    ins = [(snap, i, s) for snap in found for i, s in enumerate(snap.stds) if snap.step > 0]
    coef = solve_coefficients([snap.step for snap, _, _ in ins], [s for _, _, s in ins],
                              at_step, std)[:, 0]
    return [(snap.path, i, float(c)) for (snap, i, _), c in zip(ins, coef)]


def reconstruct(models: Path, std: float, at_step: int | None = None
                ) -> tuple[dict[str, torch.Tensor], int]:
    """The weights of the power-function EMA of relative std `std` at `at_step` (default:
    the last snapshot's step), from the snapshots up to that step; and that step. Summed in
    float64 in a fixed order, then rounded to fp32: the same snapshots give the same bytes."""
    found = snapshots(models)
    step = found[-1].step if at_step is None else at_step
    found = [snap for snap in found if snap.step <= step]
    if not found or found[-1].step != step:
        raise UserError(f"no post-hoc EMA snapshot at step {step} in {models / FOLDER}: re-run "
                        "`canopy train`")
    total: dict[str, torch.Tensor] = {}
    cache: dict[Path, dict[str, torch.Tensor]] = {}
    for path, index, weight in coefficients(found, std, step):
        if path not in cache:
            cache.clear()
            cache[path] = load_file(str(path))
        prefix = f"{index}/"
        for key, tensor in cache[path].items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                term = tensor.double() * weight
                total[name] = term if name not in total else total[name].add_(term)
    return {name: t.float() for name, t in sorted(total.items())}, step
