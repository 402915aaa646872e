"""The tiles folder that `canopy etl` writes and train and evaluate read (docs/contract.md,
`data/tiles/`): WebDataset-style tar shards of `<key>.png` + `<key>.json` per split, and
manifest.json.

The writer is deterministic: tar headers carry fixed owners, modes and times, and the split is
a pure function of the tile key, so the same tiles give byte-identical shards. Readers index
the tar headers once and then read each tile's PNG bytes by offset, never unpacking a shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import canopy
from canopy.errors import UserError
from canopy.fsutil import OutputKind, refuse_half_swapped
from canopy.hashing import canonical_json, sha256_file
from canopy.imaging import decode_rgb_png

SPLITS = ("train", "val")
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_FIX = "re-run `canopy etl`"
# The most bytes one tar member may claim: a 128 px RGB PNG is at most about 50 KB even
# uncompressed, so 16 MB is far beyond any real tile. Larger tiles get twice their raw size.
MAX_MEMBER_BYTES = 16 * 2**20
# How readers check shards against the manifest before reading them: `size` (each shard's
# size and tile count, cheap) or `sha256` (also each shard's hash: reads every byte once).
VERIFY_CHOICES = ("size", "sha256")


def split_of(key: str, val_fraction: float) -> str:
    """'val' for a stable `val_fraction` of keys: adding imagery never moves a tile."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


class TileLocation(NamedTuple):
    """Where one tile's PNG bytes are inside a shard, to read them without scanning the tar.
    A tuple: the train index holds one per tile, and its data workers get a pickled copy."""

    key: str
    shard: Path
    offset: int
    size: int

    def read(self) -> bytes:
        """The PNG bytes: exactly `size` bytes from `offset` (the index checked both against
        the shard), never a read to the end of the file."""
        with open(self.shard, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise UserError(f"tile {self.key} in {self.shard}: the shard ends after "
                            f"{len(data)} of the tile's {self.size} bytes; {_FIX}")
        return data


# --- writing -------------------------------------------------------------------------------

@dataclass
class ShardInfo:
    """One shard as the manifest lists it."""

    split: str
    file: str  # relative to the tiles folder
    tiles: int = 0
    sha256: str = ""
    size: int = 0  # bytes: lets readers check a shard cheaply, without hashing it


@dataclass
class ShardWriter:
    """Append tiles to `<root>/<split>/shard-NNNNNN.tar`, `shard_size` tiles per shard."""

    root: Path
    split: str
    shard_size: int
    shards: list[ShardInfo] = field(default_factory=list)
    _tar: tarfile.TarFile | None = None

    def add(self, key: str, png: bytes, metadata: dict) -> TileLocation:
        """Write one tile; return where its PNG bytes are."""
        if self._tar is None or self.shards[-1].tiles >= self.shard_size:
            self._open_next()
        offset = _add_member(self._tar, f"{key}.png", png)
        _add_member(self._tar, f"{key}.json", (canonical_json(metadata) + "\n").encode("utf-8"))
        self.shards[-1].tiles += 1
        return TileLocation(key, self.root / self.shards[-1].file, offset, len(png))

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.split}/shard-{len(self.shards):06d}.tar"
        (self.root / self.split).mkdir(parents=True, exist_ok=True)
        self.shards.append(ShardInfo(self.split, name))
        self._tar = tarfile.open(self.root / name, "w", format=tarfile.PAX_FORMAT)

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
            path = self.root / self.shards[-1].file
            self.shards[-1].sha256 = sha256_file(path)
            self.shards[-1].size = path.stat().st_size

    def close(self) -> list[ShardInfo]:
        self._close_current()
        return self.shards


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member with normalised header fields; return the offset of its data."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return tar.offset - padded


def split_counts(shards: Iterable[ShardInfo]) -> dict[str, int]:
    shards = list(shards)
    return {split: sum(s.tiles for s in shards if s.split == split) for split in SPLITS}


class ChannelStats:
    """Per-channel mean and std of uint8 RGB tiles, in the network's [-1, 1] units
    (x = v / 127.5 - 1), and the radially averaged cross-power spectrum of the standardised
    tiles (diffusion.preconditioning: spectral, model/spectral.py). The mean and std are exact
    integer sums, so they do not depend on the order the tiles came in."""

    def __init__(self, tile_means: bool = True) -> None:
        self.pixels = 0
        self.sums = np.zeros(3, dtype=np.int64)
        self.squares = np.zeros(3, dtype=np.int64)  # 255^2 x 2^40 pixels still fits
        self.tiles = 0
        # the spectrum is of tiles of one square size; any other image added drops it
        self.tile_size: int | None = None
        self.one_square_size = True
        # sum over tiles of (tile's pixel sum in c) x (in d), per channel pair: Python ints
        self.tile_sum_products = [0] * len(CHANNEL_PAIRS)
        # (pairs, H, W'): sums over tiles of Re X_c conj(X_d) at each frequency, binned by
        # radius once, in to_json (binning is linear: one bincount instead of one per tile)
        self.cross_power: np.ndarray | None = None
        self.bin_counts: np.ndarray | None = None
        # the same of the tiles' orthonormal DCT (the DFT of each tile extended by its mirror
        # images): the spectrum of the spectral skip's mirror border, free of the leakage a
        # tile's opposite borders put into its DFT
        self.mirror_cross_power: np.ndarray | None = None
        self.mirror_bin_counts: np.ndarray | None = None
        # each tile's channel sums: the tiles' mean colours, whose distribution the spectral
        # skip's tile-mean prior estimates (diffusion.mean_prior: tiles)
        self.keep_tile_means = tile_means
        self.tile_sums: list[tuple[int, int, int]] = []

    def add(self, rgb: np.ndarray) -> None:
        values = rgb.reshape(-1, 3).astype(np.int64)
        self.pixels += len(values)
        tile_sums = values.sum(axis=0)
        self.sums += tile_sums
        self.squares += (values * values).sum(axis=0)
        self.one_square_size &= (rgb.ndim == 3 and rgb.shape[0] == rgb.shape[1]
                                 and self.tile_size in (None, rgb.shape[0]))
        if self.one_square_size:
            self._add_spectrum(rgb, tile_sums)

    def _add_spectrum(self, rgb: np.ndarray, tile_sums: np.ndarray) -> None:
        n = rgb.shape[0]
        if self.tile_size is None:
            self.tile_size = n
            self.bin_counts, self._bins, self._weight = _radial_bins(n)
            self.cross_power = np.zeros((len(CHANNEL_PAIRS), n, n // 2 + 1))
            self.mirror_bin_counts, self._mirror_bins = _dct_bins(n)
            self._dct = _dct_matrix(n)
            self.mirror_cross_power = np.zeros((len(CHANNEL_PAIRS), n, n))
        # float32 channel planes: an eighth of the time of float64 over the last axis, and
        # far finer than the six digits kept
        planes = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 127.5
        _add_cross_power(self.cross_power, np.fft.rfft2(planes, norm="ortho"))
        self._add_mirror_spectrum(planes)
        for i, (c, d) in enumerate(CHANNEL_PAIRS):
            self.tile_sum_products[i] += int(tile_sums[c]) * int(tile_sums[d])
        if self.keep_tile_means:
            self.tile_sums.append(tuple(int(v) for v in tile_sums))
        self.tiles += 1

    def _add_mirror_spectrum(self, planes: np.ndarray) -> None:
        """The cross-power of the tile's orthonormal 2-D DCT-II, C = D X D^T per channel (the
        DFT of the tile extended by its mirror images holds the same coefficients)."""
        _add_cross_power(self.mirror_cross_power, self._dct @ planes @ self._dct.T)

    def to_json(self) -> dict[str, Any] | None:
        """{"mean": [r, g, b], "std": [r, g, b]} in [-1, 1] units, with "spectrum" (the
        tile size and the 3 x 3 cross-power matrix at each integer radius, DC first),
        "mirror_spectrum" (the same of the tiles' DCT) and "tile_means" (each tile's mean
        colour, _tile_means_json) where every image was one square tile of one size; None
        without pixels."""
        if not self.pixels:
            return None
        n = self.pixels
        mean = self.sums / n  # in 0..255
        var = np.maximum(self.squares / n - mean**2, 0.0)
        stats: dict[str, Any] = {
            "mean": [round(float(m / 127.5 - 1), 6) for m in mean],
            "std": [round(float(np.sqrt(v) / 127.5), 6) for v in var]}
        if self.one_square_size and self.tiles >= 2 and all(v > 0 for v in var):
            std = np.sqrt(var) / 127.5
            power = _binned(self.cross_power * self._weight, self._bins, len(self.bin_counts))
            stats["spectrum"] = self._spectrum_json(std, power, self.bin_counts)
            mirror_power = _binned(self.mirror_cross_power, self._mirror_bins,
                                   len(self.mirror_bin_counts))
            stats["mirror_spectrum"] = self._spectrum_json(std, mirror_power,
                                                           self.mirror_bin_counts, mirrored=True)
            if self.keep_tile_means:
                stats["tile_means"] = self._tile_means_json()
        return stats

    def _tile_means_json(self) -> list[list[float]]:
        """Every tile's mean colour in [-1, 1] units, sorted (so independent of the tiles'
        order), at most MAX_TILE_MEANS of them, evenly spaced through the sorted list."""
        pixels = self.tile_size**2
        ordered = sorted(self.tile_sums)
        step = max(1, -(-len(ordered) // MAX_TILE_MEANS))
        return [[round(v / pixels / 127.5 - 1, 5) for v in sums] for sums in ordered[::step]]

    def _spectrum_json(self, std: np.ndarray, power: np.ndarray, counts: np.ndarray,
                       mirrored: bool = False) -> dict[str, Any]:
        """The cross-power of the standardised tiles per radius: Re E[X_c conj(X_d)] / (s_c s_d)
        for r >= 1, and at DC N Cov(tile mean c, tile mean d) / (s_c s_d) (the
        standardisation removes the data's mean). `mirrored`: that of the tiles extended by
        their mirror images, images of twice the side (4N pixels) with the tiles' mean."""
        pixels = self.tile_size**2
        bins = power.shape[1]
        matrices = np.zeros((bins, 3, 3))
        for i, (c, d) in enumerate(CHANNEL_PAIRS):
            scale = std[c] * std[d]
            mean_c, mean_d = (self.sums[k] / self.tiles / pixels / 127.5 for k in (c, d))
            product = self.tile_sum_products[i] / self.tiles / pixels**2 / 127.5**2
            dc = pixels * (product - mean_c * mean_d) / scale
            rest = power[i, 1:] / counts[1:] / self.tiles / scale
            matrices[:, c, d] = matrices[:, d, c] = [dc * (4 if mirrored else 1), *rest]
        return {"tile_size": self.tile_size * (2 if mirrored else 1),
                "radial": [[[_significant(v) for v in row] for row in m] for m in matrices]}


class TrainStats:
    """ChannelStats of all train tiles, and of each region's (a conditioned model's classes:
    canopy/conditions.py names a tile's region), for the manifest's `train_stats`."""

    def __init__(self) -> None:
        self.all = ChannelStats()
        self.regions: dict[str, ChannelStats] = {}

    def add(self, rgb: np.ndarray, region: str | None) -> None:
        self.all.add(rgb)
        if region is not None:  # a region's tile means: not used (no prior per class)
            self.regions.setdefault(region, ChannelStats(tile_means=False)).add(rgb)

    def to_json(self) -> dict[str, Any] | None:
        """ChannelStats.to_json of all tiles, with "regions": {name: its own, for each region
        with a positive std in every channel}; None without pixels."""
        stats = self.all.to_json()
        if stats is None:
            return None
        measured = {name: region.to_json() for name, region in sorted(self.regions.items())}
        regions = {name: found for name, found in measured.items()
                   if found is not None and all(v > 0 for v in found["std"])}
        if regions:
            stats["regions"] = regions
        return stats


# tile means kept in the manifest: enough for a kernel density estimate in three dimensions
MAX_TILE_MEANS = 4096

# the channel pairs (c, d), c <= d, of a symmetric 3 x 3 cross-power matrix
CHANNEL_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _radial_bins(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an n x n rfft2 grid: (frequencies per rounded radius 0 .. n/sqrt(2), each
    frequency of the full plane counted once; the radius bin of each grid cell; the weight of
    each cell: 2 for the columns that stand for both half planes, else 1)."""
    fy = np.fft.fftfreq(n, d=1 / n).reshape(-1, 1)
    fx = np.fft.rfftfreq(n, d=1 / n).reshape(1, -1)
    bins = np.rint(np.sqrt(fy**2 + fx**2)).astype(np.int64)
    weight = np.full((n, n // 2 + 1), 2.0)
    weight[:, 0] = 1.0
    if n % 2 == 0:
        weight[:, -1] = 1.0
    counts = np.bincount(bins.ravel(), weight.ravel())
    return counts, bins, weight


def _add_cross_power(cells: np.ndarray, spectrum: np.ndarray) -> None:
    """Add Re X_c conj(X_d) of `spectrum` (C, H, W': complex, or real DCT coefficients) per
    channel pair to `cells` (pairs, H, W')."""
    re = spectrum.real
    im = spectrum.imag if np.iscomplexobj(spectrum) else None
    for i, (c, d) in enumerate(CHANNEL_PAIRS):
        cells[i] += re[c] * re[d] if im is None else re[c] * re[d] + im[c] * im[d]


def _binned(cells: np.ndarray, bins: np.ndarray, count: int) -> np.ndarray:
    """(pairs, count): the sums of each pair's `cells` (pairs, H, W') over the cells of each
    radius bin (`bins`, H x W')."""
    return np.stack([np.bincount(bins.ravel(), pair.ravel(), minlength=count) for pair in cells])


def _dct_bins(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For the n x n DCT coefficients (k_y, k_x): (coefficients per radius bin, the bin of
    each). Coefficient k stands for frequency k / 2n cycles per pixel: radius
    sqrt(k_y^2 + k_x^2) in cycles per mirrored tile (2n px), rounded, in the units of that
    tile's own DFT."""
    k = np.arange(n)
    bins = np.rint(np.sqrt(k.reshape(-1, 1) ** 2 + k.reshape(1, -1) ** 2)).astype(np.int64)
    return np.bincount(bins.ravel()).astype(np.float64), bins


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (k, m), float32 like the tiles' channel planes."""
    k, m = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2 / n) * np.cos(np.pi * k * (m + 0.5) / n)
    matrix[0] /= np.sqrt(2)
    return matrix.astype(np.float32)


def _significant(value: float) -> float:
    return float(f"{value:.6g}")


def write_manifest(root: Path, *, tile_size: int, stride: int, shards: list[ShardInfo],
                   synthetic: bool, filters: dict[str, Any], sources: list[dict[str, Any]],
                   params_hash: str, train_stats: dict[str, Any] | None = None) -> None:
    """`<root>/manifest.json`; `filters` and `sources` are etl's counts and scene reports,
    `train_stats` the train tiles' ChannelStats (train standardises the data with them)."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "canopy_version": canopy.__version__,
        "synthetic": synthetic,
        "tile_size": tile_size,
        "stride": stride,
        "counts": split_counts(shards),
        "shards": [vars(shard) for shard in shards],
        "filters": filters,
        "sources": sources,
        "params_hash": params_hash,
    }
    if train_stats is not None:
        manifest["train_stats"] = train_stats
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (root / MANIFEST_FILE).write_text(text, encoding="utf-8")


def is_tiles_folder(root: Path) -> bool:
    """Whether the folder `root` is one `canopy etl` wrote (its manifest says so), and so
    may be replaced by the next run."""
    manifest = _json_object(root / MANIFEST_FILE)
    return (manifest is not None and "format_version" in manifest
            and "tile_size" in manifest and isinstance(manifest.get("shards"), list))


def _json_object(path: Path, limit: int = 64 * 2**20) -> dict[str, Any] | None:
    """The JSON object in the regular file `path`, or None for anything else."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


TILES_OUTPUT = OutputKind("tiles folder", "paths.tiles (--tiles)", is_tiles_folder)


# --- reading -------------------------------------------------------------------------------

def read_manifest(root: Path, point_at: str) -> dict[str, Any]:
    """The manifest of the tiles folder `root`, checked; `point_at` names the option that
    chooses the folder, for the message when there is none."""
    path = root / MANIFEST_FILE
    refuse_half_swapped(root, "canopy etl")  # a killed etl's leftover says more than "missing"
    if not path.is_file():
        raise UserError(f"{path} not found: run `canopy etl` first (or `dvc repro etl`), "
                        f"or point {point_at} at an etl output folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}): {_FIX}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object; {_FIX}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {manifest.get('format_version')!r}, but this "
                        f"canopy reads tiles of format_version {FORMAT_VERSION}; {_FIX}")
    if not isinstance(manifest.get("tile_size"), int):
        raise UserError(f"{path}: no integer tile_size in it; {_FIX}")
    if not _is_shard_list(manifest.get("shards")):
        raise UserError(f"{path}: no list of shards with their file and sha256; {_FIX}")
    return manifest


def train_stats(manifest: dict[str, Any], root: Path) -> dict[str, list[float]] | None:
    """The train tiles' per-channel {"mean", "std"} ([-1, 1] units) and, where etl measured
    them, their "spectrum", "mirror_spectrum", "tile_means" and each region's stats
    ("regions") from a manifest; None for manifests written before etl measured them."""
    stats = manifest.get("train_stats")
    if stats is None:
        return None
    found = _checked_stats(stats, root, "train_stats")
    regions = stats.get("regions")
    if regions is not None:
        if not isinstance(regions, dict):
            raise UserError(f"{root / MANIFEST_FILE}: train_stats.regions is not an object of "
                            f"each region's stats; {_FIX}")
        found["regions"] = {name: _checked_stats(entry, root, f"train_stats.regions.{name}")
                            for name, entry in regions.items()}
    return found


def _checked_stats(stats: Any, root: Path, where: str) -> dict[str, Any]:
    """{"mean", "std"[, "spectrum", "mirror_spectrum", "tile_means"]} of one ChannelStats
    entry of a manifest, checked."""
    ok = (isinstance(stats, dict)
          and all(isinstance(stats.get(k), list) and len(stats[k]) == 3
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stats[k])
                  for k in ("mean", "std"))
          and all(v > 0 for v in stats["std"]))
    if not ok:
        raise UserError(f"{root / MANIFEST_FILE}: {where} is not three means and three "
                        f"positive stds; {_FIX}")
    found: dict[str, Any] = {"mean": [float(v) for v in stats["mean"]],
                             "std": [float(v) for v in stats["std"]]}
    for key in ("spectrum", "mirror_spectrum"):
        if key in stats:
            if not is_spectrum(stats[key]):
                raise UserError(f"{root / MANIFEST_FILE}: {where}.{key} is not a tile size and "
                                f"symmetric 3 x 3 cross-power matrices; {_FIX}")
            found[key] = stats[key]
    if "tile_means" in stats:
        if not are_tile_means(stats["tile_means"]):
            raise UserError(f"{root / MANIFEST_FILE}: {where}.tile_means is not a list of "
                            f"mean colours in [-1, 1]; {_FIX}")
        found["tile_means"] = stats["tile_means"]
    return found


def are_tile_means(means: Any) -> bool:
    """Whether `means` is a non-empty list of mean colours, three numbers in [-1, 1] each
    (ChannelStats; model/spectral.py's TileMeanPrior reads them)."""
    return (isinstance(means, list) and len(means) >= 1
            and all(isinstance(m, list) and len(m) == 3
                    and all(type(v) in (int, float) and -1 <= v <= 1 for v in m) for m in means))


def is_spectrum(spectrum: Any) -> bool:
    """Whether `spectrum` is {"tile_size": n, "radial": at least two symmetric 3 x 3 matrices
    of finite numbers with a positive diagonal} (ChannelStats; model/spectral.py reads it)."""
    if not isinstance(spectrum, dict) or type(spectrum.get("tile_size")) is not int:
        return False
    radial = spectrum.get("radial")
    if spectrum["tile_size"] < 2 or not isinstance(radial, list) or len(radial) < 2:
        return False
    for matrix in radial:
        if not (isinstance(matrix, list) and len(matrix) == 3
                and all(isinstance(row, list) and len(row) == 3 for row in matrix)):
            return False
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for row in matrix for v in row):
            return False
        if any(matrix[c][c] <= 0 for c in range(3)) or any(
                matrix[c][d] != matrix[d][c] for c in range(3) for d in range(c)):
            return False
    return True


def _is_shard_list(shards: Any) -> bool:
    return isinstance(shards, list) and all(
        isinstance(shard, dict) and isinstance(shard.get("file"), str)
        and isinstance(shard.get("sha256"), str) for shard in shards)


def shard_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """{shard file relative to the tiles folder: sha256}, as the manifest lists them."""
    return {shard["file"]: shard["sha256"] for shard in manifest.get("shards", [])}


def shard_files(root: Path, split: str) -> list[Path]:
    """The shards of a split that are on disk, in name order."""
    return sorted((root / split).glob("*.tar"))


def member_cap(tile_size: int | None) -> int:
    """The most bytes a tar member of a shard of `tile_size` px tiles may claim."""
    raw = 3 * tile_size * tile_size if tile_size else 0
    return max(MAX_MEMBER_BYTES, 2 * raw)


def index_shards(shards: Iterable[Path], max_member: int = MAX_MEMBER_BYTES
                 ) -> list[TileLocation]:
    """Every tile of the shards, in shard and then tar order, from the tar headers only. A
    member claiming more than `max_member` bytes, or more than its shard holds, is refused."""
    locations: list[TileLocation] = []
    seen: dict[str, Path] = {}
    for shard in shards:
        for location in _index_shard(shard, max_member):
            if location.key in seen:
                raise UserError(f"tile key {location.key!r} is in both {seen[location.key]} and "
                                f"{shard}: keys must be unique; {_FIX}")
            seen[location.key] = shard
            locations.append(location)
    return locations


def _index_shard(shard: Path, max_member: int) -> list[TileLocation]:
    try:
        with open(shard, "rb") as handle, \
                tarfile.open(fileobj=_BoundedFile(handle), mode="r:") as tar:
            size = os.fstat(handle.fileno()).st_size
            locations = []
            for member in tar:
                _check_member_size(shard, size, member, max_member)
                if member.isfile() and member.name.endswith(".png"):
                    locations.append(TileLocation(member.name[: -len(".png")], shard,
                                                  member.offset_data, member.size))
            return locations
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"{shard} is not a readable tar shard ({err}); {_FIX}") from None


def _check_member_size(shard: Path, shard_size: int, member: tarfile.TarInfo,
                       max_member: int) -> None:
    """Refuse a header whose size no tile can have or the shard cannot hold: the reads of
    that member (by tarfile, then by TileLocation.read) must stay inside the shard."""
    if member.size > max_member:
        raise UserError(f"{shard}: member {member.name!r} claims {member.size} bytes, more than "
                        f"the {max_member} a tile may take (a forged or corrupt tar header); "
                        f"{_FIX}")
    if member.offset_data + member.size > shard_size:
        raise UserError(f"{shard}: member {member.name!r} claims {member.size} bytes from byte "
                        f"{member.offset_data}, past the end of the shard ({shard_size} bytes; "
                        f"a forged or corrupt tar header); {_FIX}")


class _BoundedFile(io.RawIOBase):
    """A shard opened for tarfile, whose reads never ask for more than the file holds:
    tarfile reads a PAX or GNU long-name header's data in one read of the size its header
    claims, and Python allocates a buffer of the size asked before reading."""

    def __init__(self, handle: io.BufferedReader) -> None:
        super().__init__()
        self._handle = handle
        self._size = os.fstat(handle.fileno()).st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._handle.tell())
        return self._handle.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def list_tiles(root: Path, split: str, tile_size: int | None = None) -> list[TileLocation]:
    """Every tile of a split, in shard and then tar order."""
    return index_shards(shard_files(root, split), member_cap(tile_size))


def verified_tiles(root: Path, split: str, manifest: dict[str, Any],
                   verify: str = "size") -> list[TileLocation]:
    """Every tile of a split, from the shards the manifest lists, each checked first: it
    exists, is a regular file (a FIFO or a device would hang the reader), has the size the
    manifest records (manifests written before sizes were recorded skip this) and holds the
    number of tiles it records. Cheap: no shard is hashed, unless `verify` is "sha256": then
    each shard's sha256 must also be the manifest's (a flipped byte of the same size)."""
    if verify not in VERIFY_CHOICES:
        raise ValueError(f"verify must be one of {VERIFY_CHOICES}, got {verify!r}")
    entries = [entry for entry in manifest["shards"] if _split_of_entry(entry) == split]
    shards = [_checked_shard(root, entry) for entry in entries]
    if verify == "sha256":
        for shard, entry in zip(shards, entries):
            _check_sha256(shard, entry)
    locations = index_shards(shards, member_cap(manifest["tile_size"]))
    for shard, entry in zip(shards, entries):
        _check_count(shard, entry, sum(1 for loc in locations if loc.shard == shard))
    return locations


def _split_of_entry(entry: dict[str, Any]) -> str:
    return entry.get("split") or entry["file"].split("/", 1)[0]


def _checked_shard(root: Path, entry: dict[str, Any]) -> Path:
    rel = Path(entry["file"])
    path = root / rel
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{root / MANIFEST_FILE} lists a shard outside the folder "
                        f"({entry['file']!r}); {_FIX}")
    try:
        info = path.stat()  # follows links: DVC may link shards from its cache
    except OSError:
        raise UserError(f"shard {path}, listed in {root / MANIFEST_FILE}, is missing; "
                        f"{_FIX}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"shard {path} is not a regular file; {_FIX}")
    size = entry.get("size")
    if isinstance(size, int) and info.st_size != size:
        raise UserError(f"shard {path} is {info.st_size} bytes, but {MANIFEST_FILE} records "
                        f"{size}; {_FIX}")
    return path


def _check_sha256(shard: Path, entry: dict[str, Any]) -> None:
    found = sha256_file(shard)
    if found != entry["sha256"]:
        raise UserError(f"shard {shard} has sha256 {found[:12]}..., but {MANIFEST_FILE} records "
                        f"{entry['sha256'][:12]}...: its content changed since etl wrote it; "
                        f"{_FIX}")


def _check_count(shard: Path, entry: dict[str, Any], found: int) -> None:
    listed = entry.get("tiles")
    if isinstance(listed, int) and found != listed:
        raise UserError(f"shard {shard} holds {found} tiles, but {MANIFEST_FILE} records "
                        f"{listed}; {_FIX}")


# The most bytes a tile's .json member may take: a few hundred in practice.
MAX_METADATA_BYTES = 1 * 2**20


def read_metadata(locations: Iterable[TileLocation]) -> list[dict[str, Any]]:
    """The `<key>.json` member of each tile (its metadata: README "Files"), in the order of
    `locations`. Each shard's tar headers are read once; a tile without its .json member, or
    with one that is not a JSON object, is refused."""
    locations = list(locations)
    by_shard: dict[Path, list[int]] = {}
    for i, location in enumerate(locations):
        by_shard.setdefault(location.shard, []).append(i)
    out: list[dict[str, Any] | None] = [None] * len(locations)
    for shard, indices in by_shard.items():
        members = _json_members(shard)
        for i in indices:
            key = locations[i].key
            if key not in members:
                raise UserError(f"tile {key} in {shard} has no {key}.json metadata; {_FIX}")
            out[i] = _parse_metadata(TileLocation(key, shard, *members[key]).read(), key, shard)
    return out  # type: ignore[return-value]


def _json_members(shard: Path) -> dict[str, tuple[int, int]]:
    """{key: (offset, size)} of the .json members of a shard, from its tar headers."""
    try:
        with open(shard, "rb") as handle, \
                tarfile.open(fileobj=_BoundedFile(handle), mode="r:") as tar:
            size = os.fstat(handle.fileno()).st_size
            found = {}
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    _check_member_size(shard, size, member, MAX_METADATA_BYTES)
                    found[member.name[: -len(".json")]] = (member.offset_data, member.size)
            return found
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"{shard} is not a readable tar shard ({err}); {_FIX}") from None


def _parse_metadata(data: bytes, key: str, shard: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{key}.json in {shard} is not valid JSON ({err}); {_FIX}") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{key}.json in {shard} is not a JSON object; {_FIX}")
    return metadata


def decode_tile(data: bytes, tile_size: int, name: str) -> np.ndarray:
    """A tile's PNG bytes -> (tile_size, tile_size, 3) uint8; a UserError for anything else."""
    array = decode_rgb_png(data, name, _FIX)
    height, width = array.shape[:2]
    if (height, width) != (tile_size, tile_size):
        raise UserError(f"{name} is {width}x{height} px, expected {tile_size}x{tile_size}; {_FIX}")
    return array


def read_tile(location: TileLocation, tile_size: int) -> np.ndarray:
    name = f"tile {location.key} in {location.shard}"
    return decode_tile(location.read(), tile_size, name)


def read_tiles(locations: Iterable[TileLocation], tile_size: int) -> Iterator[np.ndarray]:
    for location in locations:
        yield read_tile(location, tile_size)
