"""The Sentinel Hub source on several threads, and what it says and refuses, against the stand-in.

Fixtures (no real config file, no proxy, fast retries) are those of test_sentinelhub.py.
"""

from __future__ import annotations

import _thread
import json
import logging
import signal
import threading
from pathlib import Path
from urllib.parse import quote_plus

import pytest
import yaml
from typer.testing import CliRunner

from canopy.cli import app
from canopy.errors import UserError
from canopy.etl.params import SentinelHubParams
from canopy.etl.sources import sentinelhub as sh
from canopy.etl.sources import sentinelhub_client as client
from canopy.params import load_params
from tests.etl.sh_standin import StandIn
from tests.etl.test_sentinelhub import SMALL, WIDE, isolated_env, make_params, one_line  # noqa: F401

WORLD = {"name": "world", "bbox": [-180, -90, 180, 90], "time": ["2023-06-01", "2023-06-30"]}


def aois(count: int) -> list[dict]:
    """`count` small AOIs side by side (one request each at 20 m)."""
    return [dict(SMALL, name=f"aoi{i:02d}", bbox=[13.40 + 0.03 * i, 52.50, 13.43 + 0.03 * i, 52.52])
            for i in range(count)]


def served(standin: StandIn) -> int:
    return sum(call.status == 200 for call in standin.calls("process"))


# --- params --------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("threads", 0), ("threads", "many"), ("max_requests", 0)])
def test_bad_thread_count_or_limit_names_the_key(tmp_path, key, value):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"etl": {"sentinelhub": {key: value}}}))
    with pytest.raises(UserError, match=f"etl.sentinelhub.{key}"):
        load_params(path)


# --- parallel downloads --------------------------------------------------------------------------


def test_output_is_byte_identical_whatever_the_thread_count(standin, creds, tmp_path):
    """Same tiles, manifest and preview from 1 and 4 threads (each run downloads everything)."""
    def etl(threads: int, tiles: Path) -> dict[str, bytes]:
        cache = tmp_path / "cache"
        if cache.exists():
            for path in cache.iterdir():
                path.unlink()
        source = make_params(standin, tmp_path, *aois(6), threads=threads).model_dump(mode="json")
        params = {"model": {"dim_mults": [1, 2]},
                  "etl": {"source": "sentinelhub", "tile_size": 32, "stride": 32,
                          "val_fraction": 0.3, "shard_size": 7, "sentinelhub": source}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        result = CliRunner().invoke(app, ["etl", "-q", "-p", str(tmp_path / "params.yaml"),
                                          "--tiles", str(tiles)])
        assert result.exit_code == 0, result.output
        return {str(p.relative_to(tiles)): p.read_bytes() for p in sorted(tiles.rglob("*")) if p.is_file()}

    serial = etl(1, tmp_path / "serial")
    parallel = etl(4, tmp_path / "parallel")
    assert served(standin) == 12  # both runs downloaded all 6
    assert len([name for name in serial if name.endswith(".tar")]) > 2
    assert serial == parallel


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt during the test, however the test run was started: a
    run started as a background job of a script inherits SIGINT as ignored, and then
    `_thread.interrupt_main` does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupted_run_resumes_from_the_cache_and_downloads_nothing_twice(standin, creds, tmp_path,
                                                                            ctrl_c_raises):
    count = 12
    params = make_params(standin, tmp_path, *aois(count), threads=2)
    standin.slow("process", 0.2)  # so that most requests are still queued when Ctrl-C comes

    once = threading.Lock()  # a second Ctrl-C would cut the clean stop short

    def ctrl_c_after_two(call):
        if call.endpoint == "process" and served(standin) >= 2 and once.acquire(blocking=False):
            _thread.interrupt_main()  # what Ctrl-C does, while the main thread waits

    standin.on_answer(ctrl_c_after_two)
    with pytest.raises(KeyboardInterrupt):
        sh.fetch_scenes(params, progress=False)
    standin.on_answer(None)
    before = served(standin)
    assert 2 <= before < count  # queued requests were cancelled
    cached = list((tmp_path / "cache").glob("*.tif"))
    assert len(cached) == before  # every answer that came is cached, nothing half-written
    assert not list((tmp_path / "cache").glob(".*.tmp"))

    scenes = sh.fetch_scenes(params, progress=False)
    assert len(scenes) == count and all(scene.path.is_file() for scene in scenes)
    assert served(standin) == len(standin.calls("process")) == count  # nothing twice


def test_a_429_pauses_every_thread_until_its_retry_after(standin, creds, tmp_path):
    # The first request gets the 429 at once; the others' answers take 0.3 s, so their threads
    # would send their next request well inside the 1 s that the 429 asks for.
    standin.script("process", 429, headers={"Retry-After": "1000"})  # milliseconds
    standin.slow("process", 0.3)
    scenes = sh.fetch_scenes(make_params(standin, tmp_path, *aois(8), threads=4), progress=False)

    assert len(scenes) == 8
    calls = sorted(standin.calls("process"), key=lambda call: call.arrived)
    (limited,) = [call for call in calls if call.status == 429]
    # Requests already on their way when the 429 was sent may arrive just after it; anything
    # sent once it had been read must wait for the deadline.
    grace = 0.2
    later = [call.arrived - limited.arrived for call in calls if call.arrived > limited.arrived + grace]
    assert later, "the retried request is missing"
    assert min(later) >= 1.0, f"requests sent {min(later):.2f} s after a 429 asking for 1 s"
    assert served(standin) == 8


def test_first_error_stops_the_other_threads(standin, creds, tmp_path):
    standin.script("process", 400, body={"error": {"status": 400, "message": "Invalid bbox"}})
    standin.slow("process", 0.2)
    with pytest.raises(UserError, match="Invalid bbox"):
        sh.fetch_scenes(make_params(standin, tmp_path, *aois(12), threads=2), progress=False)
    assert len(standin.calls("process")) < 12


def test_template_payloads_equal_the_library_payload_of_each_window(tmp_path):
    params = SentinelHubParams.model_validate(
        {"resolution": 20, "cache_dir": str(tmp_path), "aois": [
            WIDE, {"name": "tall", "bbox": [10.0, 45.0, 10.3, 46.0], "time": ["2023-06-01", "2023-06-30"]}]}
    )
    plans = sh.plan_requests(params)
    assert {plan.aoi for plan in plans} == {"wide", "tall"}
    assert len(plans) > 4
    config, collection = client.sh_config(params), sh._collection()
    by_name = {aoi.name: aoi for aoi in params.aois}
    for plan in plans:
        url, payload = sh._library_payload(by_name[plan.aoi], plan.epsg, plan.bounds, plan.width,
                                           plan.height, config, collection)
        assert (url, payload) == (plan.url, plan.payload), plan.scene_id


# --- what it says ----------------------------------------------------------------------------------


def test_each_retry_says_what_failed_which_request_and_when(standin, creds, tmp_path, capsys):
    standin.script("token", 503)
    standin.script("process", 500)
    standin.script("process", 429, headers={"Retry-After": "150"})
    sh.fetch_scenes(make_params(standin, tmp_path), progress=False)
    lines = capsys.readouterr().err.splitlines()
    retries = [line for line in lines if "retrying" in line]
    assert retries == [
        "etl: sentinelhub: HTTP 503 for the token request; retrying in 0.01 s (attempt 2 of 4)",
        "etl: sentinelhub: HTTP 500 for berlin-000 2023-06-01/2023-06-30; retrying in 0.01 s (attempt 2 of 4)",
        "etl: sentinelhub: HTTP 429 for berlin-000 2023-06-01/2023-06-30; retrying in 0.15 s (attempt 3 of 4)",
    ]


@pytest.mark.parametrize("status", [200, 502])
def test_an_html_token_answer_is_named_not_blamed_on_the_credentials(standin, creds, tmp_path, status):
    page = b"<!DOCTYPE html><html><body>Please log in to the proxy</body></html>"
    standin.always("token", status)
    standin._always["token"].headers["Content-Type"] = "text/html; charset=utf-8"
    standin._always["token"].body = page
    with pytest.raises(UserError) as err:
        sh.fetch_scenes(make_params(standin, tmp_path, max_retries=1), progress=False)
    message = one_line(err)
    assert f"the token endpoint at {standin.token_url} answered HTML (status {status}, text/html" in message
    assert "not a JSON token" in message and "proxy" in message
    assert "refused the credentials" not in message
    assert len(standin.calls("token")) == (2 if status >= 500 else 1)  # a 5xx page is retried
    assert standin.calls("process") == []


@pytest.mark.parametrize("secret", ["a b\"c'd e", "Zx9 \"qu0te'd\" tail-77 back\\slash"])
def test_a_secret_with_spaces_and_quotes_is_redacted_whole(monkeypatch, tmp_path, caplog, capsys, secret):
    with StandIn(client_secret=secret) as standin:
        monkeypatch.setenv("SH_CLIENT_ID", standin.client_id)
        monkeypatch.setenv("SH_CLIENT_SECRET", secret)
        caplog.set_level(logging.DEBUG)
        standin.script("process", 500)  # one more round of logged requests
        sh.fetch_scenes(make_params(standin, tmp_path, threads=2), progress=False)
        assert [call.status for call in standin.calls("token")] == [200]
        token = standin.access_token
    captured = capsys.readouterr()
    logged = "\n".join((caplog.text, captured.out, captured.err))
    assert "client_secret=***" in logged  # the token request body was logged, redacted
    parts = [part for part in secret.split() if len(part) > 1]
    for part in parts:
        for form in {part, quote_plus(part), json.dumps(part)[1:-1], repr(part)[1:-1],
                     part.replace('"', '\\"'), part.replace("'", "\\'")}:
            assert form not in logged, f"{form!r} of the secret was logged"
    assert token not in logged


# --- the request guard -----------------------------------------------------------------------------


def test_a_whole_world_aoi_is_refused_before_anything_is_sent_or_written(standin, creds, tmp_path):
    source = make_params(standin, tmp_path, WORLD, resolution=10).model_dump(mode="json")
    params = {"etl": {"source": "sentinelhub", "sentinelhub": source}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["etl", "-q", "-p", str(tmp_path / "params.yaml"),
                                      "--tiles", str(tmp_path / "tiles")])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    world = SentinelHubParams.model_validate(source).aois[0]
    count = len(sh.split_aoi(world, 10)[1])
    assert count > 2000
    assert line.startswith(f"canopy etl: error: {count} Process API request(s) to download")
    assert "processing units" in line and "etl.sentinelhub.max_requests (2000)" in line
    assert "cached requests do not count" in line
    assert standin.calls() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "params.yaml", "xdg"]


def test_a_raised_limit_passes_the_guard_and_says_the_cost(tmp_path, capsys):
    params = SentinelHubParams.model_validate(
        {"aois": [WORLD], "resolution": 10, "max_requests": 100_000, "cache_dir": str(tmp_path)})
    plans = sh.plan_requests(params)
    sh.check_request_budget(plans, 0, params)
    (line,) = capsys.readouterr().err.splitlines()
    units = sum(sh.processing_units(plan) for plan in plans)
    assert line == (f"etl: sentinelhub: {len(plans)} Process API request(s) to download over 1 AOI(s) "
                    f"(about {units:,.1f} processing units; 0 more cached)")


def test_cached_requests_do_not_count_toward_the_limit(standin, creds, tmp_path):
    sh.fetch_scenes(make_params(standin, tmp_path, *aois(3), max_requests=3), progress=False)
    # 3 cached + 1 new under a limit of 1
    sh.fetch_scenes(make_params(standin, tmp_path, *aois(4), max_requests=1), progress=False)
    assert served(standin) == 4
    with pytest.raises(UserError) as err:  # 4 cached + 2 new
        sh.fetch_scenes(make_params(standin, tmp_path, *aois(6), max_requests=1), progress=False)
    message = one_line(err)
    assert message.startswith("2 Process API request(s) to download over 2 AOI(s)")
    assert "4 more cached" in message and "etl.sentinelhub.max_requests (1)" in message
    assert served(standin) == 4


@pytest.mark.parametrize("width, height, expected", [
    (512, 512, 4 / 3),  # B04, B03, B02, SCL: dataMask is not counted
    (2500, 2500, 2500 * 2500 / 512**2 * 4 / 3),
    (10, 10, 0.01 * 4 / 3),  # the area factor's minimum
])
def test_processing_units_follow_the_sentinel_hub_formula(width, height, expected):
    plan = sh.SubRequest(aoi="a", index=0, epsg=32633, bounds=(0, 0, 1, 1), width=width, height=height,
                         time_interval="", url="", payload={}, key="")
    assert sh.processing_units(plan) == pytest.approx(expected)
