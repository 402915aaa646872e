"""The samples folder that `canopy sample` writes and evaluate reads (docs/contract.md,
`data/samples/`): `000000.png ...`, `grid.png` and manifest.json.

Only the numbered images are samples: evaluate ignores grid.png and any other file, so a
folder of another model's images named the same way can be scored too.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canopy.errors import UserError
from canopy.fsutil import OutputKind, refuse_half_swapped
from canopy.hashing import sha256_bytes
from canopy.imaging import contact_sheet, decode_rgb_png

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRID_FILE = "grid.png"
_IMAGE_NAME = re.compile(r"^\d{6,}\.png$")
_FIX = "re-run `canopy sample` after `canopy etl`"
# The most bytes a sample file may have: far beyond any tile-sized PNG (see canopy/tiles.py),
# so a huge file in the folder is refused before it is read into memory.
MAX_SAMPLE_BYTES = 64 * 2**20


def image_name(index: int) -> str:
    return f"{index:06d}.png"


# --- writing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageRecord:
    file: str
    sha256: str
    # A conditioned model's request for this image ({kind: value}, canopy/conditions.py);
    # None (not written) for unconditioned samples
    condition: dict[str, Any] | None = None


@dataclass(frozen=True)
class CheckpointRecord:
    """The weights the samples came from."""

    file: str
    sha256: str
    step: int | None


@dataclass(frozen=True)
class Autoguidance:
    """sample.autoguidance's weight, the noise levels it acted on (sigma_max None: no upper
    limit) and the guide it extrapolated from: the post-hoc EMA of `ema_std` at an earlier
    training step (`guide.step`)."""

    weight: float
    ema_std: float
    sigma_min: float
    sigma_max: float | None
    guide: CheckpointRecord


@dataclass(frozen=True)
class SamplesManifest:
    n: int
    seed: int
    sampler: str
    steps: int
    eta: float
    timestep_spacing: str
    weights: str
    checkpoint: CheckpointRecord
    tile_size: int
    device: str
    precision: str
    channels_last: bool
    images: list[ImageRecord]
    # Conditioned models only (left out of the file otherwise): classifier-free guidance and
    # the sample.condition request
    guidance: float | None = None
    condition: dict[str, Any] | None = None
    # Autoguided samples only (left out of the file otherwise)
    autoguidance: Autoguidance | None = None


def encode_image(image: np.ndarray) -> bytes:
    """The PNG bytes of one sample, an (H, W, 3) uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(folder: Path, index: int, image: np.ndarray,
                condition: dict[str, Any] | None = None) -> ImageRecord:
    """Sample `index`, an (H, W, 3) uint8 array, as `folder/NNNNNN.png`."""
    data = encode_image(image)
    name = image_name(index)
    (folder / name).write_bytes(data)
    return ImageRecord(name, sha256_bytes(data), condition)


def write_grid(folder: Path, count: int, conditions: list[dict[str, Any] | None] | None = None
               ) -> None:
    """grid.png: a contact sheet of the first `count` samples already in `folder`; with
    `conditions` (each image's), one row per condition, about `count` images in all."""
    if not conditions or all(c is None for c in conditions):
        images = [_read(folder, i) for i in range(count)]
        Image.fromarray(contact_sheet(images)).save(folder / GRID_FILE, format="PNG")
        return
    groups: dict[str, list[int]] = {}
    for index, condition in enumerate(conditions):
        groups.setdefault(json.dumps(condition, sort_keys=True), []).append(index)
    per_row = max(1, -(-count // len(groups)))
    rows = [[_read(folder, i) for i in indices[:per_row]] for indices in groups.values()]
    Image.fromarray(_rows_sheet(rows, per_row)).save(folder / GRID_FILE, format="PNG")


def _read(folder: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(folder / image_name(index)).convert("RGB"))


def _rows_sheet(rows: list[list[np.ndarray]], cols: int, pad: int = 2) -> np.ndarray:
    """One row of tiles per list, left-aligned, `pad` white pixels between them."""
    height, width, channels = rows[0][0].shape
    sheet = np.full((len(rows) * (height + pad) + pad, cols * (width + pad) + pad, channels),
                    255, dtype=np.uint8)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            y, x = pad + r * (height + pad), pad + c * (width + pad)
            sheet[y:y + height, x:x + width] = image
    return sheet


def write_manifest(folder: Path, manifest: SamplesManifest) -> None:
    content = {"format_version": FORMAT_VERSION, **asdict(manifest)}
    # Conditioned runs alone carry the condition keys: unconditioned manifests stay as they were
    for key in ("guidance", "condition", "autoguidance"):
        if content[key] is None:
            del content[key]
    for record in content["images"]:
        if record["condition"] is None:
            del record["condition"]
    (folder / MANIFEST_FILE).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def is_samples_folder(folder: Path) -> bool:
    """Whether the folder is one `canopy sample` wrote (its manifest says so), and so may be
    replaced by the next run."""
    path = folder / MANIFEST_FILE
    try:
        if not path.is_file() or path.stat().st_size > MAX_SAMPLE_BYTES:
            return False
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and "format_version" in manifest
            and isinstance(manifest.get("images"), list) and "checkpoint" in manifest)


SAMPLES_OUTPUT = OutputKind("samples folder", "paths.samples (--samples)", is_samples_folder)


# --- reading -------------------------------------------------------------------------------

def list_samples(folder: Path) -> list[Path]:
    """The sample images `NNNNNN.png` in file-name order (grid.png and others ignored)."""
    if not folder.is_dir():
        refuse_half_swapped(folder, "canopy sample")
        raise UserError(f"samples folder {folder} not found: run `canopy sample` first "
                        "or pass --samples DIR")
    paths = sorted(p for p in folder.iterdir() if _IMAGE_NAME.match(p.name) and p.is_file())
    if not paths:
        raise UserError(f"no sample images (NNNNNN.png) in {folder}: run `canopy sample` "
                        "first or pass --samples DIR")
    return paths


def read_sample(path: Path, tile_size: int) -> np.ndarray:
    """One sample as an (H, W, 3) uint8 array; it must have the tiles' size."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_SAMPLE_BYTES:
                raise UserError(f"{path} is {size} bytes, far more than a sample image may "
                                f"take ({MAX_SAMPLE_BYTES}); {_FIX}")
            data = handle.read(size)  # bounded by the size: never a read to the end of anything
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    array = decode_rgb_png(data, str(path), _FIX)
    height, width = array.shape[:2]
    if (height, width) != (tile_size, tile_size):
        raise UserError(f"{path} is {width}x{height} px but the tiles are "
                        f"{tile_size}x{tile_size}; {_FIX}")
    return array


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, checked; None when there is none (images from elsewhere)."""
    path = folder / MANIFEST_FILE
    refuse_half_swapped(folder, "canopy sample")
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): re-run `canopy sample`") from None
    found = manifest.get("format_version") if isinstance(manifest, dict) else None
    if found != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {found!r}, but this canopy reads samples of "
                        f"format_version {FORMAT_VERSION}; re-run `canopy sample`")
    return manifest
