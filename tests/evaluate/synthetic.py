"""Small synthetic forest-like images, and the folders evaluate reads (docs/contract.md) written
with the formats' own writers.

`forest_images` draws canopy-like textures (a green base colour per image, blobs of crowns at
two scales and pixel noise); `degrade` applies the shifts a bad model would show (blur, noise,
a colour cast), so tests can check that metrics order them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from canopy import samples
from tests.tiles import write_tiles  # noqa: F401 (re-exported for the tests)


def _field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in about -1..1: random values on a cells x cells grid, bicubic up."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def forest_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        base = np.array([55.0, 105.0, 45.0]) + rng.normal(0, 12, 3)
        crowns = (25 * _field(rng, size, max(2, size // 4))
                  + 10 * _field(rng, size, max(2, size // 2)))
        shade = np.array([0.7, 1.0, 0.6])
        pixel = rng.normal(0, 4, (size, size, 3))
        out[i] = np.clip(base + crowns[..., None] * shade + pixel, 0, 255).astype(np.uint8)
    return out


def degrade(images: np.ndarray, blur: float = 0.0, noise: float = 0.0,
            tint: tuple[float, float, float] = (0.0, 0.0, 0.0), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        x = Image.fromarray(image)
        if blur:
            x = x.filter(ImageFilter.GaussianBlur(blur))
        a = np.asarray(x).astype(np.float64) + np.asarray(tint)
        if noise:
            a = a + rng.normal(0, noise, a.shape)
        out.append(np.clip(np.round(a), 0, 255).astype(np.uint8))
    return np.stack(out)


def write_samples(folder: Path, images: np.ndarray) -> Path:
    """A samples folder as `canopy sample` writes it; the settings it records are placeholders."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [samples.write_image(folder, i, image) for i, image in enumerate(images)]
    samples.write_grid(folder, len(records))
    samples.write_manifest(folder, samples.SamplesManifest(
        n=len(records), seed=0, sampler="test", steps=1, eta=0.0, timestep_spacing="test",
        weights="ema", checkpoint=samples.CheckpointRecord("test.safetensors", "", None),
        tile_size=int(images.shape[1]), device="cpu", precision="fp32", channels_last=False,
        images=records))
    return folder
