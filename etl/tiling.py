"""Cut a scene into tile_size windows at `stride`, with their valid and vegetation fractions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from canopy.etl.scene import SceneReader

# Reads cover one row of tiles and at most this many columns of pixels, so memory is bounded
# whatever the raster's width (about 4096 x tile_size x bands x dtype per read).
MAX_READ_WIDTH = 4096


@dataclass(frozen=True)
class Candidate:
    row: int  # pixel offset of the tile's top edge
    col: int  # pixel offset of the tile's left edge
    rgb: np.ndarray  # tile_size x tile_size x 3, uint8
    valid_fraction: float  # share of pixels that are not nodata/masked/cloud
    vegetation_fraction: float  # share of the valid pixels that are vegetation
    tree_cover: float | None = None  # share of all pixels WorldCover calls tree cover


def tile_origins(length: int, tile_size: int, stride: int) -> range:
    """Offsets of the full tiles along one axis (a partial tile at the edge is not made)."""
    return range(0, length - tile_size + 1, stride)


def count_tiles(width: int, height: int, tile_size: int, stride: int) -> int:
    return len(tile_origins(width, tile_size, stride)) * len(tile_origins(height, tile_size, stride))


def scene_candidates(reader: SceneReader, tile_size: int, stride: int) -> Iterator[Candidate]:
    """Every full tile of the scene, row by row, read in bounded windows."""
    cols = tile_origins(reader.width, tile_size, stride)
    per_read = max(1, (MAX_READ_WIDTH - tile_size) // stride + 1)
    for row in tile_origins(reader.height, tile_size, stride):
        for first in range(0, len(cols), per_read):
            chunk = cols[first:first + per_read]
            left, right = chunk[0], chunk[-1] + tile_size
            window = Window(left, row, right - left, tile_size)
            rgb, valid, vegetation = reader.read(window)
            tree = reader.read_tree(window)
            for col in chunk:
                cut = slice(col - left, col - left + tile_size)
                yield _candidate(row, col, rgb[:, cut], valid[:, cut], vegetation[:, cut],
                                 None if tree is None else tree[:, cut])


def _candidate(row, col, rgb, valid, vegetation, tree=None) -> Candidate:
    valid_pixels = int(valid.sum())
    return Candidate(
        row=row,
        col=col,
        rgb=np.ascontiguousarray(rgb),
        valid_fraction=valid_pixels / valid.size,
        vegetation_fraction=int(vegetation.sum()) / valid_pixels if valid_pixels else 0.0,
        tree_cover=None if tree is None else int(tree.sum()) / tree.size,
    )
