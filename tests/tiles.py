"""Write etl-style tile folders (SPEC.md "data/tiles/") for the train and evaluate tests.

Stages talk through files, so their tests build the files from the documented format instead of
calling the etl stage.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiles(root: Path, train: np.ndarray, val: np.ndarray, shard_size: int = 1000) -> Path:
    """manifest.json and train/, val/ tar shards of `<key>.png` + `<key>.json` for (N, H, W, 3)
    uint8 arrays; keys are `test_<split>_<index>`."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for split, images in (("train", train), ("val", val)):
        (root / split).mkdir(exist_ok=True)
        for number, first in enumerate(range(0, len(images), shard_size)):
            name = f"{split}/shard-{number:06d}.tar"
            with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for i in range(first, min(first + shard_size, len(images))):
                    key = f"test_{split}_{i:04d}"
                    _add(tar, f"{key}.png", png_bytes(images[i]))
                    _add(tar, f"{key}.json", json.dumps({"source": "test", "key": key}).encode())
            shards.append({"split": split, "file": name,
                           "tiles": min(shard_size, len(images) - first),
                           "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()})
    manifest = {"format_version": 1, "tile_size": int(train.shape[1]),
                "counts": {"train": len(train), "val": len(val)}, "shards": shards,
                "params_hash": "test"}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
