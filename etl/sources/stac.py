"""STAC source: Sentinel-2 L2A from a STAC API of cloud-optimised GeoTIFFs, no account needed.

For each AOI, the catalog is searched (pystac-client; POST or GET, paged, every call under the
retry policy of http.py) for items of the collection over the AOI's bbox and dates with at most
its cloud cover. Per Sentinel-2 grid tile, the `items_per_aoi` least cloudy items are kept. Of
each, only the window over the AOI is read, straight from the COGs (cog.py), in chunks of
CHUNK pixels on `threads` threads: red, green and blue at 10 m and the scene classification
(SCL, 20 m) resampled nearest-neighbour onto the 10 m grid. The window is cached under
`cache_dir` as one GeoTIFF per (AOI, item), named by a hash of what determines it, as are the
search answers, so a re-run with the same params sends no request at all.

Cached file format (the etl core relies on it): GeoTIFF, 4 uint16 bands described "B04",
"B03", "B02" (the items' digital numbers as stored, ESA's +1000 offset included where the
processing baseline has one) and "SCL"; nodata 0; the item's UTM CRS at 10 m.

Reflectance is DN x 1e-4 - 0.1 from processing baseline 04.00 on (ESA adds 1000 to every DN
since January 2022, and the c1 collection keeps it), DN x 1e-4 before. The offset is decided
from `s2:processing_baseline` alone: Earth Search's legacy collection's own offset metadata is
wrong on some scenes in both directions. The 8-bit mapping is the Sentinel Hub source's
(etl.reflectance_range, etl.gamma), so tiles of both sources look alike.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import from_bounds as window_from_bounds

from canopy.errors import UserError
from canopy.etl.params import AoiParams, StacParams
from canopy.etl.scene import BandSource, SceneSpec, slug
from canopy.etl.sources import http
from canopy.etl.sources.cog import RemoteReader, remote_env
from canopy.etl.sources.download import cached_raster_ok, progress_bar, request_guard, result_of
from canopy.etl.sources.redaction import redacted_logs
from canopy.fsutil import atomic_write_text
from canopy.hashing import sha256_json
from canopy.params import CanopyParams

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    api_url: str
    collection: str
    signed: bool  # assets need a token (Planetary Computer)


CATALOGS = {
    "earth-search": Catalog("https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a", False),
    "planetary-computer": Catalog("https://planetarycomputer.microsoft.com/api/stac/v1",
                                  "sentinel-2-l2a", True),
}
# Asset keys by role: Earth Search names them by colour, Planetary Computer by band.
ASSET_KEYS = {"red": ("red", "B04"), "green": ("green", "B03"), "blue": ("blue", "B02"),
              "scl": ("scl", "SCL")}
BAND_NAMES = ("B04", "B03", "B02", "SCL")
REFLECTANCE_SCALE = 10000  # DN per unit reflectance
BOA_OFFSET = 1000  # DN added by ESA from processing baseline 04.00 on
OFFSET_BASELINE = (4, 0)
BYTES_PER_PIXEL = 3 * 2 + 0.25  # red, green, blue uint16 at 10 m; SCL uint8 at 20 m
CHUNK = 1024  # pixels a side of one window read (Sentinel-2 COGs have 1024 px blocks)
CACHE_FORMAT = 1  # bump when the cached file layout changes: old entries are then ignored
SEARCH_TIMEOUT_SECONDS = 60
LEGACY_EARTH_SEARCH = "sentinel-2-l2a"


# ---------------------------------------------------------------------------------------------
# Public entry point


def scenes(params: CanopyParams, workdir: Path, *, progress: bool) -> list[SceneSpec]:
    """One scene per kept item of each AOI; reads go to the cache, not to `workdir`."""
    etl = params.etl
    return [scene_spec(plan, path, etl.reflectance_range)
            for plan, path in fetch_scenes(etl.stac, progress=progress)]


def catalog_of(params: StacParams) -> Catalog:
    preset = CATALOGS[params.catalog]
    return Catalog(params.api_url or preset.api_url, params.collection or preset.collection,
                   preset.signed)


# ---------------------------------------------------------------------------------------------
# Items: what the search answers, reduced to what the source uses


@dataclass(frozen=True)
class Item:
    id: str
    datetime: str
    cloud_cover: float | None
    grid: str  # Sentinel-2 grid tile (MGRS), e.g. "MGRS-33UUU"
    baseline: str
    epsg: int
    hrefs: dict[str, str]  # role -> asset href (unsigned)
    grids: dict[str, Any]  # role -> {"transform": [6 floats], "shape": [rows, cols]} or None

    @property
    def offset(self) -> int:
        """DN of zero reflectance: BOA_OFFSET from processing baseline 04.00 on."""
        return BOA_OFFSET if baseline_tuple(self.baseline) >= OFFSET_BASELINE else 0

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def baseline_tuple(baseline: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(baseline).split("."))
    except ValueError:
        raise UserError(f"processing baseline {baseline!r} is not of the form NN.NN") from None


def item_from_stac(item: dict[str, Any]) -> Item:
    """The fields the source needs from a STAC item (Earth Search or Planetary Computer)."""
    props, assets = item.get("properties", {}), item.get("assets", {})
    item_id = str(item.get("id"))
    hrefs, grids = {}, {}
    for role, keys in ASSET_KEYS.items():
        key = next((k for k in keys if k in assets), None)
        if key is None:
            raise UserError(f"STAC item {item_id} has no {role} asset (looked for {list(keys)}): "
                            "is etl.stac.collection a Sentinel-2 L2A collection?")
        asset = assets[key]
        hrefs[role] = asset["href"]
        transform, shape = asset.get("proj:transform"), asset.get("proj:shape")
        grids[role] = {"transform": transform[:6], "shape": shape} if transform and shape else None
    baseline = props.get("s2:processing_baseline") or props.get("processing:version")
    if baseline is None:
        raise UserError(f"STAC item {item_id} has no s2:processing_baseline: the reflectance "
                        "offset cannot be decided without it; choose another collection")
    epsg = _epsg(props) or _epsg(assets.get(next(k for k in ASSET_KEYS["red"] if k in assets)))
    if epsg is None:
        raise UserError(f"STAC item {item_id} has no proj:epsg or proj:code: its CRS is unknown")
    grid = props.get("grid:code") or props.get("s2:mgrs_tile") or f"EPSG-{epsg}"
    return Item(id=item_id, datetime=str(props.get("datetime")), cloud_cover=props.get("eo:cloud_cover"),
                grid=str(grid), baseline=str(baseline), epsg=epsg, hrefs=hrefs, grids=grids)


def _epsg(fields: dict[str, Any] | None) -> int | None:
    if not fields:
        return None
    if fields.get("proj:epsg"):
        return int(fields["proj:epsg"])
    code = str(fields.get("proj:code") or "")
    return int(code.split(":")[1]) if code.upper().startswith("EPSG:") else None


def select_items(items: list[Item], per_grid: int) -> list[Item]:
    """The `per_grid` least cloudy items of each grid tile (ties: earliest, then by id), in a
    stable order whatever order the API answered in."""
    by_grid: dict[str, list[Item]] = {}
    for item in items:
        by_grid.setdefault(item.grid, []).append(item)
    kept = []
    for grid in sorted(by_grid):
        ranked = sorted(by_grid[grid], key=lambda it: (
            it.cloud_cover if it.cloud_cover is not None else 100.0, it.datetime, it.id))
        kept.extend(sorted(ranked[:per_grid], key=lambda it: (it.datetime, it.id)))
    return kept


# ---------------------------------------------------------------------------------------------
# Search


class StacIO:
    """pystac-client's StacApiIO with the source's retry policy on every call (GET and POST
    pages alike), Retry-After honoured, and one clear line for an answer that is not retried.
    urllib3's own retries are off: they skip POST and ignore the rate gate."""

    def __new__(cls, retrier: http.Retrier):
        from pystac_client.stac_api_io import StacApiIO

        class _RetryingStacApiIO(StacApiIO):
            def request(self, href: str, method: str | None = None,
                        headers: dict[str, str] | None = None,
                        parameters: dict[str, Any] | None = None) -> str:
                return _request(self, retrier, href, (method or "GET").upper(), headers, parameters)

        return _RetryingStacApiIO(max_retries=None, timeout=SEARCH_TIMEOUT_SECONDS)


def _request(io: Any, retrier: http.Retrier, href: str, method: str,
             headers: dict[str, str] | None, parameters: dict[str, Any] | None) -> str:
    import requests

    if method in ("POST", "PUT", "PATCH"):
        request = requests.Request(method=method, url=href, headers=headers, json=parameters)
    else:
        request = requests.Request(method=method, url=href, headers=headers,
                                   params=deepcopy(parameters) or {})
    parts = urlsplit(href)
    label = f"{method} {parts.path or '/'}"

    def attempt() -> str:
        retrier.gate.wait()
        prepped = io.session.prepare_request(request)
        settings = io.session.merge_environment_settings(prepped.url, {}, None, True, None)
        try:
            response = io.session.send(prepped, timeout=io.timeout, **settings)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise http.Retry(f"connection failed ({type(exc).__name__})", None) from None
        status = response.status_code
        if 200 <= status < 300:
            return response.content.decode("utf-8")
        retry = http.status_retry(status, http.retry_after_seconds(response.headers.get("Retry-After")))
        if retry is not None:
            raise retry
        text = " ".join(response.text.split())[:200]
        raise UserError(f"the STAC API answered HTTP {status} to {label} at {parts.netloc}: "
                        f"{text or 'no details'}; check etl.stac.api_url and etl.stac.collection")

    return retrier.run(attempt, f"{parts.scheme}://{parts.netloc}", "api_url", label)


def search_key(catalog: Catalog, aoi: AoiParams) -> str:
    return sha256_json({"format": CACHE_FORMAT, "api_url": catalog.api_url,
                        "collection": catalog.collection, "bbox": list(aoi.bbox),
                        "time": [day.isoformat() for day in aoi.time], "max_cloud": aoi.max_cloud})


def search_aoi(params: StacParams, catalog: Catalog, aoi: AoiParams, retrier: http.Retrier,
               cache_dir: Path) -> list[Item]:
    """Every item matching `aoi`, from the cache or the API (then cached)."""
    path = cache_dir / f"search-{search_key(catalog, aoi)[:40]}.json"
    if path.is_file():
        try:
            return [Item(**entry) for entry in json.loads(path.read_text())["items"]]
        except (ValueError, KeyError, TypeError):
            LOGGER.warning("stac: cached search %s is unreadable; searching again", path)
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    start, end = aoi.time
    limit = round(aoi.max_cloud * 100, 3)
    try:
        client = Client.open(catalog.api_url, stac_io=StacIO(retrier))
        search = client.search(
            collections=[catalog.collection], bbox=list(aoi.bbox),
            datetime=f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59Z",
            query={"eo:cloud_cover": {"lte": limit}}, limit=params.page_size, method=params.method,
        )
        answers = list(search.items_as_dicts())
    except APIError as err:  # pystac-client's own checks (conformance, a non-JSON answer)
        raise UserError(f"the STAC API at {catalog.api_url} cannot be searched "
                        f"({' '.join(str(err).split())[:200]}); check etl.stac.api_url") from None
    except (ValueError, NotImplementedError) as err:
        raise UserError(f"the STAC API at {catalog.api_url} answered something unusable "
                        f"({' '.join(str(err).split())[:200]}); check etl.stac.api_url") from None
    # The query extension filters server-side; this checks it (an API may ignore `query`).
    items = [item_from_stac(answer) for answer in answers
             if (answer.get("properties", {}).get("eo:cloud_cover") or 0.0) <= limit]
    if items:  # an empty answer is not cached: the catalog may fill in later
        atomic_write_text(path, json.dumps({"items": [item.to_json() for item in items]}, indent=1))
    return items


def no_items_error(catalog: Catalog, aoi: AoiParams) -> UserError:
    start, end = aoi.time
    return UserError(
        f"etl.stac: no {catalog.collection} item over AOI {aoi.name!r} (bbox {list(aoi.bbox)}) "
        f"between {start} and {end} with at most {aoi.max_cloud:.0%} cloud at {catalog.api_url}; "
        "widen its time, raise its max_cloud or check its bbox"
    )


# ---------------------------------------------------------------------------------------------
# Plans: which window of which item, read in which chunks


@dataclass(frozen=True)
class ScenePlan:
    aoi: str
    aoi_bbox: tuple[float, float, float, float]
    item: Item
    key: str  # sha256 of everything that determines the cached file

    @property
    def scene_id(self) -> str:
        return slug(f"{self.aoi}-{self.item.id}")


def scene_key(catalog: Catalog, aoi: AoiParams, item: Item) -> str:
    return sha256_json({"format": CACHE_FORMAT, "collection": catalog.collection,
                        "item": item.id, "hrefs": item.hrefs, "bbox": list(aoi.bbox)})


def aoi_window(bbox: tuple[float, ...], epsg: int, transform: Affine, width: int,
               height: int) -> Window | None:
    """The AOI's pixels in the item's 10 m grid, snapped outwards to even offsets (so that the
    20 m SCL grid lines up), clipped to the item; None if they do not overlap."""
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *bbox, densify_pts=21)
    window = window_from_bounds(minx, miny, maxx, maxy, transform)
    col0 = max(0, math.floor(window.col_off / 2) * 2)
    row0 = max(0, math.floor(window.row_off / 2) * 2)
    col1 = min(width, math.ceil((window.col_off + window.width) / 2) * 2)
    row1 = min(height, math.ceil((window.row_off + window.height) / 2) * 2)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def chunks(window: Window) -> list[Window]:
    """`window` cut along the item's CHUNK grid (reads then match the COG's blocks)."""
    out = []
    row = window.row_off
    while row < window.row_off + window.height:
        row_end = min((row // CHUNK + 1) * CHUNK, window.row_off + window.height)
        col = window.col_off
        while col < window.col_off + window.width:
            col_end = min((col // CHUNK + 1) * CHUNK, window.col_off + window.width)
            out.append(Window(col, row, col_end - col, row_end - row))
            col = col_end
        row = row_end
    return out


# ---------------------------------------------------------------------------------------------
# Fetching


class Session:
    """What one run shares: the stop event, the retry policy, the remote reader."""

    def __init__(self, params: StacParams, catalog: Catalog):
        self.params, self.catalog = params, catalog
        self.stop = threading.Event()
        self.retrier = http.Retrier(service="STAC", source="stac", section="etl.stac",
                                    max_retries=params.max_retries, stop=self.stop,
                                    base_seconds=http.RETRY_BASE_SECONDS)
        env = remote_env(params.max_retries, http.RETRY_BASE_SECONDS)
        self.reader = RemoteReader(self.retrier, env, "asset", "api_url",
                                   sign=_signer() if catalog.signed else None)


def _signer() -> Any:
    """Planetary Computer's signing: anonymous SAS tokens, cached by the package until they
    expire; done at read time so cached search answers never hold a token."""
    try:
        import planetary_computer
    except ImportError:
        raise UserError("etl.stac.catalog planetary-computer needs the planetary-computer "
                        "package: pip install planetary-computer") from None
    import requests

    def sign(href: str) -> str:
        try:
            return planetary_computer.sign_url(href)
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else None
            retry = http.status_retry(status or 500, None)
            if retry is not None:
                raise retry from None
            raise UserError(f"Planetary Computer refused a token for {href.split('?')[0]} "
                            f"(HTTP {status}); try again later") from None
        except requests.RequestException as err:
            raise http.Retry(f"token request failed ({type(err).__name__})", None) from None

    return sign


def fetch_scenes(params: StacParams, *, progress: bool = True) -> list[tuple[ScenePlan, Path]]:
    """Search every AOI, then read (or find in the cache) every kept item's window, in order."""
    catalog = catalog_of(params)
    if catalog.collection == LEGACY_EARTH_SEARCH and "earth-search" in catalog.api_url:
        http.notify("stac", f"{catalog.collection} is Earth Search's legacy collection: its "
                    "offset metadata (earthsearch:boa_offset_applied) is wrong on some scenes, so "
                    "the offset is decided from s2:processing_baseline alone; prefer "
                    "sentinel-2-c1-l2a")
    cache_dir = Path(params.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    session = Session(params, catalog)
    plans = []
    with redacted_logs(()):  # signed URLs carry tokens: keep them out of debug logs
        for aoi in params.aois:
            items = search_aoi(params, catalog, aoi, session.retrier, cache_dir)
            if not items:
                raise no_items_error(catalog, aoi)
            plans.extend(ScenePlan(aoi.name, aoi.bbox, item, scene_key(catalog, aoi, item))
                         for item in select_items(items, params.items_per_aoi))
        missing = [plan for plan in plans if not _cached_ok(_cache_path(cache_dir, plan), plan)]
        windows = _plan_windows(missing, session)
        cached = len(plans) - len(missing)
        LOGGER.info("stac: %d scenes over %d AOIs, %d cached", len(plans), len(params.aois), cached)
        todo = [(plan, windows[plan.key]) for plan in missing if windows[plan.key] is not None]
        if todo:
            check_request_budget(todo, cached, params)
            _read_all(todo, cache_dir, session, progress=progress)
    kept = [(plan, _cache_path(cache_dir, plan)) for plan in plans if _cache_path(cache_dir, plan).is_file()]
    if not kept:
        raise UserError("etl.stac: the items found do not overlap the AOIs' pixels; check the bboxes")
    return kept


@dataclass(frozen=True)
class Grid:
    transform: Affine
    width: int
    height: int


def _plan_windows(plans: list[ScenePlan], session: Session) -> dict[str, tuple[Grid, Window] | None]:
    """The red asset's grid and the AOI window of each plan (None: no overlap); from the item's
    proj metadata, else from the COG's header."""
    out = {}
    for plan in plans:
        grid = _red_grid(plan.item, session)
        window = aoi_window(plan.aoi_bbox, plan.item.epsg, grid.transform, grid.width, grid.height)
        if window is None:
            LOGGER.info("stac: item %s does not overlap AOI %s; skipped", plan.item.id, plan.aoi)
        out[plan.key] = None if window is None else (grid, window)
    return out


def _red_grid(item: Item, session: Session) -> Grid:
    meta = item.grids.get("red")
    if meta is not None:
        rows, cols = meta["shape"]
        return Grid(Affine(*meta["transform"]), int(cols), int(rows))
    return session.reader.run(item.hrefs["red"], f"{item.id} red",
                              lambda ds: Grid(ds.transform, ds.width, ds.height))


def check_request_budget(todo: list[tuple[ScenePlan, tuple[Grid, Window]]], cached: int,
                         params: StacParams) -> None:
    """Say how many window reads the run takes; refuse above max_requests."""
    reads = sum(len(chunks(window)) * len(BAND_NAMES) for _, (_, window) in todo)
    pixels = sum(int(window.width * window.height) for _, (_, window) in todo)
    megabytes = pixels * BYTES_PER_PIXEL / 1e6
    summary = (f"{reads} window read(s) of {len(todo)} scene(s) over "
               f"{len({plan.aoi for plan, _ in todo})} AOI(s) (about {megabytes:,.1f} MB of "
               f"pixels before compression; {cached} more scene(s) cached)")
    request_guard(source="stac", section="etl.stac", summary=summary, count=reads,
                  limit=params.max_requests, check="the AOI bboxes and etl.stac.items_per_aoi",
                  cached_noun="scenes")


def _read_all(todo, cache_dir: Path, session: Session, *, progress: bool) -> None:
    total = sum(len(chunks(window)) for _, (_, window) in todo)
    threads = session.params.threads
    with progress_bar("stac", total=total, unit="chunk", progress=progress) as bar, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stac") as pool:
        try:
            for plan, (grid, window) in todo:
                _read_scene(plan, grid, window, _cache_path(cache_dir, plan), session, pool, bar)
        except BaseException:
            session.stop.set()
            raise


def _read_scene(plan: ScenePlan, grid: Grid, window: Window, path: Path, session: Session,
                pool: ThreadPoolExecutor, bar: Any) -> None:
    """Read `window` chunk by chunk on the pool and write it, in order, to the cache.

    At most 2 x threads chunks are in flight or waiting to be written, so memory does not grow
    with the window. The file is written beside its final name and renamed when complete: an
    error or interruption leaves no cached file, only nothing.
    """
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    profile = {
        "driver": "GTiff", "width": int(window.width), "height": int(window.height),
        "count": len(BAND_NAMES), "dtype": "uint16", "nodata": 0, "crs": f"EPSG:{plan.item.epsg}",
        "transform": rasterio.windows.transform(window, grid.transform),
        "compress": "deflate", "predictor": 2, "tiled": True, "blockxsize": 256, "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
    }
    in_flight: deque[tuple[Window, Future]] = deque()
    try:
        with rasterio.Env(), rasterio.open(partial, "w", **profile) as dst:
            for chunk in chunks(window):
                in_flight.append((chunk, pool.submit(read_chunk, plan, grid, chunk, session)))
                if len(in_flight) >= 2 * session.params.threads:
                    _write_next(in_flight, dst, window, bar)
            while in_flight:
                _write_next(in_flight, dst, window, bar)
            for band, name in enumerate(BAND_NAMES, start=1):
                dst.set_band_description(band, name)
            item = plan.item
            dst.update_tags(source="stac", item=item.id, datetime=item.datetime,
                            processing_baseline=item.baseline, offset=str(item.offset),
                            grid=item.grid, aoi=plan.aoi, request_key=plan.key)
        os.replace(partial, path)
    except BaseException:
        for _, future in in_flight:
            future.cancel()
        partial.unlink(missing_ok=True)
        raise


def _write_next(in_flight: deque, dst: Any, window: Window, bar: Any) -> None:
    chunk, future = in_flight.popleft()
    data = result_of(future)
    target = Window(chunk.col_off - window.col_off, chunk.row_off - window.row_off,
                    chunk.width, chunk.height)
    dst.write(data, window=target)
    bar.update(1)


def read_chunk(plan: ScenePlan, grid: Grid, chunk: Window, session: Session) -> np.ndarray:
    """(4, rows, cols) uint16: red, green, blue and SCL (nearest-neighbour to 10 m)."""
    item, reader = plan.item, session.reader
    shape = (int(chunk.height), int(chunk.width))
    bands = [reader.run(item.hrefs[role], f"{item.id} {role}",
                        lambda ds: _read_band(ds, chunk, shape))
             for role in ("red", "green", "blue")]
    bounds = window_bounds(chunk, grid.transform)
    bands.append(reader.run(item.hrefs["scl"], f"{item.id} scl",
                            lambda ds: _read_band(ds, window_from_bounds(*bounds, ds.transform), shape)))
    return np.stack(bands).astype(np.uint16, copy=False)


def _read_band(dataset: Any, window: Window, shape: tuple[int, int]) -> np.ndarray:
    return dataset.read(1, window=window, out_shape=shape, resampling=Resampling.nearest)


# ---------------------------------------------------------------------------------------------
# Cache


def _cache_path(cache_dir: Path, plan: ScenePlan) -> Path:
    return cache_dir / f"s2-{plan.scene_id[:80]}-{plan.key[:16]}.tif"


def _cached_ok(path: Path, plan: ScenePlan) -> bool:
    """True if `path` is a complete cached window for `plan`; anything else is read again."""
    def accept(src: Any) -> bool:
        return (tuple(src.descriptions) == BAND_NAMES and src.tags().get("request_key") == plan.key
                and all(dtype == "uint16" for dtype in src.dtypes))

    return cached_raster_ok(path, accept, logger=LOGGER, source="stac", redo="reading again")


def scene_spec(plan: ScenePlan, path: Path, reflectance_range: tuple[float, float]) -> SceneSpec:
    """A cached window as a scene: the reflectance range in DN, the item's offset included."""
    item = plan.item
    low, high = reflectance_range
    offset = item.offset
    name = str(path)
    return SceneSpec(
        scene_id=plan.scene_id,
        source="stac",
        rgb=(BandSource(name, 1), BandSource(name, 2), BandSource(name, 3)),
        scl=BandSource(name, 4),
        scale_mode="reflectance",
        reflectance_range=(low * REFLECTANCE_SCALE + offset, high * REFLECTANCE_SCALE + offset),
        acquired=item.datetime,
        origin=tuple(item.hrefs[role] for role in ("red", "green", "blue", "scl")),
        region=plan.aoi,
        item=item.id,
        processing_baseline=item.baseline,
        extra={"aoi": plan.aoi, "item": item.id, "processing_baseline": item.baseline,
               "offset": offset, "cloud_cover": item.cloud_cover, "grid": item.grid},
    )
