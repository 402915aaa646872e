"""How many images/s the training data loader delivers alone (no training step consuming them).

The loader is the one `canopy train` builds (train/data.py: tiles read from the tar shards by
byte offset, PNG-decoded, flipped/rotated, batched by the DataLoader's workers). Imports no
pydantic, so bench/gpu_mfu.py can measure it on the GPU machine too, on a shard it writes
itself (`write_png_shard`).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from canopy import tiles
from canopy.train.data import BatchStream, build_index, make_loader, train_shards


def loader_images_per_s(data_dir: Path, batch: int, workers: int, seconds: float,
                        pin_memory: bool = False) -> dict:
    """Images/s over `seconds` after the first batch (worker start-up timed apart)."""
    index = build_index(train_shards(data_dir), data_dir)
    stream = BatchStream(index, batch, seed=0, augment=True)
    start = time.perf_counter()
    batches = iter(make_loader(stream, workers, pin_memory))
    first = next(batches)
    startup = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    while True:
        item = next(batches)
        if "error" in item:
            raise RuntimeError(item["error"])
        images += len(item["images"])
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and images >= 2 * batch:
            break
    del first, batches  # shuts the workers down
    return {"workers": workers, "batch": batch, "tile_size": index.tile_size, "tiles": len(index),
            "images_per_s": images / elapsed, "startup_s": startup, "images": images}


def write_png_shard(data_dir: Path, n: int, size: int, seed: int = 0) -> Path:
    """data_dir/train/shard-000000.tar of n smooth RGB PNG tiles (zlib level 1, as etl writes
    them) and its manifest, written by the tiles format's own writer: what the loader reads."""
    rng = np.random.default_rng(seed)
    writer = tiles.ShardWriter(data_dir, "train", shard_size=n)
    for i in range(n):
        writer.add(f"bench_{i:06d}", _png_bytes(_canopy_like_tile(rng, size)), {"key": i})
    shards = writer.close()
    tiles.write_manifest(data_dir, tile_size=size, stride=size, shards=shards, synthetic=True,
                         filters={}, sources=[], params_hash="")
    return data_dir / shards[0].file


def _canopy_like_tile(rng: np.random.Generator, size: int) -> np.ndarray:
    """Green blobs plus fine noise: compresses and decodes about like a forest tile."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1, 3) * (1, 1, 0.25) + (0, 0, 0.05)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform([0.05, 0.3, 0.05], [0.3, 0.8, 0.3])
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _png_bytes(tile: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(tile).save(out, format="PNG", compress_level=1)
    return out.getvalue()
