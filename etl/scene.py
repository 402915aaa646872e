"""A scene: one raster (or a stack of single-band rasters) read window by window.

`SceneReader.read(window)` returns the window as 8-bit RGB plus two boolean masks:
`valid` (not nodata, not masked, not cloud/shadow/snow where a scene classification exists) and
`vegetation`. Memory is bounded by the window, never by the raster: every read is windowed, and
GDAL's block cache is capped (it defaults to 5% of RAM).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from canopy.errors import UserError

GDAL_ENV = {"GDAL_CACHEMAX": 64, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}  # MiB

# Sentinel-2 L2A scene classification (SCL) classes.
SCL_INVALID = (0, 1, 3, 8, 9, 10, 11)  # no data, defective, cloud shadow, clouds, cirrus, snow
SCL_VEGETATION = 4

# Largest side of the decimated read used for per-scene percentile statistics.
STATS_MAX_SIDE = 1024


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
    source: str  # "local" | "sentinelhub" | "synthetic"
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
    # The tiles' `region` (the synthetic kind, the local entry's name); None: the scene id
    region: str | None = None

    @property
    def files(self) -> list[str]:
        bands = [*self.rgb, self.nir, self.mask, self.scl]
        return sorted({b.path for b in bands if b is not None})

    @property
    def provenance(self) -> list[str]:
        return list(self.origin) if self.origin is not None else self.files

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
        self._check_aligned()
        self.dtype = np.dtype(first.dtypes[spec.rgb[0].band - 1])
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
                    out_shape: tuple[int, int] | None) -> np.ndarray | None:
        """Valid pixels of one band (None = all valid), from the data where GDAL would
        otherwise read the band a second time to build a nodata mask."""
        dataset = self._datasets[band.path]
        flags = dataset.mask_flag_enums[band.band - 1]
        if flags == [MaskFlags.all_valid]:
            return None
        if MaskFlags.nodata in flags:
            nodata = dataset.nodatavals[band.band - 1]
            return ~np.isnan(values) if np.isnan(nodata) else values != nodata
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
        arrays = self._read_bands([*self.spec.rgb, *extras.values()], window, out_shape)
        raw, extra = arrays[:3], dict(zip(extras, arrays[3:]))
        # A pixel is nodata only where every RGB band says so: 8-bit RGB files often use 255
        # as nodata while real bright canopy pixels also reach 255 in one band.
        valid = np.zeros(raw[0].shape, dtype=bool)
        for band, values in zip(self.spec.rgb, raw):
            band_valid = self._band_valid(band, values, window, out_shape)
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

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, valid bool HxW, vegetation bool HxW) for `window`."""
        raw, valid, extra = self._read(window)
        rgb = self._to_uint8(raw)
        rgb[~valid] = 0
        vegetation = self._vegetation(raw, rgb, extra) & valid
        return rgb, valid, vegetation

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
            unit = (values.astype(np.float32) - scaling.low[i]) / (scaling.high[i] - scaling.low[i])
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
            with np.errstate(divide="ignore", invalid="ignore"):
                ndvi = (nir - red) / (nir + red)
            return np.nan_to_num(ndvi, nan=-1.0) > self.ndvi_threshold
        # Green Leaf Index GLI = (2G - R - B) / (2G + R + B) (Louhaichi et al. 2001), on the
        # 8-bit display values: true-colour only, so it is comparable across scenes.
        r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))  # |2G - R - B| <= 1020
        g2 = g + g
        return (g2 - r - b) > np.float32(self.gli_threshold) * (g2 + r + b)

def open_raster(path: str):
    """Open a raster or raise a one-line UserError that says what is wrong with it."""
    if not Path(path).exists():
        raise UserError(f"{path}: no such file; check etl.local.paths")
    try:
        return rasterio.open(path)
    except RasterioIOError as err:
        detail = str(err).split("\n")[0]
        raise UserError(
            f"{path}: not a readable raster ({detail}); give GeoTIFF/COG, PNG or JPEG files"
        ) from None
