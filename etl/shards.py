"""WebDataset-style tar shards, the train/val split and the manifest (format: SPEC.md).

Everything here is deterministic: tar headers carry fixed owners, modes and times, and the
split is a pure function of the tile key, so the same tiles give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from canopy.hashing import canonical_json, sha256_file

SPLITS = ("train", "val")
FORMAT_VERSION = 1


def split_of(key: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of keys: adding imagery never moves a tile."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


def tile_json(metadata: dict) -> bytes:
    return (canonical_json(metadata) + "\n").encode("utf-8")


@dataclass
class ShardInfo:
    split: str
    file: str  # relative to the tiles folder
    tiles: int = 0
    sha256: str = ""


@dataclass
class ShardWriter:
    """Append tiles to `<root>/<split>/shard-NNNNNN.tar`, `shard_size` tiles per shard."""

    root: Path
    split: str
    shard_size: int
    shards: list[ShardInfo] = field(default_factory=list)
    _tar: tarfile.TarFile | None = None

    def add(self, key: str, png: bytes, metadata: dict) -> TileLocation:
        """Write one tile; return where its PNG bytes are."""
        if self._tar is None or self.shards[-1].tiles >= self.shard_size:
            self._open_next()
        offset = _add_member(self._tar, f"{key}.png", png)
        _add_member(self._tar, f"{key}.json", tile_json(metadata))
        self.shards[-1].tiles += 1
        return TileLocation(self.shards[-1].file, offset, len(png))

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.split}/shard-{len(self.shards):06d}.tar"
        (self.root / self.split).mkdir(parents=True, exist_ok=True)
        self.shards.append(ShardInfo(self.split, name))
        self._tar = tarfile.open(self.root / name, "w", format=tarfile.PAX_FORMAT)

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            self.shards[-1].sha256 = sha256_file(self.root / self.shards[-1].file)

    def close(self) -> list[ShardInfo]:
        self._close_current()
        return self.shards


@dataclass(frozen=True)
class TileLocation:
    """Where a member's bytes are inside a shard, to read it back without scanning the tar."""

    shard: str  # relative to the tiles folder
    offset: int
    size: int

    def read(self, root: Path) -> bytes:
        with open(root / self.shard, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member with normalised header fields; return the offset of its data."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return tar.offset - padded


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
