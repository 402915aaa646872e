"""The images evaluate compares, as uint8 arrays of shape (N, H, W, 3): which tiles, in which
order, and how they are collected. The files themselves are read by canopy/tiles.py and
canopy/samples.py (formats in docs/contract.md), so evaluate never imports etl or sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from canopy import tiles


def tiles_by_key(tiles_dir: Path, split: str, verify: str = "size") -> list[tiles.TileLocation]:
    """Every tile of a split in key order, so the seeded subsets do not depend on sharding;
    the shards are checked against the manifest first (`verify`: size or sha256)."""
    manifest = tiles.read_manifest(tiles_dir, point_at="--tiles")
    return sorted(tiles.verified_tiles(tiles_dir, split, manifest, verify),
                  key=lambda location: location.key)


def stack(images: Iterable[np.ndarray], count: int, tile_size: int,
          progress: Callable[[Iterable], Iterable] = lambda it: it) -> np.ndarray:
    """Collect `count` images into one preallocated (N, H, W, 3) uint8 array."""
    out = np.empty((count, tile_size, tile_size, 3), dtype=np.uint8)
    n = 0
    for n, image in enumerate(progress(images), start=1):
        out[n - 1] = image
    assert n == count
    return out


def seeded_subset(count: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indexes of a seeded subset of min(count, cap) items, in ascending order."""
    if count <= cap:
        return np.arange(count)
    return np.sort(rng.choice(count, size=cap, replace=False))
