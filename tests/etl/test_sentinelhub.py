"""The Sentinel Hub source, driven through the real sentinelhub client against a local stand-in.

Nothing here reaches the internet: base_url and token_url point at 127.0.0.1, and HOME and
XDG_CONFIG_HOME point into tmp_path so the sentinelhub library can neither read nor write the
user's config file.
"""

from __future__ import annotations

import logging
import math
import time

import pytest
import rasterio

from canopy.errors import UserError
from canopy.etl.params import SentinelHubParams
from canopy.etl.sources import sentinelhub as sh
from canopy.etl.sources import sentinelhub_client as client
from tests.etl.sh_standin import PROCESS_PATH, TOKEN_PATH

SMALL = {"name": "berlin", "bbox": [13.40, 52.50, 13.43, 52.52],
         "time": ["2023-06-01", "2023-06-30"], "max_cloud": 0.2}
# ~205 km wide at 60 m: more than 2500 px across, so at least two columns; one row.
WIDE = {"name": "wide", "bbox": [12.0, 52.0, 15.0, 52.05],
        "time": ["2023-07-01", "2023-07-15"], "max_cloud": 0.29}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No real config file, no proxies for 127.0.0.1, http token URL allowed, fast retries."""
    xdg, home = tmp_path / "xdg", tmp_path / "home"
    xdg.mkdir()
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("HOME", str(home))
    for name in ("SH_CLIENT_ID", "SH_CLIENT_SECRET", "SH_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the stand-in speaks http
    monkeypatch.setattr(client, "RETRY_BASE_SECONDS", 0.01)
    yield
    written = [p for root in (xdg, home) for p in root.rglob("*") if p.is_file()]
    assert written == [], f"something wrote {written} (sentinelhub's config file?)"


def make_params(standin, tmp_path, *aois, **overrides) -> SentinelHubParams:
    values = {
        "base_url": standin.url,
        "token_url": standin.token_url,
        "resolution": 20,
        "aois": list(aois) or [SMALL],
        "cache_dir": str(tmp_path / "cache"),
        "max_retries": 3,
    }
    values.update(overrides)
    return SentinelHubParams.model_validate(values)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- happy path --------------------------------------------------------------------------------


def test_happy_path_writes_described_uint16_geotiff(standin, creds, tmp_path):
    params = make_params(standin, tmp_path)
    scenes = sh.fetch_scenes(params, progress=False)

    assert [s.scene_id for s in scenes] == ["berlin-000"]
    scene = scenes[0]
    assert scene.aoi == "berlin"
    assert scene.time_interval == "2023-06-01/2023-06-30"
    assert scene.path.parent == tmp_path / "cache"
    body = standin.calls("process")[0].body
    with rasterio.open(scene.path) as src:
        assert src.count == 5
        assert set(src.dtypes) == {"uint16"}
        assert src.descriptions == ("B04", "B03", "B02", "dataMask", "SCL")
        assert src.crs.to_epsg() == 32633  # UTM 33N for Berlin
        assert src.res == pytest.approx((20.0, 20.0))
        assert (src.width, src.height) == (body["output"]["width"], body["output"]["height"])
        assert list(src.bounds) == pytest.approx(body["input"]["bounds"]["bbox"])
        data = src.read()
    assert data[3].min() == 1 and data[4].max() == 4  # dataMask and SCL made it through
    assert 0 < data[0].mean() < 10000
    # the window covers the whole AOI
    from rasterio.warp import transform_bounds

    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", "EPSG:32633", *SMALL["bbox"])
    left, bottom, right, top = body["input"]["bounds"]["bbox"]
    assert left <= minx and bottom <= miny and right >= maxx and top >= maxy
    # no temporary files left in the cache
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [scene.path.name]


def test_request_body_and_endpoints(standin, creds, tmp_path):
    sh.fetch_scenes(make_params(standin, tmp_path), progress=False)

    token_calls, process_calls = standin.calls("token"), standin.calls("process")
    assert len(token_calls) == 1 and token_calls[0].path == TOKEN_PATH
    assert token_calls[0].body["grant_type"] == "client_credentials"
    assert len(process_calls) == 1 and process_calls[0].path == PROCESS_PATH
    assert process_calls[0].headers["authorization"] == f"Bearer {standin.access_token}"
    body = process_calls[0].body

    (data,) = body["input"]["data"]
    assert data["type"] == "sentinel-2-l2a"
    assert data["dataFilter"]["maxCloudCoverage"] == 20
    assert data["dataFilter"]["mosaickingOrder"] == "leastCC"
    assert data["dataFilter"]["timeRange"] == {"from": "2023-06-01T00:00:00Z", "to": "2023-06-30T23:59:59Z"}
    assert body["input"]["bounds"]["properties"]["crs"].endswith("/EPSG/0/32633")
    script = body["evalscript"]
    for band in ("B04", "B03", "B02", "dataMask", "SCL"):
        assert f'"{band}"' in script
    assert 'sampleType: "UINT16"' in script and "* 10000" in script
    assert body["output"]["responses"] == [{"identifier": "default", "format": {"type": "image/tiff"}}]


def test_max_cloud_is_not_truncated(standin, creds, tmp_path):
    aoi = dict(SMALL, max_cloud=0.29)  # int(0.29 * 100) == 28 in sentinelhub's helper
    sh.fetch_scenes(make_params(standin, tmp_path, aoi), progress=False)
    assert standin.calls("process")[0].body["input"]["data"][0]["dataFilter"]["maxCloudCoverage"] == 29


# --- splitting -----------------------------------------------------------------------------------


def test_large_aoi_is_split_into_requests_within_2500_px(standin, creds, tmp_path):
    params = make_params(standin, tmp_path, WIDE, resolution=60)
    scenes = sh.fetch_scenes(params, progress=False)

    calls = standin.calls("process")
    assert len(calls) == len(scenes) >= 2
    assert [s.scene_id for s in scenes] == [f"wide-{i:03d}" for i in range(len(scenes))]
    for call in calls:
        assert call.body["output"]["width"] <= 2500 and call.body["output"]["height"] <= 2500
    boxes = []
    for scene in scenes:
        with rasterio.open(scene.path) as src:
            assert src.width <= 2500 and src.height <= 2500
            assert src.res == pytest.approx((60.0, 60.0))
            boxes.append(tuple(src.bounds))
    # one row of columns sharing edges exactly: no gap, no overlap
    boxes.sort()
    for (_, b0, r0, t0), (l1, b1, _, t1) in zip(boxes, boxes[1:]):
        assert l1 == r0 and (b0, t0) == (b1, t1)


def test_split_is_deterministic_and_covers_the_aoi():
    aoi = SentinelHubParams.model_validate(
        {"aois": [{"name": "big", "bbox": [10.0, 45.0, 11.0, 46.0], "time": ["2023-06-01", "2023-06-30"]}]}
    ).aois[0]
    epsg, windows = sh.split_aoi(aoi, 10.0)
    assert (epsg, windows) == sh.split_aoi(aoi, 10.0)
    assert epsg == 32632
    assert len(windows) > 4
    widths = {w for _, w, _ in windows}
    heights = {h for _, _, h in windows}
    assert max(widths) <= 2500 and max(heights) <= 2500
    assert max(widths) - min(widths) <= 1 and max(heights) - min(heights) <= 1
    for (left, bottom, right, top), width, height in windows:
        assert (right - left, top - bottom) == (width * 10.0, height * 10.0)
        assert left % 10 == 0 and top % 10 == 0  # on Sentinel-2's 10 m pixel grid
    area = sum(w * h for _, w, h in windows)
    lefts = [b[0] for b, _, _ in windows]
    tops = [b[3] for b, _, _ in windows]
    rights = [b[2] for b, _, _ in windows]
    bottoms = [b[1] for b, _, _ in windows]
    total_w = round((max(rights) - min(lefts)) / 10)
    total_h = round((max(tops) - min(bottoms)) / 10)
    assert area == total_w * total_h  # the windows tile the rectangle exactly
    from rasterio.warp import transform_bounds

    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", "EPSG:32632", *aoi.bbox)
    assert min(lefts) <= minx and min(bottoms) <= miny and max(rights) >= maxx and max(tops) >= maxy
    assert min(lefts) > minx - 10 and max(tops) < maxy + 10  # snapped by less than a pixel
    assert math.ceil(total_w / 2500) * math.ceil(total_h / 2500) == len(windows)


# --- cache ---------------------------------------------------------------------------------------


def test_rerun_with_same_params_makes_no_request(standin, creds, tmp_path, monkeypatch):
    params = make_params(standin, tmp_path)
    first = sh.fetch_scenes(params, progress=False)
    before = len(standin.calls())
    assert before == 2  # one token, one process

    # no credentials needed either: nothing is downloaded
    monkeypatch.delenv("SH_CLIENT_ID")
    monkeypatch.delenv("SH_CLIENT_SECRET")
    second = sh.fetch_scenes(params, progress=False)
    assert second == first
    assert len(standin.calls()) == before


def test_changed_params_miss_the_cache(standin, creds, tmp_path):
    sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    other = sh.fetch_scenes(make_params(standin, tmp_path, dict(SMALL, max_cloud=0.5)), progress=False)
    assert len(standin.calls("process")) == 2
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert other[0].scene_id == "berlin-000"


def test_corrupt_cached_file_is_downloaded_again(standin, creds, tmp_path):
    params = make_params(standin, tmp_path)
    (scene,) = sh.fetch_scenes(params, progress=False)
    scene.path.write_bytes(scene.path.read_bytes()[:200])  # as if cut off half-way
    (again,) = sh.fetch_scenes(params, progress=False)
    assert len(standin.calls("process")) == 2
    with rasterio.open(again.path) as src:
        assert src.count == 5 and src.read().shape[0] == 5


def test_interrupted_download_leaves_no_cached_file(standin, creds, tmp_path, monkeypatch):
    params = make_params(standin, tmp_path)

    def cut_off(path, data):  # Ctrl-C half-way through writing the temporary file
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f".{path.name}.partial.tmp").write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sh, "atomic_write_bytes", cut_off)
        with pytest.raises(KeyboardInterrupt):
            sh.fetch_scenes(params, progress=False)
    assert not any(p.suffix == ".tif" for p in (tmp_path / "cache").iterdir())

    (scene,) = sh.fetch_scenes(params, progress=False)  # a stray temporary file does not matter
    assert len(standin.calls("process")) == 2
    with rasterio.open(scene.path) as src:
        assert src.count == 5


# --- retries -------------------------------------------------------------------------------------


def test_429_then_success_honours_retry_after_in_ms(standin, creds, tmp_path):
    standin.script("process", 429, headers={"Retry-After": "150"})  # 150 ms
    started = time.monotonic()
    (scene,) = sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    elapsed = time.monotonic() - started

    calls = standin.calls("process")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].time - calls[0].time >= 0.14
    assert elapsed < 5  # milliseconds, not seconds
    assert scene.path.is_file()


def test_500_then_success(standin, creds, tmp_path):
    standin.script("process", 500)
    (scene,) = sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    assert [c.status for c in standin.calls("process")] == [500, 200]
    assert scene.path.is_file()


def test_token_503_then_success(standin, creds, tmp_path):
    standin.script("token", 503)
    sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    assert [c.status for c in standin.calls("token")] == [503, 200]
    assert [c.status for c in standin.calls("process")] == [200]


def test_persistent_500_fails_after_bounded_attempts(standin, creds, tmp_path):
    standin.always("process", 500)
    params = make_params(standin, tmp_path, max_retries=2)
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(params, progress=False)
    message = one_line(err)
    assert "HTTP 500" in message and PROCESS_PATH in message and "max_retries" in message
    assert "failed 3 times" in message
    assert len(standin.calls("process")) == 3  # 1 + max_retries
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_persistent_429_fails_after_bounded_attempts(standin, creds, tmp_path):
    standin.always("process", 429, headers={"Retry-After": "1"})
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(make_params(standin, tmp_path, max_retries=1), progress=False)
    assert "HTTP 429" in one_line(err)
    assert len(standin.calls("process")) == 2


def test_unreachable_service_fails_after_bounded_attempts(standin, creds, tmp_path):
    params = make_params(standin, tmp_path, max_retries=1)
    standin.stop()  # nothing listens on that port any more
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(params, progress=False)
    message = one_line(err)
    assert "token_url" in message and "connection failed" in message and "failed 2 times" in message


def test_other_4xx_is_a_user_error_without_retry(standin, creds, tmp_path):
    standin.script("process", 400, body={"error": {"status": 400, "message": "Invalid bbox"}})
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    message = one_line(err)
    assert "HTTP 400" in message and "Invalid bbox" in message
    assert len(standin.calls("process")) == 1


# --- credentials ---------------------------------------------------------------------------------


def test_401_from_process_api_names_the_credentials(standin, creds, tmp_path):
    standin.script("process", 401)
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    message = one_line(err)
    assert "SH_CLIENT_ID" in message and "SH_CLIENT_SECRET" in message and "401" in message
    assert len(standin.calls("process")) == 1  # not retried


def test_wrong_secret_401_from_token_endpoint(standin, monkeypatch, tmp_path, caplog, capsys):
    wrong = "wrong-secret-value-8841"
    monkeypatch.setenv("SH_CLIENT_ID", standin.client_id)
    monkeypatch.setenv("SH_CLIENT_SECRET", wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    message = one_line(err)
    assert "SH_CLIENT_ID" in message and "SH_CLIENT_SECRET" in message
    assert "unauthorized_client" in message and TOKEN_PATH in message
    assert [c.status for c in standin.calls("token")] == [401]
    assert standin.calls("process") == []
    captured = capsys.readouterr()
    for text in (message, repr(err.value), caplog.text, captured.out, captured.err):
        assert wrong not in text


def test_missing_credentials(standin, tmp_path):
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    message = one_line(err)
    assert "SH_CLIENT_ID" in message and "SH_CLIENT_SECRET" in message
    assert standin.calls() == []


def test_half_set_credentials(standin, monkeypatch, tmp_path):
    monkeypatch.setenv("SH_CLIENT_ID", "someone")
    with pytest.raises(UserError, match="SH_CLIENT_SECRET"):
        sh.fetch_scenes(make_params(standin, tmp_path), progress=False)


def test_credentials_from_config_profile_without_writing_it(standin, tmp_path):
    config = tmp_path / "xdg" / "sentinelhub" / "config.toml"
    config.parent.mkdir(parents=True)
    text = (
        f'[canopy-test]\nsh_client_id = "{standin.client_id}"\n'
        f'sh_client_secret = "{standin.client_secret}"\n'
    )
    config.write_text(text)
    scenes = sh.fetch_scenes(make_params(standin, tmp_path, profile="canopy-test"), progress=False)
    assert len(scenes) == 1 and [c.status for c in standin.calls("token")] == [200]
    assert config.read_text() == text  # read, never rewritten
    config.unlink()  # keep the fixture's "nothing written" check meaningful

    with pytest.raises(UserError, match="profile 'missing'") as err:
        sh.fetch_scenes(make_params(standin, tmp_path / "other", profile="missing"), progress=False)
    one_line(err)


def test_no_secret_in_logs_or_output(standin, creds, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    standin.script("process", 500)
    sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    captured = capsys.readouterr()
    assert "client_secret=***" in caplog.text  # requests_oauthlib logged the body, redacted
    for text in (caplog.text, captured.out, captured.err):
        assert standin.client_secret not in text
        assert standin.access_token not in text
    # progress=False draws no bar: only the request count and the retry are said
    assert [line.split(":")[1] for line in captured.err.splitlines()] == [" sentinelhub"] * 2


def test_secret_not_in_params_or_scenes(standin, creds, tmp_path):
    params = make_params(standin, tmp_path)
    scenes = sh.fetch_scenes(params, progress=False)
    assert standin.client_secret not in params.model_dump_json()
    assert standin.client_secret not in repr(scenes)
    assert standin.client_secret not in repr(client.read_credentials(params))


def test_etl_command_tiles_sentinelhub_scenes(standin, creds, tmp_path, monkeypatch):
    """`canopy etl` end to end: stand-in download -> SCL-aware tiles; a re-run sends nothing."""
    import json
    import tarfile

    import yaml
    from typer.testing import CliRunner

    from canopy.cli import app

    params = {
        "model": {"dim_mults": [1, 2]},
        "etl": {"source": "sentinelhub", "tile_size": 64, "stride": 64, "val_fraction": 0.2,
                "sentinelhub": make_params(standin, tmp_path).model_dump(mode="json")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["etl", "-q", "-p", str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "tiles")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    requests_made = len(standin.calls())
    manifest = json.loads((tmp_path / "tiles" / "manifest.json").read_text())
    (scene,) = manifest["sources"]
    assert scene["source"] == "sentinelhub" and scene["vegetation_method"] == "scl"
    assert scene["scaling"]["high"] == [3000.0] * 3  # reflectance 0..0.3 in x10000 units
    assert scene["acquired"] == "2023-06-01/2023-06-30" and scene["aoi"] == "berlin"
    assert manifest["filters"]["kept"] == manifest["filters"]["candidates"] > 0
    shard = tmp_path / "tiles" / manifest["shards"][0]["file"]
    with tarfile.open(shard) as tar:
        meta = json.loads(tar.extractfile(tar.getnames()[1]).read())
    assert meta["crs"].startswith("EPSG:326") and len(meta["bounds"]) == 4
    assert meta["region"] == "berlin"  # the AOI: a class for model.condition
    from canopy.conditions import tiles_values

    values = tiles_values([meta])[0]
    resolution = params["etl"]["sentinelhub"]["resolution"]
    assert values["month"] == 6 and abs(values["gsd"] - resolution) < 1e-6
    assert abs(values["lat"] - 52.5) < 1.0 and abs(values["lon"] - 13.4) < 1.0

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(standin.calls()) == requests_made  # served from the cache
