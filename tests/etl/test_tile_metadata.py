"""The tile metadata keys the conditioning reads: `region`, `gsd`, `tree_cover`, for every
source where known (the STAC and local sources' own tests check theirs)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import rasterio

from canopy.etl.pipeline import run_etl
from canopy.params import parse_params
from tests.etl.rasters import make_params
from tests.etl.test_sentinelhub import isolated_env  # noqa: F401
from tests.etl.test_sentinelhub import make_params as sh_params


def all_metadata(out: Path) -> list[dict]:
    metas = []
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    return metas


def test_sentinelhub_tiles_name_their_aoi_and_gsd(standin, creds, tmp_path):
    params = parse_params({"model": {"dim_mults": [1, 2]}, "etl": {
        "source": "sentinelhub", "tile_size": 64, "stride": 64, "workers": 1,
        "sentinelhub": sh_params(standin, tmp_path).model_dump(mode="json")}})
    run_etl(params, tmp_path / "tiles", progress=False)
    metas = all_metadata(tmp_path / "tiles")
    assert metas and {m["region"] for m in metas} == {"berlin"}
    assert {m["gsd"] for m in metas} == {20.0}  # the request's resolution
    assert all(m["tree_cover"] is None and "item" not in m for m in metas)


def test_synthetic_tiles_name_their_kind_and_have_no_gsd(tmp_path):
    params = make_params(source="synthetic", tile_size=64, stride=64,
                         synthetic={"scenes": 1, "width": 128, "height": 128})
    run_etl(params, tmp_path / "tiles", progress=False)
    metas = all_metadata(tmp_path / "tiles")
    assert metas and {m["region"] for m in metas} == {"mixed"}  # the scene kind
    assert {m["gsd"] for m in metas} == {None} and all(m["synthetic"] for m in metas)


def test_sentinelhub_tiles_get_their_worldcover_tree_cover(standin, creds, tmp_path):
    """WorldCover works for any georeferenced source: tree cover west of 13.415 E only."""
    from rasterio.warp import transform_bounds

    from tests.etl.test_worldcover import RES, write_worldcover

    width = round(0.06 / RES)
    write_worldcover(tmp_path / "WC_N51E012.tif", 13.385, 52.535, width, width, 30)
    with rasterio.open(tmp_path / "WC_N51E012.tif", "r+") as dst:  # trees west of 13.415 E
        data = dst.read(1)
        data[:, : round(0.03 / RES)] = 10
        dst.write(data, 1)
    params = parse_params({"model": {"dim_mults": [1, 2]}, "etl": {
        "source": "sentinelhub", "tile_size": 16, "stride": 16, "workers": 1,
        "min_vegetation_fraction": 0.0, "min_tree_cover": 0.5,
        "worldcover": {"url": str(tmp_path / "WC_{tile}.tif"), "cache_dir": str(tmp_path / "wc")},
        "sentinelhub": sh_params(standin, tmp_path).model_dump(mode="json")}})
    result = run_etl(params, tmp_path / "tiles", progress=False)
    assert result.filters.kept > 0 and result.filters.dropped_tree_cover > 0
    for meta in all_metadata(tmp_path / "tiles"):
        west, _, east, _ = transform_bounds(meta["crs"], "EPSG:4326", *meta["bounds"])
        assert meta["tree_cover"] >= 0.5 and west < 13.415
