"""Memorisation check: how close each generated image is to its nearest training tile.

A diffusion model trained long on few tiles can return (near-)copies of them; FID and SWD do
not see that (a copy of the training set scores as well as it gets). Following the
nearest-neighbour checks of e.g. Carlini et al. 2023, "Extracting Training Data from Diffusion
Models", in plain pixel space:

  1. Both images are box-downscaled to s x s pixels (`memorisation_size`, default 32: the
     mean of each block, so the check looks at layout and colour, not at the pixel noise a
     sampler adds) and scaled to 0..1.
  2. distance(x, y) = sqrt(mean over the s*s*3 values of (x - y)^2): the RMS difference in
     units of the full 0..255 range (0 = identical, 1 = black against white; for scale, a
     uniform change of 5 grey levels is 0.0196).
  3. With `dihedral`, a sample is also compared in its 8 flips and 90-degree rotations
     (training augments with them, so a memorised tile can come back rotated), and the
     distance is the smallest of the 8.
  4. nearest(x) = min over training tiles; a near-copy is nearest(x) < threshold, and the
     metric is the fraction of near-copies among the samples. Default threshold 0.03: on
     128 px tiles, a copy with pixel noise of std 10 grey levels is at 0.010, while distinct
     neighbouring tiles of the team's real rasters (NEON orthophotos, Landsat) were at 0.065
     and more (median 0.18).

Pixel distance is shift-sensitive: a copy moved by 2 px of a 0.1 m orthophoto is at about
0.06, so a model that reproduces a training scene at another offset (possible when
etl.stride < tile_size) is not counted. It finds copies of training tiles, not every kind of
memorisation.

The floor does the same for the held-out val tiles, which are never copies: it shows how close
distinct real tiles come to each other (texture-poor tiles, e.g. uniform canopy, can be close
without being copies; if the floor is not ~0, lower memorisation_threshold).

Plain tiles: an image whose downscaled pixels lie within the threshold (RMS) of its own mean
colour is within the threshold of any flat tile of that colour, so for it the check cannot
tell a copy from a coincidence: a plain patch of bare ground "matches" every plain train tile
of its colour. Such near-copies are counted apart (the ones left carry structure, and are the
copies worth looking at), and the share of plain tiles among the samples, against the val
tiles' share, shows a model that draws plain tiles more often than the real tiles have them.

The search is exact: squared distances come from |x|^2 + |y|^2 - 2 x.y in float32 blocks, and
the distance to the winner is recomputed exactly in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image


def downscale(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, size*size*3) in 0..1, by box (block-mean) filtering.

    Exact block means when size divides H; otherwise PIL's BOX filter (a box with fractional
    edge weights) per channel."""
    n, h, w, c = images.shape
    if h % size == 0 and w % size == 0:
        blocks = images.reshape(n, size, h // size, size, w // size, c)
        small = blocks.mean(axis=(2, 4), dtype=np.float64)
    else:
        small = np.empty((n, size, size, c), dtype=np.float64)
        for i in range(n):
            for ch in range(c):
                channel = Image.fromarray(images[i, :, :, ch].astype(np.float32), mode="F")
                small[i, :, :, ch] = np.asarray(channel.resize((size, size), Image.BOX))
    return (small / 255.0).astype(np.float32).reshape(n, -1)


def dihedral(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and 90-degree rotations of (N, H, W, C) images, identity first."""
    out = []
    for flipped in (images, images[:, :, ::-1]):
        for k in range(4):
            out.append(np.ascontiguousarray(np.rot90(flipped, k, axes=(1, 2))))
    return out


def query_features(images: np.ndarray, size: int, use_dihedral: bool) -> np.ndarray:
    """(T, N, size*size*3): the downscaled images in each of the T = 8 (or 1) transforms.

    Transforms are applied to the full-size images before downscaling, so a transformed copy
    gives exactly the same features as its source tile."""
    variants = dihedral(images) if use_dihedral else [images]
    return np.stack([downscale(v, size) for v in variants])


@dataclass
class NearestNeighbours:
    """Running nearest-train-tile search for a set of queries, fed with blocks of train tiles."""

    queries: np.ndarray  # (T, N, D) float32
    best_sq: np.ndarray | None = None  # (N,) float32 squared distance estimate
    best_index: np.ndarray | None = None  # (N,) index of the nearest reference vector
    best_vector: np.ndarray | None = None  # (N, D) that reference vector
    best_transform: np.ndarray | None = None  # (N,) which transform matched
    seen: int = 0

    def __post_init__(self) -> None:
        t, n, d = self.queries.shape
        self.best_sq = np.full(n, np.inf, dtype=np.float32)
        self.best_index = np.full(n, -1, dtype=np.int64)
        self.best_vector = np.zeros((n, d), dtype=np.float32)
        self.best_transform = np.zeros(n, dtype=np.int64)
        self._query_sq = np.einsum("tnd,tnd->tn", self.queries, self.queries)

    def update(self, reference: np.ndarray) -> None:
        """Feed a block of reference feature vectors (M, D) float32."""
        ref_sq = np.einsum("md,md->m", reference, reference)
        for t, (query, query_sq) in enumerate(zip(self.queries, self._query_sq)):
            sq = query_sq[:, None] + ref_sq[None, :] - 2.0 * (query @ reference.T)
            j = np.argmin(sq, axis=1)
            value = sq[np.arange(len(j)), j]
            better = value < self.best_sq  # ties keep the earlier tile / transform
            self.best_sq[better] = value[better]
            self.best_index[better] = self.seen + j[better]
            self.best_vector[better] = reference[j[better]]
            self.best_transform[better] = t
        self.seen += len(reference)

    def distances(self) -> np.ndarray:
        """The RMS distance to the nearest reference, recomputed exactly (float64)."""
        if self.seen == 0:
            raise ValueError("no reference vectors were fed")
        n = self.queries.shape[1]
        matched = self.queries[self.best_transform, np.arange(n)].astype(np.float64)
        diff = matched - self.best_vector.astype(np.float64)
        return np.sqrt(np.mean(diff**2, axis=1))


def nearest_distances(queries: np.ndarray, reference_blocks: Iterable[np.ndarray],
                      tick: Callable[[int], None] = lambda n: None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """For each query (features from `query_features`), the RMS distance to the nearest
    reference vector and its index, over reference feature blocks (M, D)."""
    search = NearestNeighbours(queries)
    for block in reference_blocks:
        search.update(np.asarray(block, dtype=np.float32))
        tick(len(block))
    return search.distances(), search.best_index.copy()


def memorised_fraction(distances: np.ndarray, threshold: float) -> float:
    """Fraction of images closer than `threshold` to some training tile."""
    return float(np.mean(distances < threshold))


def structure(images: np.ndarray, size: int) -> np.ndarray:
    """Each image's RMS deviation from its own mean colour, box-downscaled to `size` as the
    search compares them (0..1 of the 0..255 range): its distance to the flat tile of its mean
    colour. Below the threshold an image is plain (module docstring)."""
    small = downscale(images, size).reshape(len(images), -1, images.shape[-1]).astype(np.float64)
    return np.sqrt(((small - small.mean(axis=1, keepdims=True)) ** 2).mean(axis=(1, 2)))
