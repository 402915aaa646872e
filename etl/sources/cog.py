"""Windowed reads of remote cloud-optimised GeoTIFFs (COGs) over HTTP, with GDAL's /vsicurl/.

Shared by the STAC source and the WorldCover mask. GDAL reads a COG with HTTP Range requests:
the header once, then only the internal blocks a window needs, so no whole scene is ever
downloaded. The settings below (README "STAC source") make those reads fast and robust:

- GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR: no listing of the "folder" on open (an S3 or HTTP
  folder listing is slow, and useless for a single COG).
- CPL_VSIL_CURL_ALLOWED_EXTENSIONS: only .tif/.tiff URLs go through /vsicurl/ (no probing of
  sidecar files such as .aux.xml or .msk, each an extra request that answers 404).
- GDAL_HTTP_MULTIPLEX + GDAL_HTTP_VERSION=2TLS: several ranges in flight on one HTTP/2
  connection where the server speaks it over TLS (plain HTTP stays on 1.1).
- GDAL_HTTP_MERGE_CONSECUTIVE_RANGES: adjacent blocks of one read in one request.
- GDAL_HTTP_MAX_RETRY / GDAL_HTTP_RETRY_DELAY: GDAL itself retries 429 and 5xx answers (with
  a growing delay); broken transfers that reach us are retried by http.Retrier.
- GDAL_HTTP_TIMEOUT / GDAL_HTTP_CONNECTTIMEOUT: a stalled server fails instead of hanging.
- CPL_VSIL_CURL_CACHE_SIZE and GDAL_CACHEMAX: bounded caches (of downloaded ranges, and of
  decoded blocks), so memory does not grow with the area read.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlsplit

import rasterio
from rasterio.errors import RasterioIOError

from canopy.errors import UserError
from canopy.etl.scene import GDAL_ENV
from canopy.etl.sources.http import (
    RETRY_BASE_SECONDS,
    Retrier,
    Retry,
    retry_after_seconds,
    status_retry,
)

HTTP_TIMEOUT_SECONDS = 60
CURL_CACHE_BYTES = 64 * 1024 * 1024


def remote_env(max_retries: int, retry_delay: float = RETRY_BASE_SECONDS) -> dict[str, Any]:
    """GDAL config options for remote COG reads (the module docstring says why each)."""
    return {
        **GDAL_ENV,
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_HTTP_VERSION": "2TLS",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MAX_RETRY": str(max_retries),
        "GDAL_HTTP_RETRY_DELAY": f"{retry_delay:g}",
        "GDAL_HTTP_TIMEOUT": str(HTTP_TIMEOUT_SECONDS),
        "GDAL_HTTP_CONNECTTIMEOUT": "20",
        "CPL_VSIL_CURL_CACHE_SIZE": str(CURL_CACHE_BYTES),
        "VSI_CACHE": "FALSE",  # CPL_VSIL_CURL_CACHE_SIZE already caches the ranges
    }


_HTTP_CODE = re.compile(r"HTTP (?:response )?code:?\s*(\d{3})", re.IGNORECASE)
_QUERY = re.compile(r"\?[^\s'\"]*")
_TRANSIENT = ("transfer closed", "timed out", "timeout", "connection reset", "couldn't connect",
              "could not connect", "connection refused", "recv failure", "partial file",
              "empty reply", "curl error")


class MissingRaster(UserError):
    """The server has no such file (HTTP 404), or a local path does not exist."""


class RemoteReader:
    """Open remote rasters and read from them under one retry policy, from any thread.

    `sign` turns a catalog href into the URL to open (Planetary Computer adds a token). Each
    thread opens its own datasets (a GDAL dataset is not thread-safe); GDAL's range cache is
    shared by all of them.
    """

    def __init__(self, retrier: Retrier, env: dict[str, Any], what: str, key: str,
                 sign: Any = None):
        self.retrier, self.env, self.what, self.key = retrier, env, what, key
        self.sign = sign or (lambda href: href)
        self._ranged: set[str] = set()  # URLs seen to answer a Range request with 206
        self._lock = threading.Lock()

    def run(self, href: str, label: str, action: Any) -> Any:
        """`action(dataset)` on the raster at `href`, retried on temporary failures."""
        broken = []  # set once a transfer of this call broke

        def attempt():
            self.retrier.gate.wait()
            url = self.sign(href)
            self._check_range(url, href, label)
            env = self.env
            if broken:
                # GDAL may have kept the cut-short bytes in its range cache: read this file
                # afresh, past the cache.
                env = {**env, "CPL_VSIL_CURL_NON_CACHED": f"/vsicurl/{url}"}
            try:
                with rasterio.Env(**env), rasterio.open(url) as dataset:
                    return action(dataset)
            except RasterioIOError as err:
                failure = read_failure(err, href, label, self.what)
                if isinstance(failure, Retry):
                    broken.append(True)
                raise failure from None
        return self.retrier.run(attempt, _host(href), self.key, label)

    def _check_range(self, url: str, href: str, label: str) -> None:
        """Once per file, before GDAL opens it: is it there, and does its server answer a
        Range request with 206? GDAL accepts a whole-file 200 answer for a small file (for a
        real scene, a full download), and takes a 5xx on its first request for a missing
        file, which it then remembers; here a 5xx is retried like any other."""
        host = _host(href)
        if "://" not in href or href in self._ranged:
            return
        import requests

        try:
            response = requests.get(url, headers={"Range": "bytes=0-15"}, stream=True,
                                    timeout=HTTP_TIMEOUT_SECONDS)
            response.close()  # a 200 answer's body is never read
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Retry(f"connection failed ({type(exc).__name__})", None) from None
        status = response.status_code
        if status == 206:
            with self._lock:
                self._ranged.add(href)
            return
        where = f"{self.what} {label} ({host}{urlsplit(href).path})"
        if status == 200:
            raise UserError(_no_range(where))
        retry = status_retry(status, retry_after_seconds(response.headers.get("Retry-After")))
        if retry is not None:
            raise retry
        raise read_failure(RuntimeError(f"HTTP response code: {status}"), href, label, self.what)


def read_failure(err: Exception, href: str, label: str, what: str) -> Exception:
    """A Retry for a temporary failure, else a one-line UserError naming the file and why."""
    detail = _QUERY.sub("", _chain_message(err))  # signed URLs carry their token in the query
    lowered = detail.lower()
    where = f"{what} {label} ({_host(href)}{urlsplit(href).path})"
    if "range downloading not supported" in lowered:
        return UserError(_no_range(where))
    match = _HTTP_CODE.search(detail)
    if match:
        status = int(match.group(1))
        if status == 429 or status >= 500:
            return Retry(f"HTTP {status}", None, rate_limited=status == 429)
        if status == 404:
            return MissingRaster(f"{where}: no such file (HTTP 404)")
        if status in (401, 403):
            return UserError(f"{where}: access refused (HTTP {status}); the asset may need signing "
                             "or the link has expired: run again to search afresh")
        return UserError(f"{where}: HTTP {status} ({detail[:200]})")
    # A block that cannot be read from a remote file whose header was read: the transfer broke
    # (GDAL logs curl's reason as a warning and raises this); a corrupt file fails every retry.
    remote_block = "://" in href and ("ireadblock failed" in lowered or "read error" in lowered)
    if remote_block or any(word in lowered for word in _TRANSIENT):
        return Retry(f"broken transfer ({detail[:120]})", None)
    return UserError(f"{where}: cannot read it ({detail[:200]}); is it a GeoTIFF?")


def _no_range(where: str) -> str:
    return (f"{where}: the server does not honour HTTP Range requests, which reading only the "
            "needed parts of a cloud-optimised GeoTIFF requires; use a server or mirror that does")


def _chain_message(err: BaseException) -> str:
    """The messages of `err` and of the errors it came from ("Read failed. See previous
    exception" says nothing by itself), most specific first, on one line."""
    messages, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and "see previous exception" not in text.lower():
            messages.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(reversed(messages)) or type(err).__name__


def _host(href: str) -> str:
    parts = urlsplit(href)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else href
