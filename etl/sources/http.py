"""HTTP with bounded retries, shared by the online sources (Sentinel Hub, STAC).

One policy for every call an etl source sends: 429, 5xx and connection errors are retried at
most `max_retries` times, waiting the server's Retry-After when it gives one (capped) and an
exponential backoff otherwise, with one line on stderr per retry. A 429 is a rate limit of the
whole account or client, not of one request, so it holds every thread (RateGate). Everything
stops waiting and sending once the run is being stopped (an error elsewhere, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import email.utils
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tqdm.auto import tqdm

from canopy.errors import UserError

RETRY_BASE_SECONDS = 1.0  # first wait after a 5xx/connection error without Retry-After; doubles
MAX_WAIT_SECONDS = 600.0  # cap on any single wait, Retry-After included

Answer = TypeVar("Answer")


def notify(source: str, message: str) -> None:
    """One line on stderr at normal verbosity (-q only hides progress bars), above any bar."""
    tqdm.write(f"etl: {source}: {message}", file=sys.stderr)


class Stopped(Exception):
    """The run is being stopped (an error elsewhere, Ctrl-C, SIGTERM): send nothing more."""


class Retry(Exception):
    """A temporary failure: 429, 5xx or a connection error. `final` is the error to raise
    instead of the generic one when the retries run out."""

    def __init__(self, problem: str, wait: float | None, *, rate_limited: bool = False,
                 final: UserError | None = None):
        super().__init__(problem)
        self.problem = problem
        self.wait = wait
        self.rate_limited = rate_limited
        self.final = final


class RateGate:
    """The earliest time any thread may send its next request, shared by all of them.

    A 429 means the account's rate limit is spent, not that one request failed: every thread
    waits until its Retry-After has passed, not just the one that got it (as sentinelhub-py's
    SentinelHubRateLimit does with its lock-guarded next_download_time).
    """

    def __init__(self, stop: threading.Event):
        self._lock = threading.Lock()
        self._not_before = time.monotonic()
        self._stop = stop

    def hold(self, seconds: float) -> None:
        """Let no request start for `seconds` from now (a later deadline already set stays)."""
        with self._lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)

    def wait(self) -> None:
        """Return once requests may be sent; raise Stopped if the run is being stopped."""
        while True:
            with self._lock:
                remaining = self._not_before - time.monotonic()
            if remaining <= 0:
                if self._stop.is_set():
                    raise Stopped
                return
            if self._stop.wait(remaining):
                raise Stopped


def status_retry(status: int, retry_after: float | None) -> Retry | None:
    """The Retry for a temporary HTTP status (429, 5xx), None for any other."""
    if status == 429:
        return Retry(f"HTTP {status}", retry_after, rate_limited=True)
    if status >= 500:
        return Retry(f"HTTP {status}", retry_after)
    return None


def retry_after_seconds(value: str | None, *, unit_seconds: float = 1.0) -> float | None:
    """Seconds to wait from a Retry-After header: a number of `unit_seconds` (Sentinel Hub
    counts milliseconds, RFC 9110 seconds) or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return max(number, 0.0) * unit_seconds if math.isfinite(number) else None


class Retrier:
    """Runs one call with the retry policy of the module docstring.

    `service` and `section` word the messages ("Sentinel Hub", "etl.sentinelhub"); `stop` and
    `gate` are shared by all the threads of one run.
    """

    def __init__(self, *, service: str, source: str, section: str, max_retries: int,
                 stop: threading.Event, gate: RateGate | None = None,
                 base_seconds: float = RETRY_BASE_SECONDS, max_wait: float = MAX_WAIT_SECONDS):
        self.service, self.source, self.section = service, source, section
        self.max_retries = max_retries
        self.stop = stop
        self.gate = gate if gate is not None else RateGate(stop)
        self.base_seconds, self.max_wait = base_seconds, max_wait

    def run(self, attempt: Callable[[], Answer], url: str, key: str, label: str) -> Answer:
        """Run `attempt`, retrying on Retry at most max_retries times; `key` names the URL param,
        `label` the request in the line each retry prints."""
        max_retries = self.max_retries
        for number in range(max_retries + 1):
            try:
                return attempt()
            except Retry as retry:
                if number == max_retries:
                    if retry.final is not None:
                        raise retry.final from None
                    raise UserError(
                        f"{self.service} {url} failed {max_retries + 1} times in a row (last: "
                        f"{retry.problem}): the service is busy or down, or {self.section}.{key} "
                        f"is wrong; try again later or raise {self.section}.max_retries "
                        f"(now {max_retries})"
                    ) from None
                wait = retry.wait if retry.wait is not None else self.base_seconds * 2**number
                wait = min(wait, self.max_wait)
                if self.stop.is_set():
                    raise Stopped from None
                notify(self.source, f"{retry.problem} for {label}; retrying in {wait:.3g} s "
                                    f"(attempt {number + 2} of {max_retries + 1})")
                if retry.rate_limited:
                    self.gate.hold(wait)  # every thread waits, at its next gate.wait()
                elif self.stop.wait(wait):
                    raise Stopped from None
        raise AssertionError("unreachable")
