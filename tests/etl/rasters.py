"""Helpers for the etl tests: rasters written on the fly and params built from dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from canopy.params import CanopyParams, parse_params

# A small network so any tile size that is a multiple of 2 validates.
BASE: dict[str, Any] = {"model": {"dim_mults": [1, 2]}, "etl": {"workers": 1, "preview_tiles": 4}}


def make_params(**etl: Any) -> CanopyParams:
    raw = copy.deepcopy(BASE)
    raw["etl"].update(etl)
    return parse_params(raw)


def write_raster(path: Path, data: np.ndarray, *, nodata=None, crs="EPSG:32633",
                 descriptions=None, tiled=True, **profile: Any) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF (10 m pixels) and return its path."""
    count, height, width = data.shape
    options = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                   nodata=nodata, **profile)
    if crs is not None:
        options.update(crs=crs, transform=from_origin(500000, 6000000, 10, 10))
    if tiled and width >= 16 and height >= 16:
        options.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
        if descriptions:
            for index, name in enumerate(descriptions, start=1):
                dst.set_band_description(index, name)
    return path


def forest_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Green-dominated 8-bit RGB (GLI well above the default threshold)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((3, height, width), dtype=np.uint8)
    rgb[0] = rng.integers(30, 60, (height, width))
    rgb[1] = rng.integers(80, 120, (height, width))
    rgb[2] = rng.integers(20, 50, (height, width))
    return rgb
