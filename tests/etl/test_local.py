"""The local source: globs, band selection by index or name, stacks, plain images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from canopy.errors import UserError
from canopy.etl.sources.local import local_scenes
from tests.etl.rasters import forest_rgb, make_params, write_raster


def scenes(paths, **local):
    return local_scenes(make_params(source="local", tile_size=16, stride=16,
                                    local={"paths": paths, **local}).etl)


def test_glob_expands_in_sorted_order(tmp_path):
    for name in ("b", "a", "c"):
        write_raster(tmp_path / f"{name}.tif", forest_rgb(16, 16))
    found = scenes([str(tmp_path / "*.tif")])
    assert [s.scene_id for s in found] == ["a", "b", "c"]


def test_bands_by_name(tmp_path):
    data = np.stack([np.full((16, 16), v, dtype=np.float32) for v in (0.1, 0.2, 0.3, 0.4)])
    path = write_raster(tmp_path / "s2.tif", data, descriptions=["B2", "B3", "B4", "B8"])
    (scene,) = scenes([str(path)], bands=["B4", "B3", "B2"], nir_band="b8")
    assert [b.band for b in scene.rgb] == [3, 2, 1]
    assert scene.nir.band == 4
    assert scene.scale_mode == "reflectance"  # float data, scale: auto
    assert scene.vegetation_method == "ndvi"


@pytest.mark.parametrize("dtype, mode", [(np.uint8, "none"), (np.float32, "reflectance"),
                                         (np.uint16, "percentile"), (np.int16, "percentile")])
def test_auto_scaling_by_dtype(tmp_path, dtype, mode):
    path = write_raster(tmp_path / "x.tif", np.ones((3, 16, 16), dtype=dtype))
    assert scenes([str(path)])[0].scale_mode == mode


def test_explicit_scale_wins_over_auto(tmp_path):
    path = write_raster(tmp_path / "x.tif", np.ones((3, 16, 16), dtype=np.uint8))
    assert scenes([str(path)], scale="percentile")[0].scale_mode == "percentile"


def test_band_per_file_stack(tmp_path):
    paths = [str(write_raster(tmp_path / f"LT5_scene_B{i}.TIF", forest_rgb(16, 16)[:1]))
             for i in (1, 2, 3, 4)]
    (scene,) = scenes([[paths[2], paths[1], paths[0], paths[3]]], nir_band="B4")
    assert [b.path for b in scene.rgb] == [paths[2], paths[1], paths[0]]
    assert scene.nir.path == paths[3]
    assert scene.scene_id == "lt5-scene"
    (by_name,) = scenes([paths], bands=["B3", "B2", "B1"])
    assert [b.path for b in by_name.rgb] == [paths[2], paths[1], paths[0]]


def test_entry_mapping_overrides_settings(tmp_path):
    rgb = write_raster(tmp_path / "rgb.tif", forest_rgb(16, 16))
    dn = write_raster(tmp_path / "dn.tif", np.ones((4, 16, 16), dtype=np.uint8))
    found = scenes([str(rgb), {"files": str(dn), "bands": [3, 2, 1], "scale": "percentile",
                               "nir_band": 4}])
    assert found[0].scale_mode == "none" and found[0].nir is None
    assert [b.band for b in found[1].rgb] == [3, 2, 1]
    assert found[1].scale_mode == "percentile" and found[1].nir.band == 4


def test_same_stem_in_two_folders_gets_distinct_ids(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        write_raster(tmp_path / folder / "tile.tif", forest_rgb(16, 16))
    found = scenes([str(tmp_path / "x" / "tile.tif"), str(tmp_path / "y" / "tile.tif")])
    assert [s.scene_id for s in found] == ["tile", "tile-2"]


def test_plain_png_without_georeference(tmp_path):
    path = tmp_path / "aerial.png"
    Image.fromarray(forest_rgb(20, 20).transpose(1, 2, 0)).save(path)
    (scene,) = scenes([str(path)])
    assert scene.scale_mode == "none"


def test_stack_rejects_multiband_files(tmp_path):
    rgb = write_raster(tmp_path / "rgb.tif", forest_rgb(16, 16))
    with pytest.raises(UserError, match="takes single-band files"):
        scenes([[str(rgb), str(rgb), str(rgb)]])


def test_unknown_band_name_lists_the_names(tmp_path):
    path = write_raster(tmp_path / "n.tif", forest_rgb(16, 16), descriptions=["R", "G", "B"])
    with pytest.raises(UserError, match="no band named 'B8'.*band names: R, G, B"):
        scenes([str(path)], bands=["R", "G", "B8"])


def test_an_entry_name_is_its_tiles_region(tmp_path):
    for name in ("p1", "p2"):
        write_raster(tmp_path / f"{name}.tif", forest_rgb(16, 16))
    named, plain = scenes([{"files": str(tmp_path / "p*.tif"), "name": "HARV"},
                           str(tmp_path / "p1.tif")])[:3:2]
    assert named.region == "HARV" and plain.region == "p1"  # the file stem then
    with pytest.raises(Exception, match="name"):
        scenes([{"files": str(tmp_path / "p1.tif"), "name": "bad name!"}])
