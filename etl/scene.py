"""A scene: one raster (or a stack of single-band rasters) read window by window.

`SceneReader.read(window)` returns the window as 8-bit RGB plus two boolean masks:
`valid` (not nodata, not masked, not cloud/shadow/snow where a scene classification exists) and
`vegetation`. Memory is bounded by the window, never by the raster: every read is windowed, and
GDAL's block cache is capped (it defaults to 5% of RAM).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from canopy.errors import DISK_FULL_ERRNOS, UserError

GDAL_ENV = {"GDAL_CACHEMAX": 64, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}  # MiB

# Sentinel-2 L2A scene classification (SCL) classes.
SCL_INVALID = (0, 1, 3, 8, 9, 10, 11)  # no data, defective, cloud shadow, clouds, cirrus, snow
SCL_VEGETATION = 4

# Largest side of the decimated read used for per-scene percentile statistics.
STATS_MAX_SIDE = 1024

# Scaling parameters beyond this (a tenth of float32's largest value) are mapped in float64.
_FLOAT32_SAFE = float(np.finfo(np.float32).max) / 10

# Drivers whose decoder can only go forward: reading a row above the last one read starts
# the file over from its top (PNG and JPEG are single compressed streams).
SEQUENTIAL_DRIVERS = frozenset({"PNG", "JPEG", "GIF"})


@dataclass(frozen=True)
class BandSource:
    """Band `band` (1-based) of file `path`."""

    path: str
    band: int


@dataclass(frozen=True)
class Scaling:
    """How raw values become 8-bit, fixed for the whole scene (never per tile).

    mode "none": values are 8-bit display values already (clipped to 0..255).
    mode "linear": out = 255 * clip((x - low) / (high - low), 0, 1) ** (1 / gamma), with
    low/high per band: a fixed reflectance range, or per-scene percentiles.
    """

    mode: str  # "none" | "linear"
    low: tuple[float, float, float] = (0.0, 0.0, 0.0)
    high: tuple[float, float, float] = (255.0, 255.0, 255.0)
    gamma: float = 1.0


@dataclass(frozen=True)
class SceneSpec:
    scene_id: str  # stable, used in tile keys: [a-z0-9-] only
    source: str  # "local" | "sentinelhub" | "stac" | "synthetic"
    rgb: tuple[BandSource, BandSource, BandSource]
    scale_mode: str  # "none" | "reflectance" | "percentile"
    reflectance_range: tuple[float, float] = (0.0, 0.3)  # in the data's units
    nir: BandSource | None = None
    mask: BandSource | None = None  # nonzero = valid (Sentinel Hub dataMask)
    scl: BandSource | None = None  # Sentinel-2 scene classification
    acquired: str | None = None
    # Provenance names for metadata; defaults to the file paths (synthetic scenes live in a
    # temporary folder, so they name themselves instead).
    origin: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict, hash=False, compare=False)
    # Tile metadata (docs/contract.md): the AOI, local entry or synthetic kind the scene is of (a class for
    # model.condition);
    # a STAC scene's item id and processing baseline; the GSD of a raster that has no
    # georeference to tell it (metres per pixel).
    region: str | None = None
    item: str | None = None
    processing_baseline: str | None = None
    gsd: float | None = None
    # ESA WorldCover tree cover on the scene's grid (1 = tree cover), added by etl.worldcover.
    tree: BandSource | None = None

    @property
    def files(self) -> list[str]:
        bands = [*self.rgb, self.nir, self.mask, self.scl, self.tree]
        return sorted({b.path for b in bands if b is not None})

    @property
    def provenance(self) -> list[str]:
        """The imagery's own files (the WorldCover mask is not imagery)."""
        if self.origin is not None:
            return list(self.origin)
        bands = [*self.rgb, self.nir, self.mask, self.scl]
        return sorted({b.path for b in bands if b is not None})

    @property
    def vegetation_method(self) -> str:
        if self.scl is not None:
            return "scl"
        return "ndvi" if self.nir is not None else "gli"


def slug(text: str) -> str:
    """A key-safe id: lowercase letters, digits and dashes (WebDataset keys cannot hold dots)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "scene"


class SceneReader:
    """Open the files of a scene once; read aligned windows of all its bands."""

    def __init__(self, spec: SceneSpec, *, gamma: float, percentile_range: tuple[float, float],
                 ndvi_threshold: float, gli_threshold: float) -> None:
        self.spec = spec
        self.ndvi_threshold = ndvi_threshold
        self.gli_threshold = gli_threshold
        self._datasets = {path: open_raster(path) for path in spec.files}
        first = self._datasets[spec.rgb[0].path]
        self.width, self.height = first.width, first.height
        self.crs = first.crs.to_string() if first.crs else None
        self.transform = first.transform
        self.gsd = spec.gsd if first.crs is None else ground_sample_distance(first)
        self._check_aligned()
        self.dtype = np.dtype(first.dtypes[spec.rgb[0].band - 1])
        # Read a full-width band of rows at a time, each row once, in order: windows of a
        # raster decoded from its top would each restart the decoder (quadratic time).
        self.row_bands = any(reads_from_the_top(d) for d in self._datasets.values())
        self._band_top = self._band_bottom = 0
        self._band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.scaling = self._scaling(gamma, percentile_range)

    def close(self) -> None:
        for dataset in self._datasets.values():
            dataset.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_aligned(self) -> None:
        for path, dataset in self._datasets.items():
            if (dataset.width, dataset.height) != (self.width, self.height):
                raise UserError(
                    f"{path} is {dataset.width}x{dataset.height} but {self.spec.rgb[0].path} is "
                    f"{self.width}x{self.height}: files stacked into one scene must share a grid"
                )

    # --- reading -------------------------------------------------------------------------

    def _read_bands(self, bands: Sequence[BandSource], window: Window | None = None,
                    out_shape: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Read `bands` with one call per file: a pixel-interleaved compressed file then
        decodes each block once, not once per band."""
        wanted: dict[str, list[int]] = {}
        for band in bands:
            wanted.setdefault(band.path, [])
            if band.band not in wanted[band.path]:
                wanted[band.path].append(band.band)
        arrays = {}
        for path, indexes in wanted.items():
            kwargs = {"window": window}
            if out_shape is not None:
                kwargs.update(out_shape=(len(indexes), *out_shape), resampling=Resampling.nearest)
            try:
                data = self._datasets[path].read(indexes, **kwargs)
            except RasterioIOError as err:
                raise UserError(f"{path}: cannot read ({str(err).splitlines()[0]}); "
                                "the file looks truncated or corrupt") from None
            arrays.update({(path, index): data[i] for i, index in enumerate(indexes)})
        return [arrays[(band.path, band.band)] for band in bands]

    def _band_valid(self, band: BandSource, values: np.ndarray, window: Window | None,
                    out_shape: tuple[int, int] | None,
                    alpha: np.ndarray | None = None) -> np.ndarray | None:
        """Valid pixels of one band (None = all valid), from the data where GDAL would
        otherwise read the band a second time to build a nodata mask; `alpha`: the file's
        8-bit alpha band, read with the data (GDAL's mask of it is its values)."""
        dataset = self._datasets[band.path]
        flags = dataset.mask_flag_enums[band.band - 1]
        if flags == [MaskFlags.all_valid]:
            return None
        if MaskFlags.nodata in flags:
            nodata = dataset.nodatavals[band.band - 1]
            return ~np.isnan(values) if np.isnan(nodata) else values != nodata
        if alpha is not None and MaskFlags.alpha in flags:
            return alpha > 0
        kwargs = {"window": window}  # an internal mask or alpha band: ask GDAL
        if out_shape is not None:
            kwargs.update(out_shape=out_shape, resampling=Resampling.nearest)
        try:
            return dataset.read_masks(band.band, **kwargs) > 0
        except RasterioIOError as err:
            raise UserError(f"{band.path}: cannot read its mask ({str(err).splitlines()[0]}); "
                            "the file looks truncated or corrupt") from None

    def _read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None):
        """Raw RGB arrays, the valid mask and the raw extra bands {'nir','mask','scl'}."""
        extras = {name: band for name in ("nir", "mask", "scl")
                  if (band := getattr(self.spec, name)) is not None}
        # An 8-bit alpha band is read with the data, in the same pass: a mask read after it
        # would go back over rows a PNG decoder has passed.
        alphas = {path: BandSource(path, index) for path in {b.path for b in self.spec.rgb}
                  if (index := self._alpha_index(path)) is not None}
        arrays = self._read_bands([*self.spec.rgb, *extras.values(), *alphas.values()],
                                  window, out_shape)
        raw = arrays[:3]
        extra = dict(zip(extras, arrays[3:3 + len(extras)]))
        alpha = dict(zip(alphas, arrays[3 + len(extras):]))
        # A pixel is nodata only where every RGB band says so: 8-bit RGB files often use 255
        # as nodata while real bright canopy pixels also reach 255 in one band.
        valid = np.zeros(raw[0].shape, dtype=bool)
        for band, values in zip(self.spec.rgb, raw):
            band_valid = self._band_valid(band, values, window, out_shape, alpha.get(band.path))
            if band_valid is None:
                valid[:] = True
                break
            valid |= band_valid
        if raw[0].dtype.kind == "f":
            for values in raw:
                valid &= np.isfinite(values)
        if "mask" in extra:
            valid &= extra["mask"] != 0
        if "scl" in extra:
            valid &= ~np.isin(extra["scl"], SCL_INVALID)
        return raw, valid, extra

    def _alpha_index(self, path: str) -> int | None:
        """The 1-based index of the 8-bit alpha band of file `path`, if it has one."""
        dataset = self._datasets[path]
        interps = list(dataset.colorinterp)
        if ColorInterp.alpha not in interps:
            return None
        index = interps.index(ColorInterp.alpha) + 1
        return index if dataset.dtypes[index - 1] == "uint8" else None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, valid bool HxW, vegetation bool HxW) for `window`."""
        if not self.row_bands:
            return self._read_converted(window)
        top, bottom = int(window.row_off), int(window.row_off + window.height)
        if not self._band_top <= top <= self._band_bottom:
            self._band, self._band_top, self._band_bottom = None, top, top  # start anew there
        if bottom > self._band_bottom:
            # Only the rows not read yet, below those kept: the decoder never goes back.
            new = self._read_converted(Window(0, self._band_bottom, self.width,
                                              bottom - self._band_bottom))
            kept = top - self._band_top
            self._band = new if self._band is None else tuple(
                np.concatenate([old[kept:], part]) for old, part in zip(self._band, new))
            self._band_top, self._band_bottom = top, bottom
        rows = slice(top - self._band_top, bottom - self._band_top)
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        return tuple(array[rows, cols] for array in self._band)

    def _read_converted(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw, valid, extra = self._read(window)
        rgb = self._to_uint8(raw)
        rgb[~valid] = 0
        vegetation = self._vegetation(raw, rgb, extra) & valid
        return rgb, valid, vegetation

    def read_tree(self, window: Window) -> np.ndarray | None:
        """The WorldCover tree-cover mask (bool HxW) of `window`; None without one."""
        if self.spec.tree is None:
            return None
        return self._read_bands([self.spec.tree], window)[0] > 0

    # --- scaling -------------------------------------------------------------------------

    def _scaling(self, gamma: float, percentile_range: tuple[float, float]) -> Scaling:
        mode = self.spec.scale_mode
        if mode == "none":
            return Scaling("none")
        if mode == "reflectance":
            low, high = self.spec.reflectance_range
            return Scaling("linear", (low,) * 3, (high,) * 3, gamma)
        low, high = self._scene_percentiles(percentile_range)
        return Scaling("linear", low, high, gamma)

    def _scene_percentiles(self, percentile_range: tuple[float, float]):
        """Per-band percentiles over the whole scene, from a decimated (bounded) read."""
        factor = max(1, int(np.ceil(max(self.width, self.height) / STATS_MAX_SIDE)))
        shape = (max(1, self.height // factor), max(1, self.width // factor))
        raw, valid, _ = self._read(out_shape=shape)
        if not valid.any():
            raise UserError(f"scene {self.spec.scene_id}: every pixel is nodata or masked")
        lows, highs = [], []
        for values in raw:
            low, high = np.percentile(values[valid].astype(np.float64), percentile_range)
            if high <= low:
                high = low + 1.0  # a constant band: map it to black rather than divide by 0
            lows.append(float(low))
            highs.append(float(high))
        return tuple(lows), tuple(highs)

    def _to_uint8(self, raw: Sequence[np.ndarray]) -> np.ndarray:
        scaling = self.scaling
        if scaling.mode == "none":
            stacked = np.stack(raw, axis=-1)
            if stacked.dtype == np.uint8:
                return stacked.copy()
            return np.clip(np.nan_to_num(stacked), 0, 255).astype(np.uint8)
        out = np.empty((*raw[0].shape, 3), dtype=np.uint8)
        for i, values in enumerate(raw):
            low, high = scaling.low[i], scaling.high[i]
            if max(abs(low), abs(high), high - low) > _FLOAT32_SAFE:
                # Values near float32's limit (3.4e38): its arithmetic would overflow to inf
                # and NaN, so such a scene is mapped in float64 (never the case otherwise:
                # the float32 path below keeps every other output as it was).
                unit64 = np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)
                unit = np.nan_to_num(unit64).astype(np.float32)
            else:
                with np.errstate(over="ignore"):  # inf for huge values: clipped to 1 below
                    unit = (values.astype(np.float32) - low) / (high - low)
            unit = np.clip(np.nan_to_num(unit), 0.0, 1.0)
            if scaling.gamma != 1.0:
                unit **= 1.0 / scaling.gamma
            out[..., i] = np.rint(unit * 255.0)
        return out

    # --- vegetation ----------------------------------------------------------------------

    def _vegetation(self, raw: Sequence[np.ndarray], rgb: np.ndarray, extra: dict) -> np.ndarray:
        if "scl" in extra:
            return extra["scl"] == SCL_VEGETATION
        if "nir" in extra:
            # NDVI = (NIR - red) / (NIR + red) (Rouse et al. 1974), on raw values.
            nir = extra["nir"].astype(np.float32)
            red = raw[0].astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                ndvi = (nir - red) / (nir + red)
            return np.nan_to_num(ndvi, nan=-1.0) > self.ndvi_threshold
        # Green Leaf Index GLI = (2G - R - B) / (2G + R + B) (Louhaichi et al. 2001), on the
        # 8-bit display values: true-colour only, so it is comparable across scenes.
        r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))  # |2G - R - B| <= 1020
        g2 = g + g
        return (g2 - r - b) > np.float32(self.gli_threshold) * (g2 + r + b)

def ground_sample_distance(dataset) -> float | None:
    """Metres per pixel of a georeferenced raster (the geometric mean of its pixel's sides; at
    the centre for a geographic CRS); None where the CRS has no known unit."""
    a, e = abs(dataset.transform.a), abs(dataset.transform.e)
    crs = dataset.crs
    if crs.is_geographic:
        centre_lat = dataset.transform.f + dataset.transform.e * dataset.height / 2
        metres = a * 111_319.49 * math.cos(math.radians(centre_lat)) * e * 110_574.0
        return round(math.sqrt(metres), 4)
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # noqa: BLE001  (a CRS without a linear unit)
        return None
    return round(math.sqrt(a * e) * factor, 4)


def reads_from_the_top(dataset) -> bool:
    """Whether `dataset` is decoded from its top (any earlier row restarts the decoder): a
    sequential format, or a TIFF of full-width strips (GDAL decodes a single compressed
    strip progressively, as one-row blocks). Reading such a raster a full-width band of
    rows at a time, in order, decodes each row once; a tiled raster is read window by
    window."""
    if dataset.driver in SEQUENTIAL_DRIVERS:
        return True
    _, block_width = dataset.block_shapes[0]
    return block_width >= dataset.width


def check_raster_cost(dataset, path: str, tile_size: int, max_megapixels: float,
                      max_read_mb: int) -> None:
    """Refuse in one line a raster whose claimed size would take unreasonable time (more
    than `max_megapixels`) or memory (a full-width read of a raster decoded from its top
    above `max_read_mb`), before anything is read: the header alone claims the size."""
    megapixels = dataset.width * dataset.height / 1e6
    if megapixels > max_megapixels:
        raise UserError(f"{path} claims {dataset.width}x{dataset.height} pixels ("
                        f"{megapixels:,.0f} megapixels), more than etl.max_scene_megapixels "
                        f"({max_megapixels:g}): raise etl.max_scene_megapixels if it is real, "
                        "or cut it into smaller files")
    if reads_from_the_top(dataset):
        itemsize = max(np.dtype(dtype).itemsize for dtype in dataset.dtypes)
        # The rows as read, then as float32 while scaling, plus the uint8 RGB and masks.
        needed = dataset.width * tile_size * dataset.count * (itemsize + 4) + dataset.width * tile_size * 5
        if needed > max_read_mb * 2**20:
            raise UserError(f"{path} ({dataset.driver}, {dataset.width} px wide) can only be "
                            f"decoded from its top, a full-width row of {tile_size} px tiles "
                            f"at a time: that takes {needed / 2**20:,.0f} MB, more than "
                            f"etl.max_read_mb ({max_read_mb}); raise etl.max_read_mb, or "
                            "convert it to a tiled GeoTIFF (gdal_translate -co TILED=YES)")


def not_a_raster_file(path: str) -> str | None:
    """Why `path` cannot be a raster file (missing, a folder, a FIFO, a device, a symbolic
    link loop, unreadable), or None for a regular file. Checked before GDAL opens it: opening
    a FIFO blocks until something writes to it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file" if not os.path.islink(path) else "a broken symbolic link"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop"
        return f"cannot be read ({err.strerror})"
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file (list the files in it, or a glob such as folder/*.tif)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    return "not a regular file"


def open_raster(path: str):
    """Open a raster or raise a one-line UserError that says what is wrong with it."""
    problem = not_a_raster_file(path)
    if problem is not None:
        raise UserError(f"{path}: {problem}; check etl.local.paths")
    try:
        return rasterio.open(path)
    except RasterioIOError as err:
        detail = str(err).split("\n")[0]
        raise UserError(
            f"{path}: not a readable raster ({detail}); give GeoTIFF/COG, PNG or JPEG files"
        ) from None


# --- writing -------------------------------------------------------------------------------

@contextlib.contextmanager
def raster_write_errors(path: Path) -> Iterator[None]:
    """Turn a GDAL write that failed for a full disk or quota into the OSError a plain write
    raises (ENOSPC or EDQUOT, naming `path`): canopy/errors.py then says it in one line.

    GDAL reports such a failure as a generic "Write error"; the errno's text only reaches
    libtiff's own handler, which prints it to file descriptor 2 directly. So descriptor 2 is
    captured for the block: read for that text on failure, and passed on otherwise.
    """
    with _captured_stderr() as captured:
        try:
            yield
        except (RasterioError, OSError) as err:
            if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
                raise
            code = _disk_full_errno(captured.text() + _chain_text(err))
            if code is None:
                raise
            captured.discard()  # said in the one line instead
            raise OSError(code, os.strerror(code), str(path)) from None


def _disk_full_errno(text: str) -> int | None:
    for code in sorted(DISK_FULL_ERRNOS):
        if os.strerror(code) in text:
            return code
    return None


def _chain_text(err: BaseException | None) -> str:
    parts = []
    while err is not None and len(parts) < 10:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


class _Captured:
    def __init__(self, handle) -> None:
        self._handle = handle
        self._discarded = False

    def text(self) -> str:
        self._handle.flush()
        self._handle.seek(0)
        return self._handle.read().decode("utf-8", "replace")

    def discard(self) -> None:
        self._discarded = True

    def replay(self) -> None:
        if not self._discarded:
            text = self.text()
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    # In memory where the system allows (memfd): the disk that filled up may hold /tmp too.
    if hasattr(os, "memfd_create"):
        handle = os.fdopen(os.memfd_create("canopy-gdal-stderr"), "w+b")
    else:
        handle = tempfile.TemporaryFile()
    sys.stderr.flush()
    saved = os.dup(2)
    captured = _Captured(handle)
    try:
        os.dup2(handle.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        try:
            captured.replay()
        finally:
            handle.close()
