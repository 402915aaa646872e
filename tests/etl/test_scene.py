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


# --- big rasters: each row decoded once, claimed sizes bounded ------------------------------


def _save_png(path, rgb, mode="RGB", **options):
    from PIL import Image

    Image.fromarray(rgb, mode).save(path, **options)
    return path


def _reads_of_a_scene(path, monkeypatch, tile=16, stride=8, read_width=40):
    """The windows SceneReader asked GDAL for while cutting every tile, and the tiles; reads
    are at most `read_width` columns wide where windowed (so rows take several reads)."""
    from canopy.etl import tiling

    monkeypatch.setattr(tiling, "MAX_READ_WIDTH", read_width)
    windows = []
    real = SceneReader._read_bands

    def spy(self, bands, window=None, out_shape=None):
        if window is not None:
            windows.append(window)
        return real(self, bands, window, out_shape)

    monkeypatch.setattr(SceneReader, "_read_bands", spy)
    with rasterio.Env(), SceneReader(spec_for(path), **READER_OPTIONS) as reader:
        tiles = [(c.row, c.col, c.rgb.copy(), c.valid_fraction, c.vegetation_fraction)
                 for c in tiling.scene_candidates(reader, tile, stride)]
    return windows, tiles


def _decoded_once_from_the_top(windows, width, height):
    """Every read is full-width, each starts where the last ended: no row is read twice,
    nothing above the decoder's position is asked for (which would restart it)."""
    assert all(w.col_off == 0 and w.width == width for w in windows), windows
    assert [int(w.row_off) for w in windows] == [0, *np.cumsum([int(w.height) for w in
                                                               windows])[:-1].tolist()]
    assert sum(int(w.height) for w in windows) <= height


@pytest.mark.parametrize("kind", ["png", "jpeg", "rgba png", "single-strip deflate tiff"])
def test_rasters_decoded_from_the_top_are_read_once_in_order(tmp_path, monkeypatch, kind):
    """A wide PNG or JPEG, or a TIFF in one compressed strip, restarts its decoder for any
    row above the last one read: read window by window (several per row of tiles, rows
    overlapping at stride < tile) that was quadratic. Their tiles are the same as before."""
    data = forest_rgb(56, 100, seed=4).transpose(1, 2, 0).copy()
    if kind == "png":
        path = _save_png(tmp_path / "wide.png", data)
    elif kind == "jpeg":
        path = _save_png(tmp_path / "wide.jpg", data, quality=95)
    elif kind == "rgba png":
        rgba = np.dstack([data, np.full(data.shape[:2], 255, np.uint8)])
        rgba[:10, :30, 3] = 0  # transparent corner: invalid pixels
        path = _save_png(tmp_path / "wide.png", rgba, "RGBA")
    else:
        path = write_raster(tmp_path / "strip.tif", data.transpose(2, 0, 1), tiled=False,
                            compress="deflate", blockysize=56)
    windows, tiles = _reads_of_a_scene(path, monkeypatch)
    _decoded_once_from_the_top(windows, 100, 56)
    with rasterio.open(path) as dataset:  # the same tiles as a direct read of each window
        pixels = dataset.read([1, 2, 3]).transpose(1, 2, 0)
        alpha = dataset.read(4) if dataset.count == 4 else None
    assert len(tiles) == len(range(0, 41, 8)) * len(range(0, 85, 8))
    for row, col, rgb, valid_fraction, _ in tiles:
        expected = pixels[row:row + 16, col:col + 16].copy()
        if alpha is not None:
            window_alpha = alpha[row:row + 16, col:col + 16]
            expected[window_alpha == 0] = 0
            assert valid_fraction == (window_alpha > 0).mean()
        np.testing.assert_array_equal(rgb, expected)


def test_tiled_rasters_are_still_read_window_by_window(tmp_path, monkeypatch):
    path = write_raster(tmp_path / "tiled.tif", forest_rgb(48, 96))  # 16 px tiles
    windows, _ = _reads_of_a_scene(path, monkeypatch)
    assert max(int(w.width) for w in windows) <= 40  # bounded memory whatever the width


def _run_etl_on(tmp_path, path, **etl):
    import yaml
    from typer.testing import CliRunner

    from canopy.cli import app

    params = {"etl": {"source": "local", "local": {"paths": [str(path)]}, "tile_size": 16,
                      "stride": 16, **etl}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return CliRunner().invoke(app, ["etl", "-q", "--params", str(tmp_path / "params.yaml"),
                                    "--tiles", str(tmp_path / "out")])


def test_a_raster_claiming_too_many_pixels_is_refused_at_once(tmp_path):
    """A sparse BigTIFF of 200000 x 200000 px is a few kB on disk: nothing bounded the
    pixel count, and reading it took about 10 minutes."""
    import time

    path = tmp_path / "sparse.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200_000, height=200_000, count=3,
                       dtype="uint8", tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", BIGTIFF="YES", SPARSE_OK="TRUE"):
        pass
    assert path.stat().st_size < 10_000_000
    started = time.monotonic()
    result = _run_etl_on(tmp_path, path)
    assert time.monotonic() - started < 30
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"canopy etl: error: {path} claims 200000x200000 pixels (40,000 "
                    "megapixels), more than etl.max_scene_megapixels (2500): raise "
                    "etl.max_scene_megapixels if it is real, or cut it into smaller files")
    assert not (tmp_path / "out").exists()
    raised = _run_etl_on(tmp_path, write_raster(tmp_path / "ok.tif", forest_rgb(64, 64)),
                         max_scene_megapixels=0.001)
    assert raised.exit_code == 2 and "more than etl.max_scene_megapixels (0.001)" in raised.stderr


def test_a_raster_too_wide_to_read_from_the_top_is_refused_naming_the_param(tmp_path):
    path = _save_png(tmp_path / "wide.png", np.zeros((64, 30_000, 3), np.uint8))
    result = _run_etl_on(tmp_path, path, max_read_mb=16, tile_size=64, stride=64)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"canopy etl: error: {path} (PNG, 30000 px wide) can only be "
                           "decoded from its top")
    assert "more than etl.max_read_mb (16); raise etl.max_read_mb" in line


@pytest.mark.parametrize("mode", ["reflectance", "percentile"])
def test_values_near_the_float32_limit_map_without_overflow_warnings(tmp_path, mode):
    import warnings

    data = np.full((3, 20, 20), 0.1, np.float32)
    data[:, :5] = 3.0e38
    data[:, 5:10] = -3.0e38
    path = write_raster(tmp_path / "huge.tif", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warnings
        rgb, valid, _ = read_all(spec_for(path, mode, reflectance_range=(0.0, 0.3)))
    assert valid.all()
    assert (rgb[:5] == 255).all() and (rgb[5:10] == 0).all()
    # Percentiles of +-3e38: 0.1 is mid-range; reflectance 0..0.3: a third of the way.
    assert (rgb[10:] == (128 if mode == "percentile" else 85)).all()
