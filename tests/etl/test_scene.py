"""Scaling to 8-bit, validity masks and vegetation tests of a single scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from canopy.etl.scene import SCL_INVALID, BandSource, SceneReader, SceneSpec
from tests.etl.rasters import forest_rgb, write_raster

READER_OPTIONS = dict(gamma=1.0, percentile_range=(2.0, 98.0), ndvi_threshold=0.3,
                      gli_threshold=0.02)


def spec_for(path, scale_mode="none", bands=(1, 2, 3), **kwargs) -> SceneSpec:
    rgb = tuple(BandSource(str(path), band) for band in bands)
    return SceneSpec(scene_id="s", source="local", rgb=rgb, scale_mode=scale_mode, **kwargs)


def read_all(spec, **options):
    with rasterio.Env(), SceneReader(spec, **{**READER_OPTIONS, **options}) as reader:
        return reader.read(Window(0, 0, reader.width, reader.height))


def test_uint8_display_values_pass_through_unchanged(tmp_path):
    data = forest_rgb(20, 30)
    rgb, valid, _ = read_all(spec_for(write_raster(tmp_path / "a.tif", data)))
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, data.transpose(1, 2, 0))
    assert valid.all()


def test_reflectance_maps_fixed_range_linearly_and_clips(tmp_path):
    values = np.array([[-0.1, 0.0, 0.15, 0.3, 0.6]], dtype=np.float32)
    data = np.stack([values, values, values])
    path = write_raster(tmp_path / "refl.tif", data, crs=None, tiled=False)
    rgb, _, _ = read_all(spec_for(path, "reflectance", reflectance_range=(0.0, 0.3)))
    assert rgb[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_gamma_brightens_dark_reflectance(tmp_path):
    values = np.full((1, 4), 0.075, dtype=np.float32)
    path = write_raster(tmp_path / "g.tif", np.stack([values] * 3), crs=None, tiled=False)
    linear, _, _ = read_all(spec_for(path, "reflectance", reflectance_range=(0.0, 0.3)))
    bright, _, _ = read_all(spec_for(path, "reflectance", reflectance_range=(0.0, 0.3)), gamma=2.0)
    assert linear[0, 0, 0] == 64  # 0.25 * 255
    assert bright[0, 0, 0] == 128  # sqrt(0.25) * 255


def test_percentile_stretch_is_per_scene_not_per_tile(tmp_path):
    # Left half dark, right half bright: a per-tile stretch would make both halves look alike.
    data = np.zeros((3, 32, 64), dtype=np.uint16)
    data[:, :, :32] = 1000
    data[:, :, 32:] = 3000
    path = write_raster(tmp_path / "dn.tif", data)
    spec = spec_for(path, "percentile")
    with rasterio.Env(), SceneReader(spec, **READER_OPTIONS) as reader:
        left, _, _ = reader.read(Window(0, 0, 32, 32))
        right, _, _ = reader.read(Window(32, 0, 32, 32))
    assert left.max() < right.min()
    assert left.max() == 0 and right.min() == 255  # 2nd..98th percentile = 1000..3000


def test_nodata_counts_only_where_every_band_is_nodata(tmp_path):
    # 8-bit RGB with nodata=255: a bright canopy pixel at 255 in one band is still valid.
    data = forest_rgb(8, 8)
    data[:, 0, 0] = 255  # real nodata
    data[1, 1, 1] = 255  # saturated green only
    rgb, valid, _ = read_all(spec_for(write_raster(tmp_path / "n.tif", data, nodata=255)))
    assert not valid[0, 0] and valid[1, 1]
    assert valid.sum() == 63
    assert rgb[0, 0].tolist() == [0, 0, 0]  # invalid pixels are blanked, not left as 255


def test_nan_reflectance_is_invalid(tmp_path):
    data = np.full((3, 4, 4), 0.05, dtype=np.float32)
    data[0, 2, 2] = np.nan
    path = write_raster(tmp_path / "nan.tif", data, tiled=False)
    _, valid, _ = read_all(spec_for(path, "reflectance"))
    assert valid.sum() == 15 and not valid[2, 2]


def test_scl_drops_clouds_shadows_snow_and_marks_vegetation(tmp_path):
    scl = np.array([[4, 5, 6, 7, 2, *SCL_INVALID]], dtype=np.uint16)
    width = scl.shape[1]
    rgb = np.full((3, 1, width), 500, dtype=np.uint16)
    mask = np.ones((1, 1, width), dtype=np.uint16)
    mask[0, 0, 1] = 0  # dataMask says no data for the "not vegetated" pixel
    data = np.concatenate([rgb, mask, scl[None]], axis=0)
    path = write_raster(tmp_path / "sh.tif", data, tiled=False)
    spec = spec_for(path, "reflectance", reflectance_range=(0, 3000),
                    mask=BandSource(str(path), 4), scl=BandSource(str(path), 5))
    _, valid, vegetation = read_all(spec)
    assert valid[0].tolist() == [True, False, True, True, True] + [False] * len(SCL_INVALID)
    assert vegetation[0].tolist() == [True] + [False] * (width - 1)


def test_ndvi_used_when_nir_band_given(tmp_path):
    red = np.array([[10, 10, 40]], dtype=np.uint16)
    nir = np.array([[50, 12, 40]], dtype=np.uint16)  # NDVI 0.67, 0.09, 0
    data = np.stack([red, red, red, nir])
    path = write_raster(tmp_path / "nir.tif", data, tiled=False)
    spec = spec_for(path, "percentile", nir=BandSource(str(path), 4))
    _, _, vegetation = read_all(spec)
    assert vegetation[0].tolist() == [True, False, False]


def test_green_leaf_index_separates_canopy_from_soil_and_water(tmp_path):
    pixels = np.array([
        [40, 90, 30],    # canopy: GLI 0.43
        [132, 108, 84],  # bare soil: GLI 0
        [38, 62, 70],    # water: GLI 0.07 would pass a naive "G > R" test...
        [70, 60, 50],    # dry grass/bark: negative
    ], dtype=np.uint8).T[:, None, :]
    rgb, _, vegetation = read_all(spec_for(write_raster(tmp_path / "gli.tif", pixels, tiled=False)))
    assert vegetation[0].tolist()[:2] == [True, False]
    assert not vegetation[0, 3]


@pytest.mark.parametrize("gli_threshold, expected", [(0.0, True), (0.5, False)])
def test_gli_threshold_is_a_real_knob(tmp_path, gli_threshold, expected):
    pixel = np.array([40, 90, 30], dtype=np.uint8).reshape(3, 1, 1)  # GLI 0.43
    _, _, vegetation = read_all(spec_for(write_raster(tmp_path / "k.tif", pixel, tiled=False)),
                                gli_threshold=gli_threshold)
    assert bool(vegetation[0, 0]) is expected
