"""Obvious fakes made from real tiles, which every metric must catch: blurred, noised and
patch-shuffled copies. numpy and PIL only, so bench/bench_metrics.py can use them anywhere."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def blurred(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur of standard deviation `sigma` px (PIL's GaussianBlur radius is sigma)."""
    return np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)))
                     for x in images])


def noised(images: np.ndarray, std: float = 8.0, seed: int = 0) -> np.ndarray:
    """Gaussian pixel noise of `std` grey levels, rounded and clipped to 8 bits."""
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float64) + rng.normal(0.0, std, images.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def patch_shuffled(images: np.ndarray, grid: int = 4, seed: int = 0) -> np.ndarray:
    """Each image cut into grid x grid square patches, put back in a random order: colours and
    texture stay real, the layout (crowns cut at patch edges) does not."""
    rng = np.random.default_rng(seed)
    n, h, w, c = images.shape
    ph, pw = h // grid, w // grid
    out = images.copy()
    for i in range(n):
        patches = (images[i, :ph * grid, :pw * grid]
                   .reshape(grid, ph, grid, pw, c).transpose(0, 2, 1, 3, 4).reshape(-1, ph, pw, c))
        patches = patches[rng.permutation(len(patches))]
        out[i, :ph * grid, :pw * grid] = (patches.reshape(grid, grid, ph, pw, c)
                                          .transpose(0, 2, 1, 3, 4).reshape(ph * grid, pw * grid, c))
    return out


FAKES = {"blur 1": blurred, "noise 8": noised, "patch shuffle": patch_shuffled}
