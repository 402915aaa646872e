"""Tile folders (docs/contract.md, data/tiles/) for the train and evaluate tests.

Stages talk through files, so their tests write the files with the format's own writer
(canopy/tiles.py) instead of running the etl stage.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from canopy import tiles
from canopy.conditions import tile_values


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiles(root: Path, train: np.ndarray, val: np.ndarray, shard_size: int = 1000,
                stats: bool = True, metadata: dict[str, list[dict]] | None = None) -> Path:
    """manifest.json and train/, val/ tar shards of `<key>.png` + `<key>.json` for (N, H, W, 3)
    uint8 arrays; keys are `test_<split>_<index>`. `stats`: the train tiles' channel stats in
    the manifest, as etl writes them (False: a manifest of before etl measured them).
    `metadata`: per split, more keys for each tile's .json (e.g. its region)."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    measured = tiles.TrainStats()  # of the train tiles, each region's too, as etl measures
    for split, images in (("train", train), ("val", val)):
        writer = tiles.ShardWriter(root, split, shard_size)
        extra = (metadata or {}).get(split) or [{}] * len(images)
        for i, image in enumerate(images):
            key = f"test_{split}_{i:04d}"
            written = {"source": "test", "key": key, **extra[i]}
            writer.add(key, png_bytes(image), written)
            if split == "train":
                measured.add(image, tile_values(written)["region"])
        shards += writer.close()
    tile_size = int(train.shape[1])
    tiles.write_manifest(root, tile_size=tile_size, stride=tile_size, shards=shards,
                         synthetic=False, filters={}, sources=[], params_hash="test",
                         train_stats=measured.to_json() if stats else None)
    return root
