"""The WorldCover tree-cover mask: tile names, mosaics across tile edges, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from canopy.errors import UserError
from canopy.etl.pipeline import run_etl
from canopy.etl.scene import BandSource, SceneReader, SceneSpec
from canopy.etl.worldcover import tiles_over, with_tree_cover
from tests.etl.rasters import forest_rgb, make_params

RES = 1 / 12000  # WorldCover's pixel, in degrees


def test_tile_names_follow_worldcover():
    assert tiles_over((-56.4, -1.5, -56.3, -1.4)) == ["S03W057"]
    assert tiles_over((5.5, 45.2, 6.1, 46.0)) == ["N45E003", "N45E006"]
    assert tiles_over((-0.1, -0.1, 0.1, 0.1)) == ["S03W003", "S03E000", "N00W003", "N00E000"]


def write_worldcover(path, west, north, width, height, value):
    data = np.full((1, height, width), value, dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", crs="EPSG:4326", nodata=0,
                       transform=from_origin(west, north, RES, RES)) as dst:
        dst.write(data)


def test_a_scene_across_a_worldcover_tile_edge_gets_both_sides(tmp_path):
    # Tree cover on both sides of lon -57 (the edge of tiles S03W060 and S03W057).
    write_worldcover(tmp_path / "WC_S03W060.tif", -57.01, -1.49, 120, 240, 10)
    write_worldcover(tmp_path / "WC_S03W057.tif", -57.0, -1.49, 120, 240, 10)
    scene_path = tmp_path / "scene.tif"
    with rasterio.open(scene_path, "w", driver="GTiff", width=96, height=96, count=3,
                       dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(-57.004, -1.495, RES, RES)) as dst:
        dst.write(forest_rgb(96, 96))
    scene = SceneSpec("scene", "local", tuple(BandSource(str(scene_path), b) for b in (1, 2, 3)),
                      "none")
    etl = make_params(source="local", local={"paths": ["unused.tif"]}, min_tree_cover=0.5, worldcover={
        "url": str(tmp_path / "WC_{tile}.tif"), "cache_dir": str(tmp_path / "cache")}).etl
    [masked] = with_tree_cover([scene], etl, progress=False)
    with SceneReader(masked, gamma=1.0, percentile_range=(2, 98), ndvi_threshold=0.3,
                     gli_threshold=0.02) as reader:
        tree = reader.read_tree(Window(0, 0, 96, 96))
    assert tree.all()  # both halves: the mask is a mosaic of the two tiles


def test_missing_worldcover_tiles_count_as_no_tree_cover(tmp_path, capsys):
    scene_path = tmp_path / "scene.tif"
    with rasterio.open(scene_path, "w", driver="GTiff", width=64, height=64, count=3,
                       dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(-30.0, 0.5, RES, RES)) as dst:
        dst.write(forest_rgb(64, 64))
    scene = SceneSpec("sea", "local", tuple(BandSource(str(scene_path), b) for b in (1, 2, 3)),
                      "none")
    etl = make_params(source="local", local={"paths": ["unused.tif"]}, min_tree_cover=0.5, worldcover={
        "url": str(tmp_path / "WC_{tile}.tif"), "cache_dir": str(tmp_path / "cache")}).etl
    [masked] = with_tree_cover([scene], etl, progress=False)
    with rasterio.open(masked.tree.path) as mask:
        assert not mask.read().any()
    assert "no WorldCover tile N00W030" in capsys.readouterr().err


def test_a_source_without_georeference_says_it_cannot(shared_data, tmp_path):
    params = make_params(source="local", tile_size=64, stride=64, min_tree_cover=0.5,
                         local={"paths": [str(shared_data / "DeepForest/SOAP_031.png")]})
    with pytest.raises(UserError, match="needs georeferenced scenes.*has no georeference"):
        run_etl(params, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_synthetic_scenes_with_a_tree_cover_threshold_are_refused():
    with pytest.raises(UserError, match="synthetic scenes have none"):
        make_params(source="synthetic", min_tree_cover=0.5)
