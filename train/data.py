"""Training tiles from the etl shards (SPEC.md "data/tiles/"), as a stream of uint8 batches.

The stream is a pure function of (seed, batch number): batch b holds tiles b*B .. (b+1)*B - 1 of
an endless sequence of epochs, each a seeded permutation of every train tile, with a seeded
flip/rotation per tile. So a resumed run sees exactly the batches it would have seen, and the
number of DataLoader workers changes nothing (worker w makes batches w, w + W, w + 2W...,
which the DataLoader hands out round-robin, in order).

Tiles are read straight from the tar shards by byte offset (an index of the tar headers is
built once), so no shard is unpacked and only the bytes of the needed tiles are read.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from canopy.errors import UserError
from canopy.hashing import sha256_file, sha256_json
from canopy.seeding import Stream, numpy_rng


@dataclass(frozen=True)
class TileIndex:
    """Where each train tile's PNG bytes are: shard file, byte offset, size."""

    shards: tuple[str, ...]
    shard_of: np.ndarray  # int32 per tile
    offset: np.ndarray  # int64 per tile
    size: np.ndarray  # int64 per tile
    keys: tuple[str, ...]
    tile_size: int

    def __len__(self) -> int:
        return len(self.keys)


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise UserError(
            f"{path} not found: run `canopy etl` (or `dvc repro etl`) first, "
            "or point train.data / --data at an etl output folder"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): re-run `canopy etl`") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object; re-run `canopy etl`")
    return manifest


def train_shards(data_dir: Path) -> list[Path]:
    shards = sorted((data_dir / "train").glob("*.tar"))
    if not shards:
        raise UserError(
            f"no train shards (*.tar) in {data_dir / 'train'}: run `canopy etl` first "
            "(with a val_fraction below 1 and imagery that passes the filters)"
        )
    return shards


def data_hash(data_dir: Path, shards: list[Path], manifest: dict[str, Any]) -> str:
    """Hash of the train shards: their sha256 from the manifest where it lists them (cheap),
    else from the files themselves."""
    listed = manifest_shard_hashes(manifest)
    pairs = []
    for shard in shards:
        rel = shard.relative_to(data_dir).as_posix()
        pairs.append([rel, listed.get(rel) or sha256_file(shard)])
    return sha256_json(pairs)


def manifest_shard_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """{"train/<shard>.tar": sha256} for each train shard entry in the manifest, whatever its
    nesting: {"shards": [{"file": "train/shard-000000.tar", "sha256": ...}]},
    {"splits": {"train": {"shards": [{"name": "shard-000000.tar", ...}]}}},
    [{"split": "train", "name": ..., "sha256": ...}] ... An entry whose split cannot be told
    is left out (its file is hashed instead)."""
    found: dict[str, str] = {}

    def walk(node: Any, split: str | None) -> None:
        if isinstance(node, dict):
            split = node.get("split", split) if isinstance(node.get("split"), str) else split
            name = next(
                (node[k] for k in ("file", "path", "name", "filename") if isinstance(node.get(k), str)),
                None,
            )
            digest = node.get("sha256")
            if name and name.endswith(".tar") and isinstance(digest, str):
                parts = name.split("/")
                if len(parts) >= 2 and parts[-2] in ("train", "val"):
                    found[f"{parts[-2]}/{parts[-1]}"] = digest
                elif split in ("train", "val"):
                    found[f"{split}/{parts[-1]}"] = digest
            for key, value in node.items():
                walk(value, key if key in ("train", "val") else split)
        elif isinstance(node, list):
            for value in node:
                walk(value, split)

    walk(manifest, None)
    return {rel: digest for rel, digest in found.items() if rel.startswith("train/")}


def build_index(shards: list[Path], root: Path) -> TileIndex:
    """Read the tar headers (not the images) of every shard."""
    names, shard_of, offsets, sizes, keys = [], [], [], [], []
    seen: dict[str, str] = {}
    for i, shard in enumerate(shards):
        rel = shard.relative_to(root).as_posix()
        names.append(str(shard))
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.endswith(".png"):
                        continue
                    key = member.name[: -len(".png")]
                    if key in seen:
                        raise UserError(
                            f"tile key {key!r} is in both {seen[key]} and {rel}: "
                            "keys must be unique; re-run `canopy etl`"
                        )
                    seen[key] = rel
                    keys.append(key)
                    shard_of.append(i)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
        except (tarfile.TarError, OSError) as err:
            raise UserError(
                f"{shard} is not a readable tar shard ({err}): re-run `canopy etl`"
            ) from None
    if not keys:
        raise UserError(
            f"the train shards under {root / 'train'} hold no .png tiles: re-run `canopy etl`"
        )
    first = _read_bytes(names[shard_of[0]], offsets[0], sizes[0])
    tile_size = _decode(first, None, f"{keys[0]} in {names[shard_of[0]]}").shape[0]
    return TileIndex(
        shards=tuple(names),
        shard_of=np.asarray(shard_of, dtype=np.int32),
        offset=np.asarray(offsets, dtype=np.int64),
        size=np.asarray(sizes, dtype=np.int64),
        keys=tuple(keys),
        tile_size=tile_size,
    )


def _read_bytes(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _decode(data: bytes, tile_size: int | None, where: str) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8. Raises UserError for anything but an RGB square tile."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode != "RGB":
                raise UserError(f"tile {where} is {img.mode}, not 8-bit RGB: re-run `canopy etl`")
            array = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"tile {where} is not a readable PNG ({err}): re-run `canopy etl`") from None
    h, w = array.shape[:2]
    if h != w or (tile_size is not None and h != tile_size):
        want = f"{tile_size}x{tile_size}" if tile_size else "square"
        raise UserError(f"tile {where} is {w}x{h}, expected {want}: re-run `canopy etl`")
    return array


def dihedral(tile: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: k % 4 quarter turns, then a flip if k >= 4.
    Overhead imagery has no up or north, so all 8 are equally plausible tiles."""
    out = np.rot90(tile, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


class BatchStream(torch.utils.data.IterableDataset):
    """Endless uint8 batches (B, 3, H, W) from batch `start` on; see the module docstring.
    A worker never raises: a bad tile yields {"error": message} for the main process."""

    def __init__(
        self, index: TileIndex, batch_size: int, seed: int, augment: bool, start: int = 0
    ) -> None:
        super().__init__()
        self.index = index
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.start = start
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.start + worker
        while True:
            try:
                yield {"batch": b, "images": self.batch(b)}
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
        if self.augment:
            ks = numpy_rng(self.seed, Stream.TRAIN_AUGMENT, b).integers(0, 8, len(ids))
        else:
            ks = np.zeros(len(ids), dtype=np.int64)
        size = self.index.tile_size
        out = np.empty((len(ids), size, size, 3), dtype=np.uint8)
        for j, (i, k) in enumerate(zip(ids, ks)):
            shard = self.index.shards[self.index.shard_of[i]]
            data = _read_bytes(shard, int(self.index.offset[i]), int(self.index.size[i]))
            tile = _decode(data, size, f"{self.index.keys[i]} in {shard}")
            out[j] = dihedral(tile, int(k))
        return torch.from_numpy(out).permute(0, 3, 1, 2)  # a channels_last view, no copy


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
