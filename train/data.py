"""Training tiles from the etl shards (docs/contract.md, data/tiles/), as a stream of uint8 batches.

The stream is a pure function of (seed, batch number): batch b holds tiles b*B .. (b+1)*B - 1 of
an endless sequence of epochs, each a seeded permutation of every train tile, with a seeded
flip/rotation per tile. So a resumed run sees exactly the batches it would have seen, and the
number of DataLoader workers changes nothing (worker w makes batches w, w + W, w + 2W...,
which the DataLoader hands out round-robin, in order).

Tiles are read straight from the tar shards by byte offset (canopy/tiles.py indexes the tar
headers once), so no shard is unpacked and only the bytes of the needed tiles are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from canopy import tiles
from canopy.errors import UserError
from canopy.hashing import sha256_file, sha256_json
from canopy.seeding import Stream, numpy_rng

# train.augment: which symmetries of the square a tile is drawn under; TRANSPOSE is the k of
# dihedral() that flips about the main diagonal (keeps a light from the upper left).
AUGMENTS = ("none", "transpose", "all")
TRANSPOSE = 7


@dataclass(frozen=True)
class TileIndex:
    """Every train tile, in shard order: the order the seeded permutations index."""

    locations: tuple[tiles.TileLocation, ...]
    tile_size: int
    # A conditioned model's condition row of each tile (canopy/conditions.py), else None
    conditions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(location.key for location in self.locations)


def read_manifest(data_dir: Path) -> dict[str, Any]:
    return tiles.read_manifest(data_dir, point_at="paths.tiles (or --tiles)")


def train_shards(data_dir: Path) -> list[Path]:
    shards = tiles.shard_files(data_dir, "train")
    if not shards:
        raise UserError(
            f"no train shards (*.tar) in {data_dir / 'train'}: run `canopy etl` first "
            "(with a val_fraction below 1 and imagery that passes the filters)"
        )
    return shards


def data_hash(data_dir: Path, shards: list[Path], manifest: dict[str, Any]) -> str:
    """Hash of the train shards: their sha256 from the manifest where it lists them (cheap),
    else from the files themselves."""
    listed = tiles.shard_hashes(manifest)
    pairs = []
    for shard in shards:
        rel = shard.relative_to(data_dir).as_posix()
        pairs.append([rel, listed.get(rel) or sha256_file(shard)])
    return sha256_json(pairs)


def build_index(shards: list[Path], root: Path, verify: str = "size") -> TileIndex:
    """Read the tar headers (not the images) of every shard, each checked against the
    manifest first (canopy/tiles.py verified_tiles, `verify` size or sha256); the tile size
    is the manifest's."""
    manifest = read_manifest(root)
    locations = tiles.verified_tiles(root, "train", manifest, verify)
    _refuse_unlisted(shards, {location.shard for location in locations}, root)
    if not locations:
        raise UserError(
            f"the train shards under {root / 'train'} hold no .png tiles: re-run `canopy etl`"
        )
    return TileIndex(tuple(locations), manifest["tile_size"])


def _refuse_unlisted(on_disk: list[Path], listed: set[Path], root: Path) -> None:
    # A shard the manifest does not list was not written by the etl run it describes.
    extra = [shard for shard in on_disk if shard not in listed]
    if extra:
        raise UserError(f"shard {extra[0]} is not listed in {root / tiles.MANIFEST_FILE}: "
                        "re-run `canopy etl`")


def dihedral(tile: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: k % 4 quarter turns, then a flip if k >= 4.
    k = 7 is the transpose (the flip about the main diagonal). Overhead imagery has no up or
    north, but a scene lit from one side has a light direction that only the identity and the
    transpose keep (train.augment)."""
    out = np.rot90(tile, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


@dataclass(frozen=True)
class CropPlan:
    """Crop training (train.crop_*): batches before `until` are, with probability `fraction`,
    crops of 1/d of the tile side, d from `divisors`; d^2 crops per tile at uniform positions,
    drawn from (seed, batch) for the whole batch (every rank draws the same)."""

    fraction: float
    divisors: tuple[int, ...]
    until: int

    @classmethod
    def from_params(cls, fraction: float, divisors: list[int], full_final: float,
                    steps: int) -> CropPlan | None:
        if fraction <= 0:
            return None
        return cls(fraction, tuple(divisors), steps - round(full_final * steps))

    def draw(self, seed: int, b: int, batch_size: int, size: int) -> tuple[int, np.ndarray | None]:
        """(d, offsets (batch_size, d*d, 2) of the crops' top-left corners) of batch b;
        (1, None) for a batch of whole tiles."""
        if b >= self.until:
            return 1, None
        rng = numpy_rng(seed, Stream.TRAIN_CROP, b)
        if rng.random() >= self.fraction:
            return 1, None
        d = self.divisors[int(rng.integers(len(self.divisors)))]
        side = size // d
        return d, rng.integers(0, size - side + 1, size=(batch_size, d * d, 2))


class BatchStream(torch.utils.data.IterableDataset):
    """Endless uint8 batches (B, 3, H, W) from batch `start` on; see the module docstring.
    A worker never raises: a bad tile yields {"error": message} for the main process.

    `part` = (lo, hi) keeps images lo..hi-1 of each batch (a torchrun rank's contiguous
    slice): the tiles and flips are drawn for the whole batch, as in one process, and only
    the slice is read and decoded."""

    def __init__(
        self, index: TileIndex, batch_size: int, seed: int, augment: str | bool, start: int = 0,
        part: tuple[int, int] | None = None, crop: CropPlan | None = None,
    ) -> None:
        super().__init__()
        self.crop = crop
        self.index = index
        self.batch_size = batch_size
        self.part = part or (0, batch_size)
        self.seed = seed
        self.augment = {True: "all", False: "none"}.get(augment, augment)  # type: ignore[arg-type]
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {augment!r}: use one of {', '.join(AUGMENTS)}")
        self.start = start
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.start + worker
        while True:
            try:
                item = {"batch": b, "images": self.batch(b)}
                if self.index.conditions is not None:
                    item["conditions"] = self.batch_conditions(b)
                yield item
            except UserError as err:
                yield {"batch": b, "error": str(err)}
                return
            b += workers

    def tile_ids(self, b: int) -> np.ndarray:
        n = len(self.index)
        positions = np.arange(b * self.batch_size, (b + 1) * self.batch_size, dtype=np.int64)
        ids = np.empty_like(positions)
        for j, pos in enumerate(positions):
            epoch, within = divmod(int(pos), n)
            ids[j] = self._permutation(epoch)[within]
        return ids

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = numpy_rng(self.seed, Stream.TRAIN_ORDER, epoch)
            self._perm = rng.permutation(len(self.index))
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch(self, b: int) -> torch.Tensor:
        ids = self.tile_ids(b)
        if self.augment == "all":
            ks = numpy_rng(self.seed, Stream.TRAIN_AUGMENT, b).integers(0, 8, len(ids))
        elif self.augment == "transpose":  # identity or transpose, one coin per tile
            ks = TRANSPOSE * numpy_rng(self.seed, Stream.TRAIN_AUGMENT, b).integers(0, 2, len(ids))
        else:
            ks = np.zeros(len(ids), dtype=np.int64)
        size = self.index.tile_size
        d, offsets = (1, None) if self.crop is None else self.crop.draw(
            self.seed, b, self.batch_size, size)
        lo, hi = self.part
        ids, ks = ids[lo:hi], ks[lo:hi]
        if offsets is not None:
            return self._crops(ids, ks, offsets[lo:hi], size // d)
        out = np.empty((len(ids), size, size, 3), dtype=np.uint8)
        for j, (i, k) in enumerate(zip(ids, ks)):
            out[j] = dihedral(tiles.read_tile(self.index.locations[i], size), int(k))
        return torch.from_numpy(out).permute(0, 3, 1, 2)  # a channels_last view, no copy

    def batch_conditions(self, b: int) -> torch.Tensor:
        """The condition rows of batch b's images (each crop its tile's), float32."""
        assert self.index.conditions is not None
        lo, hi = self.part
        rows = self.index.conditions[self.tile_ids(b)[lo:hi]]
        if self.crop is not None:
            d, _ = self.crop.draw(self.seed, b, self.batch_size, self.index.tile_size)
            rows = np.repeat(rows, d * d, axis=0)
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    def _crops(self, ids: np.ndarray, ks: np.ndarray, offsets: np.ndarray, side: int) -> torch.Tensor:
        """The crops of each tile (after its flip), tile by tile: (len(ids) * d^2, 3, side, side)."""
        size = self.index.tile_size
        per = offsets.shape[1]
        out = np.empty((len(ids) * per, side, side, 3), dtype=np.uint8)
        for j, (i, k) in enumerate(zip(ids, ks)):
            tile = dihedral(tiles.read_tile(self.index.locations[i], size), int(k))
            for c, (y, x) in enumerate(offsets[j]):
                out[j * per + c] = tile[y:y + side, x:x + side]
        return torch.from_numpy(out).permute(0, 3, 1, 2)


def make_loader(
    stream: BatchStream, num_workers: int, pin_memory: bool, worker_init_fn=None
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,  # the stream makes whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn if num_workers else None,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
    )


def to_model_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [-1, 1] on the device (moved as uint8: 4x fewer bytes)."""
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)
