"""Every read of tiles and samples that the judge makes, through the stages' own readers.

The judge needs few things from the two folders: the val tiles by key, the sample images by
index, each one's pixels, and the sha256 of each manifest (what ties an answer to the exact
experiment). Keeping them here, and only here, leaves one place to follow when those file
formats move.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from canopy.errors import UserError
from canopy.evaluate import images as stage_images
from canopy.hashing import sha256_file

TileRef = stage_images.TileRef


def tile_size(tiles_dir: Path) -> int:
    return stage_images.read_tiles_manifest(tiles_dir)["tile_size"]


def tiles_manifest_sha256(tiles_dir: Path) -> str:
    stage_images.read_tiles_manifest(tiles_dir)  # a clear error when it is missing or broken
    return sha256_file(tiles_dir / "manifest.json")


def samples_manifest_sha256(samples_dir: Path) -> str:
    path = samples_dir / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path} not found: answers are tied to the samples' manifest; run "
                        "`canopy sample` or pass --samples DIR (a sample output folder)")
    return sha256_file(path)


def val_tiles(tiles_dir: Path) -> dict[str, TileRef]:
    """The val tiles by key (the held-out tiles: real imagery the model never trained on)."""
    return {ref.key: ref for ref in stage_images.list_tiles(tiles_dir, "val")}


def read_tile(ref: TileRef, size: int) -> np.ndarray:
    return stage_images.read_tile(ref, size)


def samples(samples_dir: Path) -> dict[int, Path]:
    """The generated images by index (000012.png is 12)."""
    return {int(path.stem): path for path in stage_images.list_samples(samples_dir)}


def read_sample(path: Path, size: int) -> np.ndarray:
    return stage_images.read_sample(path, size)


def image_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header only (cheap enough to check every sample)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable PNG ({err}); re-run `canopy sample`") from None
