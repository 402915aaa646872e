"""Sentinel Hub source: Sentinel-2 L2A true colour over each AOI, cached as 5-band GeoTIFFs.

Each AOI (WGS84 bbox) is projected to the UTM zone of its centre, snapped to the
`resolution` grid and cut into a deterministic grid of sub-requests of at most `MAX_PX`
pixels a side (the Process API limit). Each sub-request is one Process API call whose answer
is normalised and cached under `cache_dir`, named by a hash of everything that determines it;
a re-run with the same params reads the cache and sends nothing (not even a token request).

Cached file format (the etl core relies on it): GeoTIFF, 5 uint16 bands with descriptions
"B04", "B03", "B02" (surface reflectance x 10000), "dataMask" (0/1), "SCL" (scene
classification 0..11), in the UTM CRS of the request at `resolution` metres.

Credentials come only from env SH_CLIENT_ID/SH_CLIENT_SECRET or a sentinelhub config profile
(read, never written); they never appear in params, logs or error messages.

`sentinelhub` is imported inside the functions (about 0.4 s) so that runs with another etl
source do not pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
import requests
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.warp import transform_bounds
from tqdm.auto import tqdm

from canopy.errors import UserError
from canopy.etl.params import AoiParams, SentinelHubParams
from canopy.fsutil import atomic_write_bytes

LOGGER = logging.getLogger(__name__)

BAND_NAMES = ("B04", "B03", "B02", "dataMask", "SCL")
MAX_PX = 2500  # Process API limit on width and height
CACHE_FORMAT = 1  # bump when the cached file layout changes: old entries are then ignored
RETRY_BASE_SECONDS = 1.0  # first wait after a 5xx/connection error without Retry-After; doubles
MAX_WAIT_SECONDS = 600.0  # cap on any single wait, Retry-After included
DOWNLOAD_TIMEOUT_SECONDS = 300.0
COLLECTION_NAME = "CANOPY_SENTINEL2_L2A"
ENV_ID = "SH_CLIENT_ID"
ENV_SECRET = "SH_CLIENT_SECRET"

EVALSCRIPT = """//VERSION=3
function setup() {
  return {
    input: [{bands: ["B04", "B03", "B02", "dataMask", "SCL"]}],
    output: {bands: 5, sampleType: "UINT16"}
  };
}

function evaluatePixel(s) {
  return [s.B04 * 10000, s.B03 * 10000, s.B02 * 10000, s.dataMask, s.SCL];
}
"""


@dataclass(frozen=True)
class FetchedScene:
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
# Public entry point


def fetch_scenes(params: SentinelHubParams, *, progress: bool = True) -> list[FetchedScene]:
    """Download (or read from the cache) every sub-request of every AOI, in params order."""
    names = [aoi.name for aoi in params.aois]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(
            f"etl.sentinelhub.aois: AOI names must be unique, {duplicates[0]!r} appears more than "
            "once; rename one of them"
        )
    plans = plan_requests(params)
    cache_dir = Path(params.cache_dir)
    missing = [plan for plan in plans if not _cached_ok(_cache_path(cache_dir, plan), plan)]
    LOGGER.info(
        "sentinelhub: %d sub-requests over %d AOIs, %d cached, %d to download",
        len(plans), len(params.aois), len(plans) - len(missing), len(missing),
    )
    missing_keys = {plan.key for plan in missing}
    fetcher = _Fetcher(params) if missing else None  # credentials only needed to download
    scenes = []
    fetched: set[str] = set()  # two AOIs with the same window share one file
    with contextlib.ExitStack() as stack:
        if fetcher is not None:
            stack.enter_context(_redacted_logs(fetcher.secrets))
        bar = stack.enter_context(
            tqdm(total=len(plans), desc="sentinelhub", unit="req", disable=None if progress else True)
        )
        for plan in plans:
            path = _cache_path(cache_dir, plan)
            if plan.key in missing_keys and plan.key not in fetched:
                assert fetcher is not None
                content = fetcher.download(plan)
                atomic_write_bytes(path, _normalise(content, plan, params))
                fetched.add(plan.key)
            scenes.append(
                FetchedScene(scene_id=plan.scene_id, path=path, aoi=plan.aoi, time_interval=plan.time_interval)
            )
            bar.update(1)
    return scenes


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
    """Every sub-request of every AOI, in a deterministic order, with its cache key."""
    from sentinelhub import CRS, BBox, MimeType, MosaickingOrder, SentinelHubRequest

    config = _config(params)
    collection = _collection()
    plans = []
    for aoi in params.aois:
        start, end = (day.isoformat() for day in aoi.time)
        epsg, windows = split_aoi(aoi, params.resolution)
        for index, (bounds, width, height) in enumerate(windows):
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
            payload = json.loads(json.dumps(download.post_values))
            key = _hash(
                {
                    "format": CACHE_FORMAT,
                    "base_url": params.base_url,
                    "url": download.url,
                    "resolution": params.resolution,
                    "payload": payload,  # bbox, CRS, size, time, max cloud, mosaicking, evalscript
                }
            )
            plans.append(
                SubRequest(
                    aoi=aoi.name, index=index, epsg=epsg, bounds=bounds, width=width,
                    height=height, time_interval=f"{start}/{end}", url=str(download.url),
                    payload=payload, key=key,
                )
            )
    return plans


def _even_parts(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _config(params: SentinelHubParams, client_id: str = "", client_secret: str = "") -> Any:
    """An SHConfig built from defaults only: it never reads nor writes the user's config file."""
    from sentinelhub import SHConfig

    return SHConfig(
        use_defaults=True,
        sh_client_id=client_id,
        sh_client_secret=client_secret,
        sh_base_url=params.base_url,
        sh_token_url=params.token_url,
        max_download_attempts=1,  # retries are ours (bounded, Retry-After aware), see _Fetcher
        download_sleep_time=RETRY_BASE_SECONDS,
        download_timeout_seconds=DOWNLOAD_TIMEOUT_SECONDS,
    )


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
                reflectance_scale="10000",
            )
        return memfile.read()


# ---------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True)
class _Credentials:
    client_id: str
    client_secret: str
    origin: str  # where they came from, for error messages (never the values)

    def __repr__(self) -> str:  # never show the values
        return f"_Credentials(origin={self.origin!r})"


def _credentials(params: SentinelHubParams) -> _Credentials:
    """From env SH_CLIENT_ID/SH_CLIENT_SECRET, else a sentinelhub config profile (read only)."""
    from sentinelhub import SHConfig
    from sentinelhub.config import DEFAULT_PROFILE, SH_PROFILE_ENV_VAR

    env_id, env_secret = os.environ.get(ENV_ID, ""), os.environ.get(ENV_SECRET, "")
    if env_id and env_secret:
        return _Credentials(env_id, env_secret, f"env {ENV_ID}/{ENV_SECRET}")
    if env_id or env_secret:
        present, absent = (ENV_ID, ENV_SECRET) if env_id else (ENV_SECRET, ENV_ID)
        raise UserError(f"{present} is set but {absent} is not: set both (or neither, to use a profile)")

    profile = params.profile or os.environ.get(SH_PROFILE_ENV_VAR) or DEFAULT_PROFILE
    location = Path(SHConfig.get_config_location())
    profiles: dict[str, Any] = {}
    if location.is_file():
        import tomli  # a sentinelhub dependency

        try:
            profiles = tomli.loads(location.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            raise UserError(
                f"cannot read the sentinelhub config file {location}: fix it, or set {ENV_ID} and "
                f"{ENV_SECRET}"
            ) from None
    entry = profiles.get(profile)
    if isinstance(entry, dict) and entry.get("sh_client_id") and entry.get("sh_client_secret"):
        return _Credentials(
            str(entry["sh_client_id"]), str(entry["sh_client_secret"]),
            f"sentinelhub config profile {profile!r} in {location}",
        )
    if params.profile is not None:
        raise UserError(
            f"sentinelhub config profile {profile!r} (etl.sentinelhub.profile) has no sh_client_id and "
            f"sh_client_secret in {location}: add them with `sentinelhub.config --profile {profile} "
            f"--sh_client_id ... --sh_client_secret ...`, or set {ENV_ID} and {ENV_SECRET}"
        )
    raise UserError(
        f"no Sentinel Hub credentials: set {ENV_ID} and {ENV_SECRET} to an OAuth client of your "
        "account (Copernicus Data Space: Sentinel Hub dashboard > User settings > OAuth clients), "
        "or name a sentinelhub config profile holding them in etl.sentinelhub.profile"
    )


def _credentials_error(answer: int | str, path: str, creds: _Credentials) -> UserError:
    """`answer` is an HTTP status or an OAuth error code such as 'unauthorized_client'."""
    what = f"HTTP {answer}" if isinstance(answer, int) else answer
    extra = " (or the account lacks access or quota for this request)" if answer == 403 else ""
    return UserError(
        f"Sentinel Hub refused the credentials ({what} from {path}){extra}: set {ENV_ID} "
        f"and {ENV_SECRET} to a valid OAuth client for this deployment, or a sentinelhub config "
        f"profile in etl.sentinelhub.profile; the ones used came from {creds.origin}"
    )


# ---------------------------------------------------------------------------------------------
# Download with bounded retries


class _Fetcher:
    """Token and Process API calls, with bounded retries that honour Retry-After.

    sentinelhub's own download client retries 429 answers in an inner loop (config.max_retries)
    and 5xx answers in an outer loop (max_download_attempts), so the two multiply; a 429's
    Retry-After is not capped and a 5xx's is ignored. Here the library builds the request and
    handles OAuth (SentinelHubSession, with its retries switched off), and one loop retries
    429, 5xx and connection errors at most `max_retries` times for each call.
    """

    def __init__(self, params: SentinelHubParams):
        self.params = params
        self.creds = _credentials(params)
        self.config = _config(params, self.creds.client_id, self.creds.client_secret)
        self.session: Any = None
        self.token_path = urlsplit(params.token_url).path or "/"

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.creds.client_secret,)

    def download(self, plan: SubRequest) -> bytes:
        from sentinelhub.constants import SHConstants

        path = urlsplit(plan.url).path
        headers_base = {**SHConstants.HEADERS, "content-type": "application/json", "accept": "image/tiff"}

        def attempt() -> bytes:
            headers = {**headers_base, **self._auth_headers()}
            try:
                response = requests.post(
                    plan.url, json=plan.payload, headers=headers, timeout=DOWNLOAD_TIMEOUT_SECONDS
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Retry(f"connection failed ({type(exc).__name__})", None) from None
            status = response.status_code
            if status == 200:
                return response.content
            failure = self._status_failure(response, path)
            if failure is not None:
                raise failure
            raise UserError(
                f"Sentinel Hub rejected scene {plan.scene_id} (HTTP {status} from {path}): "
                f"{_server_message(response)}; check etl.sentinelhub (AOI {plan.aoi!r}, resolution)"
            )

        return self._with_retries(attempt, plan.url, "base_url")

    def _auth_headers(self) -> dict[str, str]:
        """Bearer header; creates or refreshes the session (OAuth client credentials) as needed."""
        from sentinelhub import SentinelHubSession

        def attempt() -> dict[str, str]:
            try:
                if self.session is None:
                    self.session = SentinelHubSession(config=self.config)
                return self.session.session_headers
            except Exception as exc:  # noqa: BLE001
                raise self._token_failure(exc) from None

        return self._with_retries(attempt, self.params.token_url, "token_url")

    def _status_failure(self, response: requests.Response, path: str) -> Exception | None:
        """The error for a status both endpoints treat alike: 401/403 name the credentials,
        429/5xx are retried; None for any other status (each caller words its own)."""
        status = response.status_code
        if status in (401, 403):
            return _credentials_error(status, path, self.creds)
        if status == 429 or status >= 500:
            return _Retry(f"HTTP {status}", _retry_after(response))
        return None

    def _token_failure(self, exc: Exception) -> Exception:
        from oauthlib.oauth2 import OAuth2Error
        from oauthlib.oauth2.rfc6749.errors import InsecureTransportError
        from sentinelhub.exceptions import DownloadFailedException

        path = self.token_path
        if isinstance(exc, (_Retry, UserError)):
            return exc
        if isinstance(exc, InsecureTransportError):
            return UserError(f"etl.sentinelhub.token_url must be an https:// URL, got {self.params.token_url}")
        if isinstance(exc, OAuth2Error):  # the endpoint answered with an OAuth error code
            return _credentials_error(f"OAuth error {exc.error}", path, self.creds)
        response = getattr(exc, "response", None)
        if isinstance(exc, DownloadFailedException) and exc.request_exception is not None:
            response = getattr(exc.request_exception, "response", None)
            if response is None:
                return _Retry(f"connection failed ({type(exc.request_exception).__name__})", None)
        if isinstance(exc, requests.RequestException) and response is None:
            return _Retry(f"connection failed ({type(exc).__name__})", None)
        if response is not None:
            status = response.status_code
            failure = self._status_failure(response, path)
            if failure is not None:
                return failure
            return UserError(
                f"the Sentinel Hub token endpoint answered HTTP {status} at {path}: check "
                f"etl.sentinelhub.token_url ({self.params.token_url})"
            )
        return UserError(
            f"could not get a Sentinel Hub token from {path} ({type(exc).__name__}): check "
            f"etl.sentinelhub.token_url ({self.params.token_url})"
        )

    def _with_retries(self, attempt: Any, url: str, key: str) -> Any:
        """Run `attempt`, retrying on _Retry at most max_retries times; `key` names the URL param."""
        max_retries = self.params.max_retries
        for number in range(max_retries + 1):
            try:
                return attempt()
            except _Retry as retry:
                if number == max_retries:
                    raise UserError(
                        f"Sentinel Hub {url} failed {max_retries + 1} times in a row (last: "
                        f"{retry.problem}): the service is busy or down, or etl.sentinelhub.{key} "
                        f"is wrong; try again later or raise etl.sentinelhub.max_retries "
                        f"(now {max_retries})"
                    ) from None
                wait = retry.wait if retry.wait is not None else RETRY_BASE_SECONDS * 2**number
                wait = min(wait, MAX_WAIT_SECONDS)
                LOGGER.info(
                    "sentinelhub: %s from %s; retry %d of %d in %.2f s",
                    retry.problem, url, number + 1, max_retries, wait,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")


class _Retry(Exception):
    """A temporary failure: 429, 5xx or a connection error."""

    def __init__(self, problem: str, wait: float | None):
        super().__init__(problem)
        self.problem = problem
        self.wait = wait


def _retry_after(response: requests.Response) -> float | None:
    """Seconds to wait from Sentinel Hub's Retry-After header, which is in milliseconds."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        millis = float(value)
    except ValueError:
        return None
    return max(millis, 0.0) / 1000.0 if math.isfinite(millis) else None


def _server_message(response: requests.Response) -> str:
    from sentinelhub.decoding import decode_sentinelhub_err_msg

    try:
        message = decode_sentinelhub_err_msg(response)
    except Exception:  # noqa: BLE001
        message = response.reason or ""
    message = " ".join(str(message).split())
    return (message[:300] + "...") if len(message) > 300 else (message or "no details")


# ---------------------------------------------------------------------------------------------
# Keeping secrets out of logs

# requests_oauthlib logs the token request body (client_secret) and the token at DEBUG level.
_SECRET_PATTERNS = [
    re.compile(r"(client_secret|access_token|refresh_token|id_token)(['\"]?\s*[:=]\s*['\"]?)[^'\"&,\s}]+"),
    re.compile(r"(Bearer)(\s+)[^'\"\s,}]+"),
]
_LOGGER_PREFIXES = ("requests_oauthlib", "oauthlib", "sentinelhub", "urllib3", "requests", __name__)


class _RedactSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "***")
        for pattern in _SECRET_PATTERNS:
            redacted = pattern.sub(r"\1\2***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


@contextlib.contextmanager
def _redacted_logs(secrets: tuple[str, ...]) -> Iterator[None]:
    """Redact secrets from records of the HTTP/OAuth loggers while downloads run.

    A logger's filters only see records logged on that very logger, so the filter goes on each
    existing logger under the prefixes (all of them are imported by now).
    """
    filt = _RedactSecrets(secrets)
    names = set(_LOGGER_PREFIXES) | {
        name for name in logging.root.manager.loggerDict
        if name.startswith(tuple(prefix + "." for prefix in _LOGGER_PREFIXES))
    }
    loggers = [logging.getLogger(name) for name in sorted(names)]
    for logger in loggers:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(filt)
