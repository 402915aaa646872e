"""What the online sources (Sentinel Hub, STAC) share around their downloads: the request
guard, the progress bar, and the check that a cached answer is whole.

Each source plans its requests, counts those not cached yet, and asks `request_guard` before
sending any: more than `max_requests` is refused in one line (cached ones do not count, so an
interrupted large run resumes under the limit it started with), otherwise one line says what
the run will fetch. Answers are cached as files written beside their final name and renamed
when complete; `cached_raster_ok` tells a whole one from anything else (read again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import rasterio
from rasterio.windows import Window
from tqdm.auto import tqdm

from canopy.errors import UserError
from canopy.etl.sources.http import notify

POLL_SECONDS = 0.25  # how often the main thread wakes while downloads run (signals)


def request_guard(*, source: str, section: str, summary: str, count: int, limit: int,
                  check: str, cached_noun: str) -> None:
    """Refuse `count` > `limit` requests in one line; else say `summary` on stderr.

    `check` names what to look at ("the AOI bboxes and etl.sentinelhub.resolution"),
    `cached_noun` what the cache holds ("requests", "scenes")."""
    if count > limit:
        raise UserError(
            f"{summary}: more than {section}.max_requests ({limit}); check {check}, or raise "
            f"{section}.max_requests if you mean it (cached {cached_noun} do not count)"
        )
    notify(source, summary)


def progress_bar(source: str, *, total: int, unit: str, progress: bool, cached: int = 0) -> Any:
    """The download bar: cached work counted as done from the start."""
    return tqdm(total=total, initial=cached, desc=source, unit=unit,
                postfix=f"{cached} cached" if cached else None,
                disable=None if progress else True)


def result_of(future: Future) -> Any:
    """`future.result()`, waking every POLL_SECONDS so that the main thread handles a signal
    (delivered to whichever thread the kernel picks) promptly."""
    while True:
        try:
            return future.result(timeout=POLL_SECONDS)
        except FutureTimeout:
            continue


def cached_raster_ok(path: Path, accept: Callable[[Any], bool], *, logger: logging.Logger,
                     source: str, redo: str) -> bool:
    """True if `path` is a readable raster that `accept`s, down to its last row (a file cut
    short fails there); anything else is logged and fetched again (`redo` says how)."""
    if not path.is_file():
        return False
    try:
        with rasterio.Env(), rasterio.open(path) as src:
            ok = bool(accept(src))
            if ok:
                src.read(src.count, window=Window(0, src.height - 1, src.width, 1))
    except Exception:  # noqa: BLE001  (unreadable = not cached)
        ok = False
    if not ok:
        logger.warning("%s: cached file %s is incomplete or invalid; %s", source, path, redo)
    return ok
