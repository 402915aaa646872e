"""Every read of tiles and samples that the judge makes, through the format modules.

The judge needs few things from the two folders: the val tiles by key, the sample images by
index, each one's pixels, and the sha256 of each manifest (what ties an answer to the exact
experiment). The files themselves are read by canopy/tiles.py and canopy/samples.py,
the modules that own those formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from canopy import samples as samples_format
from canopy import tiles as tiles_format
from canopy.errors import UserError
from canopy.hashing import sha256_file

TileRef = tiles_format.TileLocation
_TILES_OPTION = "--tiles"


def tile_size(tiles_dir: Path) -> int:
    return tiles_format.read_manifest(tiles_dir, _TILES_OPTION)["tile_size"]


def tiles_manifest(tiles_dir: Path) -> dict:
    return tiles_format.read_manifest(tiles_dir, _TILES_OPTION)


def tiles_manifest_sha256(tiles_dir: Path) -> str:
    tiles_format.read_manifest(tiles_dir, _TILES_OPTION)  # a clear error when missing or broken
    return sha256_file(tiles_dir / tiles_format.MANIFEST_FILE)


def samples_manifest_sha256(samples_dir: Path) -> str:
    if samples_format.read_manifest(samples_dir) is None:
        raise UserError(f"{samples_dir / samples_format.MANIFEST_FILE} not found: answers are tied "
                        "to the samples' manifest; run `canopy sample` or pass --samples DIR "
                        "(a sample output folder)")
    return sha256_file(samples_dir / samples_format.MANIFEST_FILE)


def val_tiles(tiles_dir: Path) -> dict[str, TileRef]:
    """The val tiles by key (the held-out tiles: real imagery the model never trained on)."""
    refs = tiles_format.list_tiles(tiles_dir, "val", tile_size(tiles_dir))  # bounds each member
    return {ref.key: ref for ref in refs}


def read_tile(ref: TileRef, size: int) -> np.ndarray:
    return tiles_format.read_tile(ref, size)


def samples(samples_dir: Path) -> dict[int, Path]:
    """The generated images by index (000012.png is 12)."""
    return {int(path.stem): path for path in samples_format.list_samples(samples_dir)}


def read_sample(path: Path, size: int) -> np.ndarray:
    return samples_format.read_sample(path, size)


def image_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header only (cheap enough to check every sample)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable PNG ({err}); re-run `canopy sample`") from None
