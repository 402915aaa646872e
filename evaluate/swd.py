"""Sliced Wasserstein distance (SWD) between two image sets, on Laplacian-pyramid patches.

Karras, Aila, Laine, Lehtinen 2018, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation" (ICLR), section 5 and appendix D; reference code:
`metrics/sliced_wasserstein.py` of tkarras/progressive_growing_of_gans. It needs no pretrained
network, and it sees both fine texture (the finest level) and colour and layout (the coarsest).

For each image set:
  1. Laplacian pyramid: level 0 is the image (values 0..255), each next level is the image
     blurred with the 5x5 binomial filter [1 4 6 4 1]^T [1 4 6 4 1] / 256 and subsampled by
     2 (cv2.pyrDown); every level but the coarsest keeps only the detail it adds,
     L_k = G_k - pyrUp(G_{k+1}). Levels go from the tile size down to `min_resolution`
     (128 px -> 128, 64, 32, 16: the paper's "16 px" coarsest level).
  2. Descriptors: from each image and level, `patches_per_image` random 7x7x3 neighbourhoods
     (centres drawn uniformly where the patch fits) flattened to 147-vectors.
  3. Normalisation: per level and colour channel, subtract the mean and divide by the standard
     deviation. ONE DEVIATION from the reference, on purpose: the reference normalises each
     set by its own statistics, which makes SWD blind to a global colour or contrast shift;
     here both sets are normalised by the statistics of the reference (real) set. That is
     still scale-free, catches a wrong tint, and, since the samples and the floor are both
     compared with the same val set, both rows share one normalisation.
  4. SWD per level: for `repeats` x `projections` random unit directions theta (the same for
     both sets), project every descriptor, and take the 1-D Wasserstein-1 distance between
     the two projected distributions, W1 = integral_0^1 |F_A^-1(t) - F_B^-1(t)| dt (sorted
     projections; with equal counts that is mean |sort(A.theta) - sort(B.theta)|, the
     reference's formula; unequal counts use the exact quantile functions). Average over the
     directions and repeats.
  5. Report: each level x 1e3 (as the paper's tables do), and `swd` = the mean over levels
     of those x1e3 values. Lower is better; 0 for identical sets. Units: standard deviations
     of the real set's patch values, x1e3.

Everything random comes from numpy Generators the caller passes in, so results are
deterministic given the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from canopy.seeding import Stream, numpy_rng

# The binomial filter of cv2.pyrDown / pyrUp, separable: outer(_BINOMIAL, _BINOMIAL) / 256.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def pyramid_resolutions(size: int, min_resolution: int = 16) -> list[int]:
    """Sizes of the pyramid levels: `size` halved while it stays >= min_resolution.

    A tile smaller than min_resolution still gets one level (the image itself)."""
    sizes = [size]
    while (size + 1) // 2 >= min_resolution:
        size = (size + 1) // 2
        sizes.append(size)
    return sizes


def _blur(x: np.ndarray) -> np.ndarray:
    """5x5 binomial blur of (N, C, H, W), borders mirrored without repeating the edge pixel
    (cv2 BORDER_REFLECT_101, scipy.ndimage mode='mirror', as the reference)."""
    for axis in (2, 3):
        n = x.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        if n < 3:
            padded = np.pad(x, pad, mode="edge")  # too small to mirror: a 1 or 2 px level
        else:
            padded = np.pad(x, pad, mode="reflect")
        out = np.zeros_like(x)
        for k, weight in enumerate(_BINOMIAL):
            window = [slice(None)] * 4
            window[axis] = slice(k, k + n)
            out += weight * padded[tuple(window)]
        x = out
    return x


def pyr_down(x: np.ndarray) -> np.ndarray:
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Upsample by 2 (zeros between the pixels, then the blur x4), cropped to `shape`."""
    n, c, h, w = x.shape
    up = np.zeros((n, c, h * 2, w * 2), dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    return (_blur(up) * 4.0)[:, :, : shape[0], : shape[1]]


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """uint8 (N, H, W, 3) -> `levels` float32 arrays (N, 3, h, w), finest first."""
    gauss = [np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)]
    for _ in range(1, levels):
        gauss.append(pyr_down(gauss[-1]))
    pyramid = [g - pyr_up(gauss[k + 1], g.shape[2:]) for k, g in enumerate(gauss[:-1])]
    pyramid.append(gauss[-1])
    return pyramid


def patch_descriptors(level: np.ndarray, patch_size: int, per_image: int,
                      rng: np.random.Generator) -> np.ndarray:
    """`per_image` random p x p x C neighbourhoods of each image -> (N * per_image, C, p, p)."""
    n, c, h, w = level.shape
    half = patch_size // 2
    if h < patch_size or w < patch_size:
        raise ValueError(f"a {h}x{w} pyramid level is smaller than a {patch_size}px patch")
    count = n * per_image
    image = np.repeat(np.arange(n), per_image)[:, None, None, None]
    ys = rng.integers(half, h - half, size=count)[:, None, None, None]
    xs = rng.integers(half, w - half, size=count)[:, None, None, None]
    offsets = np.arange(-half, half + 1)
    chan = np.arange(c)[None, :, None, None]
    y = ys + offsets[None, None, :, None]
    x = xs + offsets[None, None, None, :]
    return level[image, chan, y, x]


@dataclass(frozen=True)
class SwdConfig:
    patch_size: int = 7
    patches_per_image: int = 128
    projections: int = 128
    repeats: int = 4
    min_resolution: int = 16


def pyramid_level(images: np.ndarray, level: int, levels: int) -> np.ndarray:
    """Level `level` (0 = finest) of the `levels`-level Laplacian pyramid of uint8 images
    (N, H, W, 3), as float32 (N, 3, h, w): G_k - pyrUp(G_{k+1}), or G_k for the coarsest."""
    gauss = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    for _ in range(level):
        gauss = pyr_down(gauss)
    if level == levels - 1:
        return gauss
    return gauss - pyr_up(pyr_down(gauss), gauss.shape[2:])


def level_descriptors(images: np.ndarray, level: int, config: SwdConfig,
                      rng: np.random.Generator, batch_size: int = 64,
                      tick: Callable[[int], None] = lambda n: None) -> np.ndarray:
    """Raw (not yet normalised) patch descriptors of pyramid level `level` of uint8 images
    (N, H, W, 3): float32 (N * patches_per_image, 3, p, p), images in order."""
    levels = len(pyramid_resolutions(images.shape[1], config.min_resolution))
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        band = pyramid_level(batch, level, levels)
        parts.append(patch_descriptors(band, config.patch_size, config.patches_per_image, rng))
        tick(len(batch))
    return np.concatenate(parts)


def channel_stats(desc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel over patches and positions (float64)."""
    mean = desc.mean(axis=(0, 2, 3), dtype=np.float64)
    std = desc.std(axis=(0, 2, 3), dtype=np.float64)
    return mean, np.where(std > 0, std, 1.0)


def normalise(desc: np.ndarray, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, C, p, p) -> (n, C*p*p) float32, each channel standardised with `stats`."""
    mean, std = stats
    shape = (1, -1, 1, 1)
    out = (desc - mean.reshape(shape).astype(np.float32)) / std.reshape(shape).astype(np.float32)
    return out.reshape(len(desc), -1)


def random_directions(dim: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` uniformly random unit vectors in R^dim, as columns (dim, count), float32."""
    dirs = rng.standard_normal((dim, count))
    dirs /= np.sqrt(np.sum(dirs**2, axis=0, keepdims=True))
    return dirs.astype(np.float32)


def wasserstein_1d(a_sorted: np.ndarray, b_sorted: np.ndarray) -> np.ndarray:
    """W1 between empirical distributions, per column: (n, k) and (m, k) sorted -> (k,).

    W1 = integral over t in (0, 1] of |qa(t) - qb(t)|, with the quantile function
    qa(t) = a[ceil(t n) - 1]. Both are constant between the breakpoints i/n and j/m, so the
    integral is an exact weighted sum over the merged breakpoints (equal counts: the mean of
    |a_i - b_i|, the reference's formula)."""
    n, m = len(a_sorted), len(b_sorted)
    if n == m:
        return np.mean(np.abs(a_sorted.astype(np.float64) - b_sorted), axis=0)
    # Breakpoints in units of 1 / (n m): multiples of m (a's steps) and of n (b's steps).
    cuts = np.union1d(np.arange(1, n + 1) * m, np.arange(1, m + 1) * n)
    lower = np.concatenate([[0], cuts[:-1]])
    weights = (cuts - lower) / (n * m)
    ia = lower // m  # on (lower, cut]: ceil(t n) - 1 = floor(lower / m)
    ib = lower // n
    return weights @ np.abs(a_sorted[ia].astype(np.float64) - b_sorted[ib])


def swd_level(fakes: Sequence[np.ndarray], real: np.ndarray, config: SwdConfig,
              rng: np.random.Generator) -> list[float]:
    """SWD (x1) of one pyramid level between each raw descriptor set in `fakes` and `real`.

    Both are normalised with the real set's per-channel statistics; every fake set is
    projected on the same random directions as the real set."""
    stats = channel_stats(real)
    real_n = normalise(real, stats)
    fakes_n = [normalise(f, stats) for f in fakes]
    totals = [[] for _ in fakes]
    for _ in range(config.repeats):
        dirs = random_directions(real_n.shape[1], config.projections, rng)
        real_sorted = np.sort(real_n @ dirs, axis=0)
        for total, fake_n in zip(totals, fakes_n):
            total.append(np.mean(wasserstein_1d(np.sort(fake_n @ dirs, axis=0), real_sorted)))
    return [float(np.mean(total)) for total in totals]


def swd(fakes: Sequence[np.ndarray], real: np.ndarray, config: SwdConfig = SwdConfig(),
        seed: int = 0, tick: Callable[[int], None] = lambda n: None,
        resamples: Sequence[dict[str, np.ndarray]] = ()) -> SwdResult:
    """SWD x 1e3 per pyramid level (keyed by its resolution) of each uint8 (N, H, W, 3) set in
    `fakes` against `real`. The real set's patches and the directions are drawn once and
    shared by every fake set; set i's patches use their own seeded stream.

    `resamples`: bootstrap draws of image indices, keys "real" and "fake0", "fake1", ...;
    for each, the mean-over-levels SWD of every fake set is recomputed on a thinned estimator
    (BOOTSTRAP_PATCHES patches per image, BOOTSTRAP_DIRECTIONS directions: resorting the full
    one hundreds of times would cost minutes), shifted by the full estimate minus the thinned
    one on the original sets, so the replicates spread around the reported value."""
    size = real.shape[1]
    if any(f.shape[1:] != real.shape[1:] for f in fakes):
        raise ValueError("every image set must have the real set's image shape")
    if size < config.patch_size:
        raise ValueError(f"{size}px images are smaller than a {config.patch_size}px patch")
    results: list[dict[int, float]] = [{} for _ in fakes]
    boot = np.zeros((len(fakes), len(resamples)))
    thin_estimate = np.zeros(len(fakes))
    resolutions = pyramid_resolutions(size, config.min_resolution)

    def patches(images: np.ndarray, role: int, level: int) -> np.ndarray:
        rng = numpy_rng(seed, Stream.SWD_PATCHES, role, level)
        return level_descriptors(images, level, config, rng, tick=tick)

    for level, res in enumerate(resolutions):
        real_desc = patches(real, 0, level)
        fake_desc = [patches(f, i + 1, level) for i, f in enumerate(fakes)]
        dirs_rng = numpy_rng(seed, Stream.SWD_DIRECTIONS, level)
        for result, value in zip(results, swd_level(fake_desc, real_desc, config, dirs_rng)):
            result[res] = 1e3 * value
        if resamples:
            thin = _thin_projections([real_desc, *fake_desc], config,
                                     numpy_rng(seed, Stream.SWD_DIRECTIONS, 1000 + level))
            full = {"real": np.arange(len(real)),
                    **{f"fake{i}": np.arange(len(f)) for i, f in enumerate(fakes)}}
            thin_estimate += 1e3 * _thin_swd(thin, full) / len(resolutions)
            for r, pick in enumerate(resamples):
                boot[:, r] += 1e3 * _thin_swd(thin, pick) / len(resolutions)
    means = np.array([mean_over_levels(result) for result in results])
    return SwdResult(results, boot + (means - thin_estimate)[:, None])


@dataclass(frozen=True)
class SwdResult:
    per_level: list[dict[int, float]]  # per fake set: resolution -> SWD x 1e3
    replicates: np.ndarray  # (fake sets, resamples): bootstrap replicates of the mean over levels


BOOTSTRAP_PATCHES = 16  # per image and level, of the patches already drawn
BOOTSTRAP_DIRECTIONS = 32


def _thin_projections(descs: list[np.ndarray], config: SwdConfig,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Each set's first BOOTSTRAP_PATCHES patches per image, normalised by the real set (the
    first) and projected: (images, patches, directions), so a resample is a gather."""
    stats = channel_stats(descs[0])
    per_image = config.patches_per_image
    keep = min(BOOTSTRAP_PATCHES, per_image)
    dirs = None
    out = []
    for desc in descs:
        flat = normalise(desc, stats)
        if dirs is None:
            dirs = random_directions(flat.shape[1], BOOTSTRAP_DIRECTIONS, rng)
        images = flat.reshape(-1, per_image, flat.shape[1])[:, :keep]
        out.append(images @ dirs)
    return out


def _thin_swd(thin: list[np.ndarray], pick: dict[str, np.ndarray]) -> np.ndarray:
    """The thinned SWD (x1) of each fake set against the real one, images chosen by `pick`."""
    def sorted_rows(projected: np.ndarray, rows: np.ndarray) -> np.ndarray:
        chosen = projected[rows]
        return np.sort(chosen.reshape(-1, chosen.shape[2]), axis=0)

    real_sorted = sorted_rows(thin[0], pick["real"])
    return np.array([np.mean(wasserstein_1d(sorted_rows(t, pick[f"fake{i}"]), real_sorted))
                     for i, t in enumerate(thin[1:])])


def mean_over_levels(per_level: dict[int, float]) -> float:
    """The reported `swd`: the mean of the per-level values (each already x1e3)."""
    return float(np.mean(list(per_level.values())))
