"""Local rasters resampled to one ground sample distance (etl.local.target_gsd)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import rasterio

from canopy.errors import UserError
from canopy.etl.pipeline import run_etl
from tests.etl.rasters import make_params

OSBS = "DeepForest/OSBS_029.tif"  # 400 x 400 px at 0.1 m
SOAP = "DeepForest/SOAP_031.png"  # 400 x 400 px, no georeference


def first_tiles(out):
    metas = {}
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    metas[meta["key"]] = meta
    return metas


def test_orthophoto_at_0_1_m_becomes_0_3_m_tiles(shared_data, tmp_path):
    params = make_params(source="local", tile_size=64, stride=64, min_vegetation_fraction=0.0,
                         min_valid_fraction=0.0,
                         local={"paths": [str(shared_data / OSBS)], "target_gsd": 0.3})
    result = run_etl(params, tmp_path / "out", progress=False)
    assert result.filters.candidates == 4  # 133 x 133 px at 0.3 m: 2 x 2 tiles of 64
    metas = first_tiles(tmp_path / "out")
    assert {meta["gsd"] for meta in metas.values()} == {0.3}
    assert {meta["region"] for meta in metas.values()} == {"osbs-029"}
    meta = metas["osbs-029_000000_000000"]
    left, bottom, right, top = meta["bounds"]
    assert right - left == pytest.approx(64 * 0.3) and top - bottom == pytest.approx(64 * 0.3)
    assert meta["files"] == [str(shared_data / OSBS)]  # provenance is the original file
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sources"][0]["width"] == 133 and manifest["sources"][0]["gsd"] == 0.3


def test_resampling_averages_the_source_pixels(shared_data, tmp_path):
    from canopy.etl.scene import SceneReader
    from canopy.etl.sources.local import local_scenes

    params = make_params(source="local", local={"paths": [str(shared_data / OSBS)],
                                                "target_gsd": 0.3})
    [scene] = local_scenes(params.etl, tmp_path)
    with SceneReader(scene, gamma=1.0, percentile_range=(2, 98), ndvi_threshold=0.3,
                     gli_threshold=0.02) as reader:
        rgb, _, _ = reader.read(rasterio.windows.Window(0, 0, 8, 8))
        assert reader.gsd == 0.3
    with rasterio.open(shared_data / OSBS) as src:
        original = src.read(window=rasterio.windows.Window(0, 0, 24, 24)).astype(np.float64)
    # The average leaves out the band's nodata (255): a block's other pixels decide it.
    blocks = np.ma.masked_equal(original, 255).reshape(3, 8, 3, 8, 3)
    expected = blocks.mean(axis=(2, 4)).filled(255).transpose(1, 2, 0)
    assert np.abs(rgb.astype(np.float64) - expected).max() <= 0.5 + 1e-9  # rounded average
    assert (original == 255).any()  # the window holds such pixels


def test_a_png_needs_its_gsd_when_a_target_is_set(shared_data, tmp_path):
    params = make_params(source="local", tile_size=64, stride=64,
                         local={"paths": [str(shared_data / SOAP)], "target_gsd": 0.3})
    with pytest.raises(UserError, match="no georeference.*gsd: 0.1"):
        run_etl(params, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_png_with_its_gsd_given_is_resampled_and_named(shared_data, tmp_path):
    entry = {"files": str(shared_data / SOAP), "gsd": 0.1, "name": "sierra"}
    params = make_params(source="local", tile_size=64, stride=64, min_vegetation_fraction=0.0,
                         min_valid_fraction=0.0, local={"paths": [entry], "target_gsd": 0.3})
    result = run_etl(params, tmp_path / "out", progress=False)
    assert result.filters.candidates == 4
    metas = first_tiles(tmp_path / "out").values()
    assert {meta["gsd"] for meta in metas} == {0.3} and {meta["region"] for meta in metas} == {"sierra"}
    assert all(meta["crs"] is None and "bounds" not in meta for meta in metas)


def test_a_coarser_raster_than_the_target_is_refused(shared_data, tmp_path):
    landsat = [str(shared_data / f"RStoolbox/LT52240631988227CUB02_B{b}.TIF") for b in (3, 2, 1)]
    params = make_params(source="local", tile_size=64, stride=64,
                         local={"paths": [landsat], "target_gsd": 10.0})
    with pytest.raises(UserError, match="at 30 m per pixel, coarser than etl.local.target_gsd"):
        run_etl(params, tmp_path / "out", progress=False)


def test_without_a_target_each_raster_keeps_and_records_its_own_gsd(shared_data, tmp_path):
    params = make_params(source="local", tile_size=64, stride=64, min_vegetation_fraction=0.0,
                         min_valid_fraction=0.0, local={"paths": [str(shared_data / OSBS)]})
    run_etl(params, tmp_path / "out", progress=False)
    assert {meta["gsd"] for meta in first_tiles(tmp_path / "out").values()} == {0.1}
