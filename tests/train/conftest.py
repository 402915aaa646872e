"""Tiny etl outputs (docs/contract.md, data/tiles/), written with the tiles writer so the train
tests need no etl run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from canopy.params import CanopyParams, parse_params
from tests.tiles import png_bytes  # noqa: F401 (used by test_data)
from tests.tiles import write_tiles as shared_write_tiles


def tile_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth green-ish pattern: a few random blobs, like canopy seen from above."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform([0.05, 0.3, 0.05], [0.3, 0.8, 0.3])
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_tiles(
    root: Path, n_train: int = 12, n_val: int = 4, size: int = 16, shard_size: int = 5, seed: int = 0,
    stats: bool = True,
) -> Path:
    """data/tiles/ with manifest.json and train/val tar shards of `<key>.png` + `<key>.json`."""
    rng = np.random.default_rng(seed)
    train = np.stack([tile_image(rng, size) for _ in range(n_train)])
    val = np.stack([tile_image(rng, size) for _ in range(n_val)]) if n_val else train[:0]
    return shared_write_tiles(root, train, val, shard_size, stats=stats)


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    return write_tiles(tmp_path / "tiles")


def tiny_params(tiles: Path, out: Path, diffusion: dict | None = None, sample: dict | None = None,
                model: dict | None = None, **train: Any) -> CanopyParams:
    """A network of about 20 k parameters on 16 px tiles: CPU steps of a few ms."""
    raw = {
        "seed": 0,
        "schedule": "linear",
        "etl": {"tile_size": 16, "stride": 16},
        "model": {"dim": 8, "dim_mults": [1, 2], **(model or {})},
        "diffusion": {"timesteps": 100, **(diffusion or {})},
        **({"sample": sample} if sample else {}),
        "train": {
            "steps": 8, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "ema_warmup_steps": 2,
            "checkpoint_every": 4, "log_every": 2, "sample_every": 4, "preview_images": 4,
            "preview_steps": 3, "device": "cpu", "precision": "fp32", "num_workers": 0, **train,
        },
        "paths": {"tiles": str(tiles), "models": str(out)},
    }
    return parse_params(raw)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny shapes: one torch thread (see tests/conftest.py)."""
