"""Sentinel-2 COGs in the c1 layout made from a real L2A raster of ../shared/data, STAC items
pointing at them, and a WorldCover-like COG, for the STAC stand-in.

The real raster (RStoolbox sen2_trombetas_L2A.tif: rainforest, a town and a river in Para,
surface reflectance) is projected to its UTM zone at 10 m, mirrored out to `size` pixels, and
written as the collection stores it: uint16 DN = reflectance x 10000 (+ 1000 from processing
baseline 04.00 on), nodata 0 (a strip of it at the left edge, as at a swath edge), and a scene
classification (SCL) COG at 20 m whose classes come from the data (vegetation, bare, water)
with a cloud and a cloud shadow put in at known places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.shutil import copy as raster_copy
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform_bounds

SOURCE = "RStoolbox/sen2_trombetas_L2A.tif"
EPSG = 32721  # UTM 21S
COLLECTION = "sentinel-2-c1-l2a"
# SCL rows/cols (20 m) of the cloud and of its shadow; at 10 m they are twice these.
CLOUD = (slice(20, 40), slice(30, 60))
SHADOW = (slice(40, 50), slice(60, 80))
NODATA_COLS = 8  # 10 m columns of DN 0 / SCL 0 at the left edge


@dataclass
class Scene:
    reflectance: np.ndarray  # (3, size, size) float32: red, green, blue
    scl: np.ndarray  # (size / 2, size / 2) uint8
    transform: Any
    bbox: tuple[float, float, float, float]  # WGS84


def real_scene(shared_data: Path, size: int) -> Scene:
    """The real raster's red, green, blue and NIR at 10 m in UTM, mirrored to size x size."""
    with rasterio.open(shared_data / SOURCE) as src:
        bands = src.read([4, 3, 2, 8])  # B4, B3, B2, B8
        left, bottom, right, top = transform_bounds(src.crs, f"EPSG:{EPSG}", *src.bounds)
        x0, y0 = np.floor(left / 20) * 20, np.ceil(top / 20) * 20
        transform = from_origin(x0, y0, 10, 10)
        width, height = int((right - x0) // 10), int((y0 - bottom) // 10)
        out = np.zeros((4, height, width), dtype=np.float32)
        reproject(bands, out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs=f"EPSG:{EPSG}", resampling=Resampling.bilinear)
    out = out[:, 2:-2, 2:-2]  # reprojection edges
    transform = transform * rasterio.Affine.translation(2, 2)
    reps = (-(-size // out.shape[1]), -(-size // out.shape[2]))
    tiled = np.pad(out, ((0, 0), (0, reps[0] * out.shape[1] - out.shape[1]),
                         (0, reps[1] * out.shape[2] - out.shape[2])), mode="symmetric")
    data = tiled[:, :size, :size]
    # The mirrored grid starts at the (20 m aligned) corner the reprojection was snapped to.
    transform = from_origin(transform.c - 20, transform.f + 20, 10, 10)
    red, nir = data[0], data[3]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl10 = np.where(ndvi > 0.5, 4, np.where(nir < 0.05, 6, 5)).astype(np.uint8)
    scl = scl10[::2, ::2].copy()
    scl[CLOUD] = 9
    scl[SHADOW] = 3
    scl[:, : NODATA_COLS // 2] = 0
    bounds = (transform.c, transform.f - 10 * size, transform.c + 10 * size, transform.f)
    bbox = transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *bounds)
    return Scene(np.clip(data[:3], 0.0, 1.0), scl, transform, bbox)


def dn(reflectance: np.ndarray, offset: int) -> np.ndarray:
    """The stored digital numbers: DN 0 is nodata, so valid pixels are at least 1."""
    values = np.rint(reflectance * 10000.0) + offset
    return np.clip(values, 1, 65535).astype(np.uint16)


def write_cog(path: Path, data: np.ndarray, transform: Any, crs: str, nodata: float | None) -> None:
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
               "dtype": data.dtype, "crs": crs, "transform": transform, "nodata": nodata}
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
        with memfile.open() as src:
            raster_copy(src, path, driver="COG", BLOCKSIZE=128, COMPRESS="DEFLATE",
                        OVERVIEWS="NONE")


def write_item_cogs(scene: Scene, folder: Path, name: str, offset: int) -> dict[str, str]:
    """The four COGs of one item; returns role -> file name under `folder`."""
    size = scene.reflectance.shape[1]
    values = dn(scene.reflectance, offset)
    scl10 = np.repeat(np.repeat(scene.scl, 2, axis=0), 2, axis=1)
    values[:, scl10 == 0] = 0
    files = {}
    for index, role in enumerate(("red", "green", "blue")):
        files[role] = f"{name}/{role}.tif"
        write_cog(folder / files[role], values[index:index + 1], scene.transform, f"EPSG:{EPSG}", 0)
    files["scl"] = f"{name}/scl.tif"
    scl_transform = scene.transform * rasterio.Affine.scale(2)
    write_cog(folder / files["scl"], scene.scl[None], scl_transform, f"EPSG:{EPSG}", 0)
    assert scene.scl.shape == (size // 2, size // 2)
    return files


def stac_item(item_id: str, scene: Scene, files: dict[str, str], *, datetime: str, cloud: float,
              baseline: str, collection: str = COLLECTION) -> dict[str, Any]:
    """A STAC item as Earth Search's c1 collection writes it (hrefs on "{base}/files/")."""
    size = scene.reflectance.shape[1]
    west, south, east, north = scene.bbox
    assets = {}
    for role, name in files.items():
        res = 20 if role == "scl" else 10
        transform = scene.transform * rasterio.Affine.scale(res / 10)
        assets[role] = {"href": f"{{base}}/files/{name}", "type": "image/tiff; application=geotiff",
                        "proj:shape": [size * 10 // res, size * 10 // res],
                        "proj:transform": list(transform)[:6]}
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
        "bbox": [west, south, east, north],
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                         [west, north], [west, south]]]},
        "properties": {"datetime": datetime, "eo:cloud_cover": cloud,
                       "s2:processing_baseline": baseline, "proj:code": f"EPSG:{EPSG}",
                       "grid:code": "MGRS-21MXT"},
        "assets": assets, "links": [],
    }


def write_worldcover(scene: Scene, folder: Path) -> tuple[str, float]:
    """A WorldCover-like COG in EPSG:4326 at WorldCover's 1/12000 degree, named as the real
    tile (S03W057) but covering only the scene: tree cover (10) west of the scene's middle
    longitude, grassland (30) east of it. Returns its name and that longitude."""
    west, south, east, north = scene.bbox
    res = 1 / 12000
    x0, y0 = np.floor(west / res - 10) * res, np.ceil(north / res + 10) * res
    width, height = int((east - x0) / res) + 20, int((y0 - south) / res) + 20
    middle = (west + east) / 2
    lons = x0 + (np.arange(width) + 0.5) * res
    classes = np.where(lons < middle, 10, 30).astype(np.uint8)
    data = np.broadcast_to(classes, (height, width))[None].copy()
    name = "worldcover/ESA_WorldCover_10m_2021_v200_S03W057_Map.tif"
    write_cog(folder / name, data, from_origin(x0, y0, res, res), "EPSG:4326", 0)
    return name, middle
