"""Reading the images evaluate compares: etl tile shards and the sample folder (SPEC.md formats).

Stages talk through files: tiles are read straight from the tar shards (`<key>.png` members),
by byte offset, without unpacking them or importing etl. Images come back as uint8 arrays of
shape (N, H, W, 3).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from canopy.errors import UserError

SAMPLE_NAME = re.compile(r"^\d{6,}\.png$")


@dataclass(frozen=True)
class TileRef:
    """Where one tile's PNG bytes are inside a shard."""

    key: str
    shard: Path
    offset: int
    size: int


def read_tiles_manifest(tiles_dir: Path) -> dict:
    path = tiles_dir / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run `canopy etl` first or pass --tiles DIR "
                        "(an etl output folder)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): re-run `canopy etl`") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tile_size"), int):
        raise UserError(f"{path}: no integer tile_size in it; re-run `canopy etl`")
    return manifest


def list_tiles(tiles_dir: Path, split: str) -> list[TileRef]:
    """Every tile of a split, in key order (shards `<tiles>/<split>/*.tar`)."""
    refs: list[TileRef] = []
    for shard in sorted((tiles_dir / split).glob("*.tar")):
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".png"):
                        refs.append(TileRef(member.name[:-4], shard, member.offset_data,
                                            member.size))
        except (tarfile.TarError, OSError) as err:
            raise UserError(f"{shard}: not a readable tar shard ({err}); re-run `canopy etl`") \
                from None
    refs.sort(key=lambda ref: ref.key)
    return refs


def read_tile(ref: TileRef, tile_size: int) -> np.ndarray:
    with open(ref.shard, "rb") as handle:
        handle.seek(ref.offset)
        data = handle.read(ref.size)
    return decode_png(data, f"{ref.shard}:{ref.key}.png", tile_size, "re-run `canopy etl`")


def iter_tiles(refs: Iterable[TileRef], tile_size: int) -> Iterator[np.ndarray]:
    for ref in refs:
        yield read_tile(ref, tile_size)


def list_samples(samples_dir: Path) -> list[Path]:
    """The generated images `NNNNNN.png` in file-name order (grid.png and others ignored)."""
    if not samples_dir.is_dir():
        raise UserError(f"samples folder {samples_dir} not found: run `canopy sample` first "
                        "or pass --samples DIR")
    paths = sorted(p for p in samples_dir.iterdir() if SAMPLE_NAME.match(p.name) and p.is_file())
    if not paths:
        raise UserError(f"no sample images (NNNNNN.png) in {samples_dir}: run `canopy sample` "
                        "first or pass --samples DIR")
    return paths


def read_sample(path: Path, tile_size: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    return decode_png(data, str(path), tile_size, "re-run `canopy sample` after `canopy etl`")


def decode_png(data: bytes, name: str, tile_size: int, fix: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size = image.mode, image.size
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{name}: not a readable PNG ({err}); {fix}") from None
    if mode != "RGB":
        raise UserError(f"{name}: expected an 8-bit RGB image, got PIL mode {mode}; {fix}")
    if size != (tile_size, tile_size):
        raise UserError(f"{name} is {size[0]}x{size[1]} px but the tiles are "
                        f"{tile_size}x{tile_size}; {fix}")
    return array


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
