"""The STAC source against local stand-ins of a STAC API and a Range-honouring COG server.

The COGs are made from a real Sentinel-2 L2A raster of ../shared/data in the layout of Earth
Search's sentinel-2-c1-l2a collection (tests/etl/stac_data.py); the tests skip without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pydantic import ValidationError

from canopy.errors import UserError
from canopy.etl.params import StacParams
from canopy.etl.pipeline import run_etl
from canopy.etl.scene import SCL_INVALID, SceneReader
from canopy.etl.sources import http, stac
from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.etl import stac_data as sd
from tests.etl.rasters import make_params
from tests.etl.stac_standin import StacStandIn

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                reason="../shared/data is not present (not part of a user's clone)")

SIZE = 256
C1_ID = "S2A_T21MXT_20230710_0_L2A"
OLD_ID = "S2B_T21MXT_20210705_0_L2A"
JULY = ["2023-07-01", "2023-07-31"]


@dataclass
class Catalog:
    root: Path
    scene: sd.Scene
    items: list[dict[str, Any]]
    worldcover: str  # file name under files/
    middle_lon: float  # WorldCover says tree cover west of it


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("stac")
    files = root / "files"
    scene = sd.real_scene(SHARED_DATA, SIZE)
    c1 = sd.write_item_cogs(scene, files, "c1", 1000)
    old = sd.write_item_cogs(scene, files, "old", 0)
    items = [
        sd.stac_item(C1_ID, scene, c1, datetime="2023-07-10T14:00:00Z", cloud=3.0, baseline="05.09"),
        sd.stac_item("S2B_T21MXT_20230715_0_L2A", scene, c1, datetime="2023-07-15T14:00:00Z",
                     cloud=40.0, baseline="05.09"),  # over the AOIs' 10 % cloud limit
        sd.stac_item(OLD_ID, scene, old, datetime="2021-07-05T14:00:00Z", cloud=2.0, baseline="03.01"),
    ]
    for day in range(20, 25):  # more matches than one small page
        items.append(sd.stac_item(f"S2A_T21MXT_202307{day}_0_L2A", scene, c1,
                                  datetime=f"2023-07-{day}T14:00:00Z", cloud=5.0 + day / 10,
                                  baseline="05.10"))
    worldcover, middle = sd.write_worldcover(scene, files)
    return Catalog(root, scene, items, worldcover, middle)


@pytest.fixture
def api(catalog):
    with StacStandIn(catalog.items, catalog.root / "files") as server:
        yield server


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(http, "RETRY_BASE_SECONDS", 0.01)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def aoi(catalog: Catalog, *, time=JULY, name="trombetas", margin=0.002, **extra) -> dict:
    west, south, east, north = catalog.scene.bbox
    return {"name": name, "bbox": [west + margin, south + margin, east - margin, north - margin],
            "time": time, "max_cloud": 0.1, **extra}


def stac_params(api, tmp_path, catalog, **overrides) -> dict:
    return {"api_url": api.url, "cache_dir": str(tmp_path / "cache"),
            "aois": [aoi(catalog)], **overrides}


def etl_params(api, tmp_path, catalog, stac_overrides=None, **etl):
    defaults = {"source": "stac", "tile_size": 64, "stride": 64, "min_vegetation_fraction": 0.0,
                "min_valid_fraction": 0.9}
    return make_params(**{**defaults, **etl,
                          "stac": stac_params(api, tmp_path, catalog, **(stac_overrides or {}))})


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


def tile_metadata(out: Path) -> list[dict]:
    metas = []
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    return metas


def cache_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- the whole source --------------------------------------------------------------------------

def test_tiles_are_byte_identical_on_a_rerun_and_the_cache_sends_no_request(api, catalog, tmp_path):
    params = etl_params(api, tmp_path, catalog)
    first = run_etl(params, tmp_path / "a", progress=False)
    assert first.filters.kept > 0 and api.calls("/files/") and api.calls("/stac/search")
    api.reset_calls()
    run_etl(params, tmp_path / "b", progress=False)
    assert api.calls() == []  # search answers and windows both come from the cache
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    fresh = etl_params(api, tmp_path, catalog, {"cache_dir": str(tmp_path / "fresh-cache")})
    run_etl(fresh, tmp_path / "c", progress=False)  # read again from the server
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "c")

    meta = tile_metadata(tmp_path / "a")[0]
    assert meta["source"] == "stac" and meta["item"] == C1_ID
    assert meta["processing_baseline"] == "05.09" and meta["acquired"] == "2023-07-10T14:00:00Z"
    assert meta["region"] == "trombetas" and meta["gsd"] == 10.0
    assert meta["crs"] == "EPSG:32721" and len(meta["bounds"]) == 4
    assert meta["tree_cover"] is None  # WorldCover not asked for
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sources"][0]["item"] == C1_ID and manifest["sources"][0]["offset"] == 1000


def test_cloud_and_shadow_pixels_are_masked_and_their_tiles_dropped(api, catalog, tmp_path):
    [(plan, path)] = stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog)), progress=False)
    with rasterio.open(path) as cached:
        col = round((cached.transform.c - catalog.scene.transform.c) / 10)
        row = round((catalog.scene.transform.f - cached.transform.f) / 10)
        window_scl = cached.read(4)
        height, width = cached.height, cached.width
    scl10 = np.repeat(np.repeat(catalog.scene.scl, 2, axis=0), 2, axis=1)
    expected_scl = scl10[row:row + height, col:col + width]
    assert np.array_equal(window_scl, expected_scl)  # 20 m -> 10 m, nearest neighbour, aligned
    assert np.isin(expected_scl, (3, 9)).any()  # the window holds the cloud and its shadow
    spec = stac.scene_spec(plan, path, (0.0, 0.3))
    with SceneReader(spec, gamma=1.0, percentile_range=(2, 98), ndvi_threshold=0.3,
                     gli_threshold=0.02) as reader:
        rgb, valid, _ = reader.read(rasterio.windows.Window(0, 0, width, height))
    assert np.array_equal(valid, ~np.isin(expected_scl, SCL_INVALID))
    assert not rgb[~valid].any()
    result = run_etl(etl_params(api, tmp_path, catalog), tmp_path / "out", progress=False)
    assert result.filters.dropped_invalid > 0 and result.filters.kept > 0


def test_the_offset_is_applied_exactly_when_the_processing_baseline_says(api, catalog, tmp_path):
    """The same reflectance stored before baseline 04.00 (no offset) and in c1 (+1000) gives the
    same 8-bit tiles, equal to the fixed reflectance mapping of the true reflectance."""
    params = StacParams(**stac_params(api, tmp_path, catalog, items_per_aoi=2,
                                      aois=[aoi(catalog, time=["2021-06-01", "2023-07-31"])]))
    fetched = stac.fetch_scenes(params, progress=False)
    assert [plan.item.id for plan, _ in fetched] == [OLD_ID, C1_ID]
    images = {}
    for plan, path in fetched:
        spec = stac.scene_spec(plan, path, (0.0, 0.3))
        with SceneReader(spec, gamma=1.0, percentile_range=(2, 98), ndvi_threshold=0.3,
                         gli_threshold=0.02) as reader:
            images[plan.item.baseline] = (reader.read(rasterio.windows.Window(0, 0, 64, 64))[0],
                                          spec.reflectance_range)
    old_rgb, old_range = images["03.01"]
    c1_rgb, c1_range = images["05.09"]
    assert old_range == (0.0, 3000.0) and c1_range == (1000.0, 4000.0)
    assert np.array_equal(old_rgb, c1_rgb)
    with rasterio.open(fetched[1][1]) as cached:
        dn = cached.read([1, 2, 3], window=rasterio.windows.Window(0, 0, 64, 64)).astype(np.float64)
        scl = cached.read(4, window=rasterio.windows.Window(0, 0, 64, 64))
    reflectance = dn * 1e-4 - 0.1
    expected = np.rint(np.clip(reflectance / 0.3, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    expected[np.isin(scl, SCL_INVALID)] = 0  # nodata, cloud, shadow
    assert np.abs(c1_rgb.astype(int) - expected).max() <= 1  # float32 rounding at .5 only


# --- search ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "GET"])
def test_search_follows_every_page(api, catalog, tmp_path, method):
    params = StacParams(**stac_params(api, tmp_path, catalog, page_size=2, method=method))
    session = stac.Session(params, stac.catalog_of(params))
    items = stac.search_aoi(params, stac.catalog_of(params), params.aois[0], session.retrier,
                            tmp_path)
    assert sorted(item.id for item in items) == sorted(
        i["id"] for i in catalog.items if i["properties"]["eo:cloud_cover"] <= 10
        and i["properties"]["datetime"].startswith("2023-07"))
    searches = api.calls("/stac/search")
    assert len(searches) == 3 and {call.method for call in searches} == {method}


def test_a_429_waits_its_retry_after_then_retries(api, catalog, tmp_path, capsys):
    api.script("/stac/search", 429, headers={"Retry-After": "0.3"})
    start = time.monotonic()
    stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog)), progress=False)
    assert time.monotonic() - start >= 0.3
    assert len(api.calls("/stac/search")) == 2
    assert "HTTP 429 for POST /stac/search; retrying in 0.3 s" in capsys.readouterr().err


def test_a_500_on_a_later_page_is_retried(api, catalog, tmp_path):
    api.script("/stac/search", 500, after=1)  # the second page fails once
    params = StacParams(**stac_params(api, tmp_path, catalog, page_size=2))
    stac.fetch_scenes(params, progress=False)
    searches = api.calls("/stac/search")
    assert len(searches) == 4 and searches[1].body == searches[2].body  # page 2 asked again


def test_a_page_over_100_is_refused_in_params_and_a_lasting_502_in_one_line(api, catalog, tmp_path):
    with pytest.raises(ValidationError, match="page_size"):
        StacParams(**stac_params(api, tmp_path, catalog, page_size=101))
    api.script("/stac/search", 502, times=3)
    with pytest.raises(UserError) as caught:
        stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog, max_retries=2)),
                          progress=False)
    message = str(caught.value)
    assert "\n" not in message and "failed 3 times in a row (last: HTTP 502)" in message
    assert "etl.stac.api_url" in message and cache_files(tmp_path) == []


def test_nothing_found_names_the_aoi_dates_and_cloud_limit(api, catalog, tmp_path):
    params = StacParams(**stac_params(api, tmp_path, catalog,
                                      aois=[aoi(catalog, time=["2019-06-01", "2019-08-31"])]))
    with pytest.raises(UserError) as caught:
        stac.fetch_scenes(params, progress=False)
    message = str(caught.value)
    for part in ("'trombetas'", "2019-06-01", "2019-08-31", "10%", "sentinel-2-c1-l2a"):
        assert part in message


def test_the_request_guard_refuses_before_any_read(api, catalog, tmp_path):
    params = StacParams(**stac_params(api, tmp_path, catalog, max_requests=3))
    with pytest.raises(UserError, match="etl.stac.max_requests"):
        stac.fetch_scenes(params, progress=False)
    assert api.calls("/files/") == []


# --- broken file servers -----------------------------------------------------------------------

def test_a_truncated_range_answer_is_retried(api, catalog, tmp_path):
    with StacStandIn(catalog.items, catalog.root / "files") as other:  # other URLs: not in GDAL's cache
        reference = stac.fetch_scenes(StacParams(**stac_params(other, tmp_path / "ref", catalog)),
                                      progress=False)[0][1]
    api.truncate = 1
    [(_, path)] = stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog)), progress=False)
    assert api.truncate == 0  # the cut answer happened
    with rasterio.open(reference) as ref, rasterio.open(path) as got:
        assert np.array_equal(ref.read(), got.read())


def test_ranges_cut_short_every_time_fail_in_one_line_with_nothing_cached(api, catalog, tmp_path):
    api.truncate = -1
    with pytest.raises(UserError) as caught:
        stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog, max_retries=1)),
                          progress=False)
    assert "\n" not in str(caught.value) and "failed 2 times in a row" in str(caught.value)
    assert not [name for name in cache_files(tmp_path) if name.endswith(".tif")]


def test_a_server_without_range_support_is_refused_in_one_line(api, catalog, tmp_path):
    api.no_range = True
    with pytest.raises(UserError) as caught:
        stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog)), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "does not honour HTTP Range requests" in message
    assert not [name for name in cache_files(tmp_path) if name.endswith(".tif")]


# --- bounded memory ----------------------------------------------------------------------------

MEMORY_PROBE = """
import json, logging, sys, tracemalloc
from pathlib import Path
from tests.etl import stac_data as sd
from tests.etl.stac_standin import StacStandIn
from canopy.etl.params import StacParams
from canopy.etl.sources import stac

root, shared = Path(sys.argv[1]), Path(sys.argv[2])
big = sd.real_scene(shared, 1024)
files = sd.write_item_cogs(big, root / "files", "big", 1000)
item = sd.stac_item("S2A", big, files, datetime="2023-07-10T14:00:00Z", cloud=3.0, baseline="05.09")
stac.CHUNK = 128
west, south, east, north = big.bbox
peaks = {}
with StacStandIn([item], root / "files") as server:
    for name, fraction in (("warm-up", 0.25), ("small", 0.5), ("large", 1.0)):
        box = [west, north - (north - south) * fraction, west + (east - west) * fraction, north]
        params = StacParams(api_url=server.url, cache_dir=str(root / name), threads=2,
                            aois=[{"name": name, "bbox": box, "time": ["2023-07-01", "2023-07-31"],
                                   "max_cloud": 0.1}])
        tracemalloc.start()
        stac.fetch_scenes(params, progress=False)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
print(json.dumps(peaks))
"""


def test_peak_memory_stays_flat_as_the_aoi_grows(tmp_path):
    """Windowed reads: a 4x larger AOI does not need 4x the memory. tracemalloc sees numpy's
    buffers (GDAL's caches are capped by GDAL_CACHEMAX and CPL_VSIL_CURL_CACHE_SIZE); it runs
    in a fresh interpreter, as a user's run does, away from what earlier tests left behind."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(SHARED_DATA)],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    whole_window = 1024 * 1024 * 4 * 2  # the large AOI's pixels, 4 uint16 bands: 8 MiB
    assert peaks["large"] < 1.5 * peaks["small"] + 256 * 1024, peaks
    assert peaks["large"] < whole_window / 4, peaks


# --- params --------------------------------------------------------------------------------------

def test_planetary_computer_preset_and_legacy_collection_warning(api, catalog, tmp_path, capsys):
    preset = stac.catalog_of(StacParams(catalog="planetary-computer"))
    assert preset.collection == "sentinel-2-l2a" and preset.signed
    default = stac.catalog_of(StacParams())
    assert default.api_url == "https://earth-search.aws.element84.com/v1"
    assert default.collection == "sentinel-2-c1-l2a" and not default.signed
    legacy = StacParams(**stac_params(api, tmp_path, catalog, collection="sentinel-2-l2a",
                                      api_url="https://earth-search.aws.element84.com/v1"))
    assert stac.catalog_of(legacy).collection == "sentinel-2-l2a"
    monkey_search = []

    def no_search(*args, **kwargs):
        monkey_search.append(args)
        raise UserError("stop here")

    import canopy.etl.sources.stac as module
    original = module.search_aoi
    module.search_aoi = no_search
    try:
        with pytest.raises(UserError, match="stop here"):
            stac.fetch_scenes(legacy, progress=False)
    finally:
        module.search_aoi = original
    assert "offset metadata (earthsearch:boa_offset_applied) is wrong on some scenes" in \
        capsys.readouterr().err


def test_stac_source_without_aois_is_refused():
    with pytest.raises(UserError, match="etl.stac.aois is empty"):
        make_params(source="stac")



# --- WorldCover --------------------------------------------------------------------------------

def test_worldcover_tree_cover_keeps_forest_tiles_and_is_recorded(api, catalog, tmp_path):
    from rasterio.warp import transform_bounds

    template = f"{api.base}/files/worldcover/ESA_WorldCover_10m_2021_v200_{{tile}}_Map.tif"
    params = etl_params(api, tmp_path, catalog, min_tree_cover=0.8, min_valid_fraction=0.0,
                        worldcover={"url": template, "cache_dir": str(tmp_path / "wc")})
    result = run_etl(params, tmp_path / "a", progress=False)
    assert result.filters.kept > 0 and result.filters.dropped_tree_cover > 0
    for meta in tile_metadata(tmp_path / "a"):
        west, _, east, _ = transform_bounds(meta["crs"], "EPSG:4326", *meta["bounds"])
        assert meta["tree_cover"] >= 0.8 and west < catalog.middle_lon
        if east < catalog.middle_lon:
            assert meta["tree_cover"] == 1.0  # wholly on WorldCover's tree-cover side
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["filters"]["min_tree_cover"] == 0.8
    api.reset_calls()
    run_etl(params, tmp_path / "b", progress=False)
    assert api.calls() == []  # the mask is cached too
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


def test_5xx_answers_from_the_file_server_are_retried(api, catalog, tmp_path):
    api.script("/files/c1/green.tif", 503, times=2)
    [(_, path)] = stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog)), progress=False)
    assert path.is_file()
    assert len(api.calls("/files/c1/green.tif")) >= 3  # two 503s, then the reads


def test_a_lasting_5xx_from_the_file_server_fails_in_one_line(api, catalog, tmp_path):
    api.script("/files/c1/red.tif", 503, times=1000)
    with pytest.raises(UserError) as caught:
        stac.fetch_scenes(StacParams(**stac_params(api, tmp_path, catalog, max_retries=1)),
                          progress=False)
    message = str(caught.value)
    assert "\n" not in message and "HTTP 503" in message and "etl.stac" in message
    assert not [name for name in cache_files(tmp_path) if name.endswith(".tif")]


def test_an_interrupted_read_leaves_nothing_half_written(api, catalog, tmp_path, monkeypatch):
    """Ctrl-C while chunks are written: no cached window, no partial file; the re-run reads
    the scene whole."""
    monkeypatch.setattr(stac, "CHUNK", 64)
    calls = []
    original = stac._write_next

    def interrupt_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(stac, "_write_next", interrupt_on_third)
    params = StacParams(**stac_params(api, tmp_path, catalog))
    with pytest.raises(KeyboardInterrupt):
        stac.fetch_scenes(params, progress=False)
    assert [name for name in cache_files(tmp_path) if not name.startswith("search-")] == []
    monkeypatch.setattr(stac, "_write_next", original)
    [(_, path)] = stac.fetch_scenes(params, progress=False)
    with rasterio.open(path) as cached:
        assert cached.read(1).any()


def test_planetary_computer_assets_are_signed_with_cached_anonymous_tokens(api, monkeypatch):
    import planetary_computer
    from planetary_computer.settings import Settings

    monkeypatch.setenv("PC_SDK_SAS_URL", f"{api.base}/sas/token")
    Settings.get.cache_clear()
    monkeypatch.setattr(planetary_computer.sas, "TOKEN_CACHE", {})
    try:
        sign = stac._signer()
        href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/21/M/XT/B04.tif"
        signed = [sign(href), sign(href.replace("B04", "B03"))]
    finally:
        Settings.get.cache_clear()
    assert all(url.endswith("sig=s3cr3t") and url.startswith(href.split("B04")[0]) for url in signed)
    assert len(api.calls("/sas/token/sentinel2l2a01/sentinel2-l2")) == 1  # one token, reused
    assert sign("http://127.0.0.1/elsewhere.tif") == "http://127.0.0.1/elsewhere.tif"


def test_signed_url_signatures_are_redacted_from_logs():
    import logging as logs

    from canopy.etl.sources.redaction import RedactSecrets

    record = logs.LogRecord("urllib3", logs.DEBUG, __file__, 1,
                            "GET /sentinel2-l2/B04.tif?st=2024&se=2099&sp=rl&sig=s3cr3t%2Bx HTTP/1.1",
                            None, None)
    RedactSecrets(()).filter(record)
    assert "s3cr3t" not in record.getMessage() and "sig=***" in record.getMessage()


def test_canopy_etl_command_with_stac_and_worldcover(api, catalog, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from canopy.cli import app

    template = f"{api.base}/files/worldcover/ESA_WorldCover_10m_2021_v200_{{tile}}_Map.tif"
    etl = {"source": "stac", "tile_size": 64, "stride": 64, "min_vegetation_fraction": 0.0,
           "min_valid_fraction": 0.0, "min_tree_cover": 0.8, "workers": 1,
           "worldcover": {"url": template, "cache_dir": str(tmp_path / "wc")},
           "stac": stac_params(api, tmp_path, catalog)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"dim_mults": [1, 2]}, "etl": etl}))
    args = ["etl", "-q", "-p", str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "tiles")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "for tree cover" in result.stdout and "from 1 scene(s)" in result.stdout

    etl["stac"]["aois"] = [aoi(catalog, time=["2019-06-01", "2019-06-30"], name="empty")]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"dim_mults": [1, 2]}, "etl": etl}))
    failed = CliRunner().invoke(app, args)
    lines = failed.stderr.strip().splitlines()
    assert failed.exit_code == 2 and len(lines) == 1
    assert lines[0].startswith("canopy etl: error: etl.stac: no sentinel-2-c1-l2a item over AOI 'empty'")
    assert (tmp_path / "tiles" / "manifest.json").is_file()  # the previous output is untouched


def test_an_empty_search_is_not_cached(api, catalog, tmp_path):
    params = StacParams(**stac_params(api, tmp_path, catalog,
                                      aois=[aoi(catalog, time=["2019-06-01", "2019-08-31"])]))
    for _ in range(2):
        with pytest.raises(UserError, match="no sentinel-2-c1-l2a item"):
            stac.fetch_scenes(params, progress=False)
    assert len(api.calls("/stac/search")) == 2 and cache_files(tmp_path) == []


def test_the_thread_count_changes_nothing_in_the_output(api, catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(stac, "CHUNK", 64)  # several chunks in flight at once
    outputs = []
    for threads in (1, 6):
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)  # read afresh each time
        params = etl_params(api, tmp_path, catalog, {"threads": threads})
        run_etl(params, tmp_path / f"out-{threads}", progress=False)
        manifest = json.loads((tmp_path / f"out-{threads}" / "manifest.json").read_text())
        outputs.append((shard_bytes(tmp_path / f"out-{threads}"), manifest["params_hash"]))
    assert outputs[0] == outputs[1]
