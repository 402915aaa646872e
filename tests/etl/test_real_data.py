"""The etl on the team's real forest rasters (../shared/data); skipped where absent."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import rasterio
from PIL import Image

from canopy.etl.pipeline import run_etl
from tests.etl.rasters import make_params


def tiles_of(root):
    tiles = {}
    for shard in sorted(root.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                if name.endswith(".png"):
                    tiles[name[:-4]] = np.asarray(Image.open(io.BytesIO(tar.extractfile(name).read())))
    return tiles


def run_local(tmp_path, paths, **etl):
    params = make_params(source="local", tile_size=128, stride=128, local={"paths": paths}, **etl)
    return run_etl(params, tmp_path / "out", progress=False)


def test_neon_orthophoto_with_nodata_255(tmp_path, shared_data):
    path = str(shared_data / "DeepForest" / "OSBS_029.tif")
    result = run_local(tmp_path, [path])
    assert result.filters.candidates == 9  # 400 x 400 -> 3 x 3 full tiles
    tiles = tiles_of(tmp_path / "out")
    with rasterio.open(path) as src:
        window = src.read(window=((128, 256), (128, 256))).transpose(1, 2, 0)
        crs = src.crs.to_string()
    centre = tiles["osbs-029_000128_000128"]
    # Pixels with 255 in one band only are real canopy and kept as they are.
    assert ((window == 255).any(axis=-1) & ~(window == 255).all(axis=-1)).any()
    keep = ~(window == 255).all(axis=-1)
    np.testing.assert_array_equal(centre[keep], window[keep])
    meta = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert meta["sources"][0]["crs"] == crs


def test_landsat_band_per_file_scene_with_percentile_stretch(tmp_path, shared_data):
    folder = shared_data / "RStoolbox"
    bands = [str(folder / f"LT52240631988227CUB02_B{i}.TIF") for i in (3, 2, 1, 4)]
    result = run_local(tmp_path, [{"files": bands, "scale": "percentile", "nir_band": "B4"}],
                       min_vegetation_fraction=0.3)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (scene,) = manifest["sources"]
    assert scene["vegetation_method"] == "ndvi" and scene["scaling"]["mode"] == "percentile"
    assert result.filters.candidates == 4 and result.filters.kept >= 1
    # The stretch uses the whole scene's range: raw DN 0..255 span a wider display range.
    tile = next(iter(tiles_of(tmp_path / "out").values()))
    assert tile.max() - tile.min() > 150


def test_sentinel2_float_reflectance_by_band_name(tmp_path, shared_data):
    path = str(shared_data / "RStoolbox" / "sen2_trombetas_L2A.tif")
    # This product carries the +0.1 (BOA_ADD_OFFSET 1000) of processing baseline 04.00.
    entry = {"files": path, "bands": ["B4", "B3", "B2"], "nir_band": "B8"}
    result = run_local(tmp_path, [entry], reflectance_range=[0.1, 0.25], gamma=1.5,
                       min_vegetation_fraction=0.5)
    assert result.filters.kept == 1
    (tile,) = tiles_of(tmp_path / "out").values()
    assert 30 < tile.mean() < 200  # neither black nor blown out


def test_plain_pngs_and_geographic_crs(tmp_path, shared_data):
    paths = [str(shared_data / "DeepForest" / "*.png"), str(shared_data / "opengeos-data" / "2020.tif")]
    result = run_local(tmp_path, paths, min_vegetation_fraction=0.0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    crs = {s["scene"]: s["crs"] for s in manifest["sources"]}
    assert crs["soap-031"] is None and crs["2020"] == "EPSG:4326"
    assert result.filters.kept == result.filters.candidates
