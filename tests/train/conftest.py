"""Tiny etl outputs (SPEC.md "data/tiles/"), written here so the train tests need no etl run."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from canopy.params import CanopyParams, parse_params


def tile_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth green-ish pattern: a few random blobs, like canopy seen from above."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform([0.05, 0.3, 0.05], [0.3, 0.8, 0.3])
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tiles(
    root: Path, n_train: int = 12, n_val: int = 4, size: int = 16, shard_size: int = 5, seed: int = 0
) -> Path:
    """data/tiles/ with manifest.json and train/val tar shards of `<key>.png` + `<key>.json`."""
    rng = np.random.default_rng(seed)
    shards: list[dict[str, Any]] = []
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for first in range(0, count, shard_size):
            rel = f"{split}/shard-{len(shards):06d}.tar"
            with tarfile.open(root / rel, "w", format=tarfile.PAX_FORMAT) as tar:
                for i in range(first, min(first + shard_size, count)):
                    key = f"test_{split}_{i:04d}"
                    _add(tar, f"{key}.png", png_bytes(tile_image(rng, size)))
                    _add(tar, f"{key}.json", json.dumps({"source": "test", "key": key}).encode())
            digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
            shards.append({"split": split, "file": rel, "tiles": min(shard_size, count - first),
                           "sha256": digest})
    manifest = {"format_version": 1, "tile_size": size,
                "counts": {"train": n_train, "val": n_val}, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture
def tiles(tmp_path: Path) -> Path:
    return write_tiles(tmp_path / "tiles")


def tiny_params(tiles: Path, out: Path, **train: Any) -> CanopyParams:
    """A network of about 20 k parameters on 16 px tiles: CPU steps of a few ms."""
    raw = {
        "seed": 0,
        "schedule": "linear",
        "etl": {"tile_size": 16, "stride": 16},
        "model": {"dim": 8, "dim_mults": [1, 2]},
        "diffusion": {"timesteps": 100},
        "train": {
            "steps": 8, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "ema_warmup_steps": 2,
            "checkpoint_every": 4, "log_every": 2, "sample_every": 4, "preview_images": 4,
            "preview_steps": 3, "device": "cpu", "precision": "fp32", "num_workers": 0,
            "data": str(tiles), "out": str(out), **train,
        },
    }
    return parse_params(raw)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from 2 threads, and one thread does not spin-wait (OpenMP
    barriers) when other processes hold the cores: steadier test times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
