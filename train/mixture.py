"""The spectral skip's mixture (diffusion.skip_components): the train tiles grouped into kinds
(flat water, bare soil, open or closed canopy, ...) and each kind's mean colour and power
spectrum measured, so the skip can be the posterior mean under a mixture of stationary
Gaussians (model/spectral.py MixtureSpectralSkip) instead of one Gaussian of all tiles.

The kinds are k-means clusters of what tells them apart in the skip's own terms: each tile's
mean colour and its log power in octave bands of spatial frequency per channel, all in the
standardised units and each feature scaled to unit variance. Each cluster's stats are
measured exactly as etl measures all tiles' (canopy/tiles.py ChannelStats), so a component is
recorded like a region's stats of a conditioned model: {"mean", "std", "spectrum"} in [-1, 1]
units, with its weight, the share of tiles in it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from canopy import tiles as tiles_io
from canopy.seeding import Stream, numpy_rng
from canopy.tiles import ChannelStats
from canopy.train.data import TileIndex

# at most this many train tiles are read to fit the mixture, evenly spaced through the index
MAX_FIT_TILES = 8192
# a cluster with fewer tiles has no spectrum worth the name: its tiles join the others
MIN_COMPONENT_TILES = 8
LLOYD_ITERATIONS = 100
# octave bands of radius, in cycles per tile (the last reaches the corner of the grid)
OCTAVES = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256))


def with_skip_mixture(stats: dict[str, Any] | None, index: TileIndex, components: int,
                      seed: int, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The train tiles' `stats` with the skip's mixture of `components` kinds fitted to them
    ("skip_mixture"), as process_config reads it; `stats` as they are for one component (or
    none, as in manifests written before etl measured them)."""
    if components <= 1 or stats is None:
        return stats
    return {**stats, "skip_mixture": fit_to_train_tiles(index, stats, components, seed, say)}


def fit_to_train_tiles(index: TileIndex, stats: dict[str, Any], components: int, seed: int,
                       say: Callable[[str], None]) -> dict[str, Any]:
    """fit_skip_mixture on the train tiles of `index` (at most MAX_FIT_TILES, evenly spaced),
    standardised with their `stats`; as many kinds as they fit, up to `components`. A
    function of the tiles and the seed alone, so a resumed run rebuilds the same process."""
    step = -(-len(index) // MAX_FIT_TILES)
    chosen = index.locations[::step]
    k = min(components, max_components(len(chosen)))
    if k < components:
        say(f"diffusion.skip_components {components}: {len(chosen)} train tiles fit at most "
            f"{k} kinds of tile ({MIN_COMPONENT_TILES} tiles each); fitting {k}")
    say(f"fitting the skip's mixture of {k} kinds of tile to {len(chosen)} train tiles")
    images = np.stack(list(tiles_io.read_tiles(chosen, index.tile_size)))
    return fit_skip_mixture(images, stats["mean"], stats["std"], k, seed)


def fit_skip_mixture(tiles: np.ndarray, mean: Sequence[float], std: Sequence[float],
                     components: int, seed: int) -> dict[str, Any]:
    """{"weights": [...], "components": [{"mean", "std", "spectrum"}, ...]} of `components`
    clusters of `tiles` (N, H, W, 3 uint8, square), standardised with the train tiles' `mean`
    and `std` ([-1, 1] units) for the clustering. The same tiles and seed give the same fit."""
    if components > max_components(len(tiles)):
        raise ValueError(f"{components} kinds of tile need at least "
                         f"{components * MIN_COMPONENT_TILES} train tiles "
                         f"({MIN_COMPONENT_TILES} per kind), there are {len(tiles)}")
    labels = _kmeans(tile_features(tiles, mean, std), components, seed)
    weights, entries = [], []
    for k in range(components):
        members = tiles[labels == k]
        if len(members) < MIN_COMPONENT_TILES:
            continue
        stats = ChannelStats(tile_means=False)
        for tile in members:
            stats.add(tile)
        measured = stats.to_json()
        if measured is None or "spectrum" not in measured:
            continue  # a cluster of one flat colour: no power to filter by
        weights.append(len(members))
        entries.append({key: measured[key] for key in ("mean", "std", "spectrum")})
    if not entries:
        raise ValueError("no cluster of the train tiles has a spectrum: use "
                         "diffusion.skip_components 1")
    return {"weights": weights, "components": entries}


def max_components(tiles: int) -> int:
    """The most kinds `tiles` train tiles can fit, MIN_COMPONENT_TILES each (at least one)."""
    return max(1, tiles // MIN_COMPONENT_TILES)


def tile_features(tiles: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(N, 3 + 3 x bands): each standardised tile's mean colour and log mean power per
    channel in each octave band its grid reaches, every feature scaled to unit variance."""
    n = tiles.shape[1]
    fy = np.fft.fftfreq(n, d=1 / n).reshape(-1, 1)
    fx = np.fft.rfftfreq(n, d=1 / n).reshape(1, -1)
    radius = np.sqrt(fy**2 + fx**2)
    bands = [(radius >= lo) & (radius < hi) for lo, hi in OCTAVES if lo < n / 2]
    features = []
    for start in range(0, len(tiles), 512):
        chunk = tiles[start:start + 512].astype(np.float32) / 127.5 - 1
        chunk = (chunk - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        planes = chunk.transpose(0, 3, 1, 2)
        power = np.abs(np.fft.rfft2(planes, norm="ortho")) ** 2
        columns = [planes.mean(axis=(2, 3))]
        columns += [np.log(power[..., band].mean(axis=-1) + 1e-6) for band in bands]
        features.append(np.concatenate(columns, axis=1))
    table = np.concatenate(features).astype(np.float64)
    spread = table.std(axis=0)
    return (table - table.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def _kmeans(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each point's cluster: k-means++ seeding (seeded), then Lloyd's iterations."""
    rng = numpy_rng(seed, Stream.TRAIN_SKIP_MIXTURE)
    centres = [points[rng.integers(len(points))]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(k - 1):
        total = nearest.sum()
        pick = rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
        nearest = np.minimum(nearest, ((points - points[pick]) ** 2).sum(axis=1))
    centres = np.stack(centres)
    labels = np.full(len(points), -1)
    for _ in range(LLOYD_ITERATIONS):
        distances = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new = distances.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            if (labels == c).any():
                centres[c] = points[labels == c].mean(axis=0)
    return labels
