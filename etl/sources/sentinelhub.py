"""Sentinel Hub source: Sentinel-2 L2A true colour over each AOI, cached as 5-band GeoTIFFs.

Each AOI (WGS84 bbox) is projected to the UTM zone of its centre, snapped to the
`resolution` grid and cut into a deterministic grid of sub-requests of at most `MAX_PX`
pixels a side (the Process API limit). Each sub-request is one Process API call whose answer
is normalised and cached under `cache_dir`, named by a hash of everything that determines it;
a re-run with the same params reads the cache and sends nothing (not even a token request).
Requests are downloaded on `threads` threads, after a guard that refuses more than
`max_requests` of them (cached ones do not count) and says what they cost in processing units.

Cached file format (the etl core relies on it): GeoTIFF, 5 uint16 bands with descriptions
"B04", "B03", "B02" (surface reflectance x REFLECTANCE_SCALE), "dataMask" (0/1), "SCL" (scene
classification 0..11), in the UTM CRS of the request at `resolution` metres.

This module plans the requests and keeps the cache; sentinelhub_client.py sends them (HTTP,
credentials, retries, secret-free logs). `sentinelhub` and the client are imported inside the
functions (about 0.4 s) so that runs with another etl source do not pay for them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.warp import transform_bounds
from tqdm.auto import tqdm

from canopy.errors import UserError
from canopy.etl.params import AoiParams, SentinelHubParams
from canopy.etl.scene import BandSource, SceneSpec, slug
from canopy.fsutil import atomic_write_bytes
from canopy.hashing import sha256_json
from canopy.params import CanopyParams

if TYPE_CHECKING:
    from canopy.etl.sources.sentinelhub_client import Fetcher

LOGGER = logging.getLogger(__name__)

BAND_NAMES = ("B04", "B03", "B02", "dataMask", "SCL")
REFLECTANCE_SCALE = 10000  # the evalscript returns surface reflectance x this, as uint16
MAX_PX = 2500  # Process API limit on width and height
CACHE_FORMAT = 1  # bump when the cached file layout changes: old entries are then ignored
COLLECTION_NAME = "CANOPY_SENTINEL2_L2A"
POLL_SECONDS = 0.25  # how often the main thread wakes while downloads run (signals)

EVALSCRIPT = Template("""//VERSION=3
function setup() {
  return {
    input: [{bands: ["B04", "B03", "B02", "dataMask", "SCL"]}],
    output: {bands: 5, sampleType: "UINT16"}
  };
}

function evaluatePixel(s) {
  return [s.B04 * $scale, s.B03 * $scale, s.B02 * $scale, s.dataMask, s.SCL];
}
""").substitute(scale=REFLECTANCE_SCALE)


@dataclass(frozen=True)
class FetchedScene:
    """One cached answer; scenes() turns it into the SceneSpec every source returns."""

    scene_id: str  # f"{aoi.name}-{index:03d}", index of the sub-request within the AOI
    path: Path  # cached GeoTIFF (format in the module docstring)
    aoi: str
    time_interval: str  # "YYYY-MM-DD/YYYY-MM-DD"


@dataclass(frozen=True)
class SubRequest:
    """One Process API call: a pixel-aligned window of an AOI in its UTM zone."""

    aoi: str
    index: int
    epsg: int
    bounds: tuple[float, float, float, float]  # minx, miny, maxx, maxy in metres
    width: int
    height: int
    time_interval: str
    url: str
    payload: dict[str, Any]
    key: str  # sha256 of everything that determines the answer

    @property
    def scene_id(self) -> str:
        return f"{self.aoi}-{self.index:03d}"


# ---------------------------------------------------------------------------------------------
# Public entry points


def scenes(params: CanopyParams, workdir: Path, *, progress: bool) -> list[SceneSpec]:
    """The source's scenes, one per sub-request; answers go to the cache, not to `workdir`."""
    etl = params.etl
    return [scene_spec(fetched, etl.reflectance_range)
            for fetched in fetch_scenes(etl.sentinelhub, progress=progress)]


def scene_spec(fetched: FetchedScene, reflectance_range: tuple[float, float]) -> SceneSpec:
    """A cached answer as a scene: RGB, dataMask and SCL bands; the range in the file's units."""
    path = str(fetched.path)
    low, high = reflectance_range
    return SceneSpec(
        scene_id=slug(fetched.scene_id),
        source="sentinelhub",
        rgb=(BandSource(path, 1), BandSource(path, 2), BandSource(path, 3)),
        mask=BandSource(path, 4),
        scl=BandSource(path, 5),
        scale_mode="reflectance",
        reflectance_range=(low * REFLECTANCE_SCALE, high * REFLECTANCE_SCALE),
        acquired=fetched.time_interval,
        extra={"aoi": fetched.aoi},
        region=fetched.aoi,
    )


def fetch_scenes(params: SentinelHubParams, *, progress: bool = True) -> list[FetchedScene]:
    """Download (or read from the cache) every sub-request of every AOI, in params order.

    Downloads run on `params.threads` threads; each answer goes to the cache as it arrives,
    so an interrupted run resumes where it stopped. The result lists the cached files in plan
    order, whatever order they arrived in, so the etl output does not depend on the threads.
    """
    plans = plan_requests(params)
    cache_dir = Path(params.cache_dir)
    unique = list({plan.key: plan for plan in reversed(plans)}.values())[::-1]  # first of each key
    missing = [plan for plan in unique if not _cached_ok(_cache_path(cache_dir, plan), plan)]
    cached = len(unique) - len(missing)
    LOGGER.info(
        "sentinelhub: %d sub-requests over %d AOIs, %d cached, %d to download",
        len(plans), len(params.aois), cached, len(missing),
    )
    if missing:
        check_request_budget(missing, cached, params)
        _download_all(missing, cache_dir, params, progress=progress, cached=cached)
    return [
        FetchedScene(scene_id=plan.scene_id, path=_cache_path(cache_dir, plan), aoi=plan.aoi,
                     time_interval=plan.time_interval)
        for plan in plans
    ]


def _download_all(missing: list[SubRequest], cache_dir: Path, params: SentinelHubParams, *,
                  progress: bool, cached: int) -> None:
    """Download `missing` into the cache on a bounded thread pool.

    On the first error, Ctrl-C or SIGTERM, queued requests are cancelled and the threads stop
    sending; requests already in flight finish (each is bounded by its timeout) and their
    answers are cached, so a re-run downloads nothing twice. Then the error is raised.
    """
    from canopy.etl.sources import sentinelhub_client as client

    stop = threading.Event()
    # Credentials are only needed (and read) when something is downloaded.
    with client.Fetcher(params, stop=stop) as fetcher, tqdm(
        total=cached + len(missing), initial=cached, desc="sentinelhub", unit="req",
        postfix=f"{cached} cached", disable=None if progress else True,
    ) as bar:
        pool = ThreadPoolExecutor(max_workers=params.threads, thread_name_prefix="sentinelhub")
        try:
            futures = {
                pool.submit(_download_to_cache, fetcher, plan, _cache_path(cache_dir, plan), params): index
                for index, plan in enumerate(missing)
            }
            _wait_for_all(futures, bar)
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _wait_for_all(futures: dict[Future, int], bar: Any) -> None:
    """Wait for every download; raise the first failure (in plan order among those seen).

    The wait wakes up every POLL_SECONDS so that a signal (delivered to whichever thread the
    kernel picks) is handled promptly by the main thread.
    """
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
        for future in sorted(done, key=futures.__getitem__):
            future.result()
        bar.update(len(done))


def _download_to_cache(fetcher: Fetcher, plan: SubRequest, path: Path, params: SentinelHubParams) -> None:
    label = f"{plan.scene_id} {plan.time_interval}"
    content = fetcher.download(plan.url, plan.payload, scene_id=plan.scene_id, aoi=plan.aoi, label=label)
    atomic_write_bytes(path, _normalise(content, plan, params))


# ---------------------------------------------------------------------------------------------
# How much a run asks of the service


def processing_units(plan: SubRequest) -> float:
    """Sentinel Hub's processing units (PU) for one Process API request of this module.

    From the Processing Unit definition (docs.sentinel-hub.com/api/latest/api/overview/
    processing-unit/): PU = max(area factor x band factor x format factor x samples, 0.005),
    where area factor = max(width x height / 512^2, 0.01), band factor = input bands / 3
    (dataMask is not counted), format factor = 1 up to 16 bits per sample (UINT8, UINT16),
    2 for FLOAT32, and samples = 1 for a single mosaic (no multi-temporal evalscript).
    """
    area = max(plan.width * plan.height / 512**2, 0.01)
    bands = len([band for band in BAND_NAMES if band != "dataMask"]) / 3
    output_format = 1.0  # UINT16
    return max(area * bands * output_format, 0.005)


def check_request_budget(missing: list[SubRequest], cached: int, params: SentinelHubParams) -> None:
    """Say how many requests and PU the download will take; refuse above max_requests.

    Only requests still to download count: cached answers cost nothing, so a big run that was
    interrupted can be resumed under the same limit it was started with.
    """
    from canopy.etl.sources.sentinelhub_client import notify

    units = sum(processing_units(plan) for plan in missing)
    aois = len({plan.aoi for plan in missing})
    summary = (
        f"{len(missing)} Process API request(s) to download over {aois} AOI(s) "
        f"(about {units:,.1f} processing units; {cached} more cached)"
    )
    if len(missing) > params.max_requests:
        raise UserError(
            f"{summary}: more than etl.sentinelhub.max_requests ({params.max_requests}); check "
            "the AOI bboxes and etl.sentinelhub.resolution, or raise etl.sentinelhub.max_requests "
            "if you mean it (cached requests do not count)"
        )
    notify(summary)


# ---------------------------------------------------------------------------------------------
# Planning: AOI -> pixel-aligned UTM windows -> Process API payloads


def split_aoi(aoi: AoiParams, resolution: float) -> tuple[int, list[tuple[tuple[float, ...], int, int]]]:
    """UTM EPSG code of the AOI's centre and its windows as (bounds, width, height).

    The AOI's WGS84 bbox is projected (densified edges, so the whole area is covered), snapped
    outwards to multiples of `resolution` (at 10 m this is Sentinel-2's native pixel grid) and
    cut into the fewest equal columns and rows that keep each window within MAX_PX pixels.
    Windows are listed row by row from the north-west corner; neighbours share edges exactly.
    """
    from sentinelhub import CRS

    resolution = float(resolution)
    min_lon, min_lat, max_lon, max_lat = aoi.bbox
    epsg = int(CRS.get_utm_from_wgs84((min_lon + max_lon) / 2, (min_lat + max_lat) / 2).epsg)
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *aoi.bbox, densify_pts=21)
    eps = 1e-6
    ix0, iy0 = math.floor(minx / resolution + eps), math.floor(miny / resolution + eps)
    ix1, iy1 = math.ceil(maxx / resolution - eps), math.ceil(maxy / resolution - eps)
    width, height = max(ix1 - ix0, 1), max(iy1 - iy0, 1)
    columns = _even_parts(width, math.ceil(width / MAX_PX))
    rows = _even_parts(height, math.ceil(height / MAX_PX))

    def coord(i: int) -> float:
        return round(i * resolution, 6)

    windows = []
    top = iy0 + height
    for row_h in rows:
        left = ix0
        for col_w in columns:
            bounds = (coord(left), coord(top - row_h), coord(left + col_w), coord(top))
            windows.append((bounds, col_w, row_h))
            left += col_w
        top -= row_h
    return epsg, windows


def plan_requests(params: SentinelHubParams) -> list[SubRequest]:
    """Every sub-request of every AOI, in a deterministic order, with its cache key.

    sentinelhub builds the payload of each AOI's first window; the other windows' payloads are
    copies of it with their own bbox and size (the only fields that differ), as building each
    through the library takes about 1.5 ms: 30 s for the 20,000 windows of a mistyped bbox
    that the request guard must be able to refuse quickly.
    """
    from canopy.etl.sources.sentinelhub_client import sh_config

    config = sh_config(params)  # no credentials: planning sends nothing
    collection = _collection()
    plans = []
    for aoi in params.aois:
        start, end = (day.isoformat() for day in aoi.time)
        epsg, windows = split_aoi(aoi, params.resolution)
        url, template = _library_payload(aoi, epsg, *windows[0], config, collection)
        for index, (bounds, width, height) in enumerate(windows):
            payload = _window_payload(template, bounds, width, height)
            key = sha256_json(
                {
                    "format": CACHE_FORMAT,
                    "base_url": params.base_url,
                    "url": url,
                    "resolution": params.resolution,
                    "payload": payload,  # bbox, CRS, size, time, max cloud, mosaicking, evalscript
                }
            )
            plans.append(
                SubRequest(
                    aoi=aoi.name, index=index, epsg=epsg, bounds=bounds, width=width,
                    height=height, time_interval=f"{start}/{end}", url=url,
                    payload=payload, key=key,
                )
            )
    return plans


def _library_payload(aoi: AoiParams, epsg: int, bounds: tuple[float, ...], width: int, height: int,
                     config: Any, collection: Any) -> tuple[str, dict[str, Any]]:
    """The Process API URL and JSON payload sentinelhub builds for one window of `aoi`."""
    from sentinelhub import CRS, BBox, MimeType, MosaickingOrder, SentinelHubRequest

    start, end = (day.isoformat() for day in aoi.time)
    input_data = SentinelHubRequest.input_data(
        data_collection=collection,
        time_interval=(start, end),
        mosaicking_order=MosaickingOrder.LEAST_CC,
        # set here rather than via maxcc=, which truncates (0.29 -> 28 %)
        other_args={"dataFilter": {"maxCloudCoverage": round(aoi.max_cloud * 100, 3)}},
    )
    request = SentinelHubRequest(
        evalscript=EVALSCRIPT,
        input_data=[input_data],
        responses=[SentinelHubRequest.output_response("default", MimeType.TIFF)],
        bbox=BBox(bounds, crs=CRS(epsg)),
        size=(width, height),
        config=config,
    )
    download = request.get_download_list()[0]
    return str(download.url), json.loads(json.dumps(download.post_values))


def _window_payload(template: dict[str, Any], bounds: tuple[float, ...], width: int,
                    height: int) -> dict[str, Any]:
    """`template` (another window's payload of the same AOI) for this window.

    Only the dicts on the way to bbox and size are copied; the rest (data filter, evalscript)
    is shared with the template, which nothing modifies (a deep copy would take 3 s for the
    20,000 windows of a whole-world bbox).
    """
    inputs, output = template["input"], template["output"]
    return {
        **template,
        "input": {**inputs, "bounds": {**inputs["bounds"], "bbox": [float(value) for value in bounds]}},
        "output": {**output, "width": width, "height": height},
    }


def _even_parts(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def _collection() -> Any:
    """Sentinel-2 L2A without a fixed service URL, so requests go to `base_url`.

    `DataCollection.SENTINEL2_L2A` is pinned to services.sentinel-hub.com, which overrides
    SHConfig.sh_base_url; a derived collection with service_url=None follows the config.
    """
    from sentinelhub import DataCollection

    try:
        return DataCollection.SENTINEL2_L2A.define_from(COLLECTION_NAME, service_url=None)
    except ValueError:  # the same definition already exists under another name
        return DataCollection(DataCollection.SENTINEL2_L2A.value.derive(service_url=None))


# ---------------------------------------------------------------------------------------------
# Cache


def _cache_path(cache_dir: Path, plan: SubRequest) -> Path:
    return cache_dir / f"s2l2a-{plan.key[:40]}.tif"


def _cached_ok(path: Path, plan: SubRequest) -> bool:
    """True if `path` is a complete cached answer for `plan`; anything else is re-downloaded."""
    if not path.is_file():
        return False
    try:
        with rasterio.Env(), rasterio.open(path) as src:
            ok = (
                src.count == len(BAND_NAMES)
                and all(dtype == "uint16" for dtype in src.dtypes)
                and tuple(src.descriptions) == BAND_NAMES
                and (src.width, src.height) == (plan.width, plan.height)
                and src.crs is not None
                and src.crs.to_epsg() == plan.epsg
            )
            if ok:
                src.read(len(BAND_NAMES), window=((src.height - 1, src.height), (0, src.width)))
    except Exception:  # noqa: BLE001  (unreadable = not cached)
        ok = False
    if not ok:
        LOGGER.warning("sentinelhub: cached file %s is incomplete or invalid; downloading again", path)
    return ok


def _normalise(content: bytes, plan: SubRequest, params: SentinelHubParams) -> bytes:
    """The answer as the cached GeoTIFF: 5 described uint16 bands, georeferenced by the plan."""
    where = f"{urlsplit(plan.url).path} for scene {plan.scene_id}"
    try:
        with rasterio.Env(), MemoryFile(content) as memfile, memfile.open() as src:
            data = src.read()
    except Exception:  # noqa: BLE001
        raise UserError(
            f"Sentinel Hub answered {where} with something that is not a GeoTIFF: check that "
            f"etl.sentinelhub.base_url ({params.base_url}) is a Sentinel Hub deployment"
        ) from None
    expected = (len(BAND_NAMES), plan.height, plan.width)
    if data.shape != expected:
        raise UserError(
            f"Sentinel Hub answered {where} with an image of shape {data.shape}, expected {expected}: "
            f"check that etl.sentinelhub.base_url ({params.base_url}) is a Sentinel Hub deployment"
        )
    data = data.astype(np.uint16, copy=False)
    profile = {
        "driver": "GTiff", "width": plan.width, "height": plan.height, "count": len(BAND_NAMES),
        "dtype": "uint16", "crs": f"EPSG:{plan.epsg}",
        "transform": from_bounds(*plan.bounds, plan.width, plan.height),
        "compress": "deflate", "predictor": 2, "tiled": True, "blockxsize": 256, "blockysize": 256,
    }
    with rasterio.Env(), MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
            for band, name in enumerate(BAND_NAMES, start=1):
                dst.set_band_description(band, name)
            dst.update_tags(
                source="sentinelhub", collection="sentinel-2-l2a", time_interval=plan.time_interval,
                mosaicking_order="leastCC", resolution=str(params.resolution), request_key=plan.key,
                reflectance_scale=str(REFLECTANCE_SCALE),
            )
        return memfile.read()
