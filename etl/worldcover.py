"""A forest mask from ESA WorldCover 10 m (2021, v200): class 10, "Tree cover".

For each georeferenced scene, WorldCover is read through a warped view aligned to the scene's
own grid (nearest neighbour), one view per 3x3-degree WorldCover tile the scene touches,
combined into one mask, so a scene across a tile edge gets both sides. The mask is cached
under etl.worldcover.cache_dir as a 0/1 GeoTIFF on the scene's grid, named by a hash of the
grid and the WorldCover URL, so a re-run reads nothing remote. The scene then carries it as its
`tree` band and the tiler measures each tile's tree cover from it (etl.min_tree_cover).

WorldCover has no tile over open sea: a missing tile (HTTP 404, or a missing local file) counts
as no tree cover, and the run says so.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from tqdm.auto import tqdm

from canopy.errors import UserError
from canopy.etl.params import EtlParams
from canopy.etl.scene import BandSource, SceneSpec
from canopy.etl.sources import http
from canopy.etl.sources.cog import MissingRaster, RemoteReader, remote_env
from canopy.hashing import sha256_json

LOGGER = logging.getLogger(__name__)

TREE_COVER = 10  # WorldCover class "Tree cover"
TILE_DEGREES = 3
CHUNK = 2048  # pixels a side of the scene read per warped view
CACHE_FORMAT = 1


def tile_name(lat: int, lon: int) -> str:
    """WorldCover's name of the tile whose south-west corner is (lat, lon): N45E006, S03W057."""
    return f"{'N' if lat >= 0 else 'S'}{abs(lat):02d}{'E' if lon >= 0 else 'W'}{abs(lon):03d}"


def tiles_over(bounds: tuple[float, float, float, float]) -> list[str]:
    """Names of the WorldCover tiles that a WGS84 bbox (west, south, east, north) touches."""
    west, south, east, north = bounds
    step = TILE_DEGREES
    lats = range(math.floor(south / step) * step, math.ceil(north / step) * step, step)
    lons = range(math.floor(west / step) * step, math.ceil(east / step) * step, step)
    return [tile_name(lat, lon) for lat in lats for lon in lons]


def with_tree_cover(scenes: list[SceneSpec], etl: EtlParams, *, progress: bool) -> list[SceneSpec]:
    """`scenes` with their `tree` band: the WorldCover mask on each scene's grid."""
    params = etl.worldcover
    cache_dir = Path(params.cache_dir)
    stop = threading.Event()
    retrier = http.Retrier(service="WorldCover", source="worldcover", section="etl.worldcover",
                           max_retries=params.max_retries, stop=stop,
                           base_seconds=http.RETRY_BASE_SECONDS)
    reader = RemoteReader(retrier, remote_env(params.max_retries, http.RETRY_BASE_SECONDS),
                          "WorldCover tile", "url")
    out = []
    for scene in tqdm(scenes, desc="worldcover", unit="scene", disable=None if progress else True):
        grid = _scene_grid(scene)
        key = sha256_json({"format": CACHE_FORMAT, "url": params.url, **grid})
        path = cache_dir / f"tree-{key[:40]}.tif"
        if not _cached_ok(path, key):
            cache_dir.mkdir(parents=True, exist_ok=True)
            _write_mask(path, key, grid, params.url, reader)
        out.append(replace(scene, tree=BandSource(str(path), 1)))
    return out


def _scene_grid(scene: SceneSpec) -> dict[str, Any]:
    with rasterio.open(scene.rgb[0].path) as dataset:
        if dataset.crs is None:
            raise UserError(
                f"etl.min_tree_cover needs georeferenced scenes, and {scene.scene_id} "
                f"({scene.source}: {scene.provenance[0]}) has no georeference: give GeoTIFFs, or "
                "set etl.min_tree_cover: 0")
        return {"crs": dataset.crs.to_wkt(), "transform": list(dataset.transform)[:6],
                "width": dataset.width, "height": dataset.height}


def _cached_ok(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with rasterio.open(path) as src:
            return src.tags().get("request_key") == key
    except Exception:  # noqa: BLE001  (unreadable = not cached)
        return False


def _write_mask(path: Path, key: str, grid: dict[str, Any], template: str,
                reader: RemoteReader) -> None:
    """The 0/1 tree-cover mask of the scene's grid, chunk by chunk, written beside `path` and
    renamed when complete."""
    crs, transform = rasterio.crs.CRS.from_wkt(grid["crs"]), rasterio.Affine(*grid["transform"])
    width, height = grid["width"], grid["height"]
    west, south, east, north = rasterio.transform.array_bounds(height, width, transform)
    lonlat = transform_bounds(crs, "EPSG:4326", west, south, east, north, densify_pts=21)
    urls = [(name, template.replace("{tile}", name)) for name in tiles_over(lonlat)]
    present = [(name, url) for name, url in urls if _exists(name, url, reader)]
    missing = sorted(set(urls) - set(present))
    if missing:
        http.notify("worldcover", f"no WorldCover tile {', '.join(n for n, _ in missing)} "
                    "(open sea, or outside the map): counted as no tree cover")
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
               "crs": crs, "transform": transform, "compress": "deflate", "tiled": True,
               "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        with rasterio.open(partial, "w", **profile) as dst:
            for row in range(0, height, CHUNK):
                for col in range(0, width, CHUNK):
                    window = Window(col, row, min(CHUNK, width - col), min(CHUNK, height - row))
                    tree = np.zeros((int(window.height), int(window.width)), dtype=np.uint8)
                    for name, url in present:
                        tree |= reader.run(url, name, lambda src: _warped_tree(
                            src, crs, transform, width, height, window))
                    dst.write(tree, 1, window=window)
            dst.update_tags(request_key=key, source="ESA WorldCover 10m 2021 v200",
                            tiles=",".join(name for name, _ in present))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _exists(name: str, url: str, reader: RemoteReader) -> bool:
    if "://" not in url and not Path(url).is_file():
        return False
    try:
        reader.run(url, name, lambda src: src.count)
    except MissingRaster:
        return False
    return True


def _warped_tree(src: Any, crs: Any, transform: Any, width: int, height: int,
                 window: Window) -> np.ndarray:
    """1 where WorldCover says tree cover in `window` of the scene's grid, 0 elsewhere (and
    outside this WorldCover tile)."""
    with WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                   resampling=Resampling.nearest, nodata=0) as vrt:
        classes = vrt.read(1, window=window)
    return (classes == TREE_COVER).astype(np.uint8)
