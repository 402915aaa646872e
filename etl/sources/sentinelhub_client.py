"""Sentinel Hub over HTTP: credentials, the OAuth session, bounded retries, secret-free logs.

Credentials come only from env SH_CLIENT_ID/SH_CLIENT_SECRET or a sentinelhub config profile
(read, never written); they never appear in params, logs or error messages.

Request planning and the cache are in sentinelhub.py; this module sends what it planned.
`sentinelhub` is imported inside the functions (about 0.4 s) so that runs with another etl
source do not pay for it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

import requests
from tqdm.auto import tqdm

from canopy.errors import UserError
from canopy.etl.params import SentinelHubParams

# The source's one logger, whichever of its two modules logs: users filter on this name.
LOGGER = logging.getLogger("canopy.etl.sources.sentinelhub")

RETRY_BASE_SECONDS = 1.0  # first wait after a 5xx/connection error without Retry-After; doubles
MAX_WAIT_SECONDS = 600.0  # cap on any single wait, Retry-After included
DOWNLOAD_TIMEOUT_SECONDS = 300.0
ENV_ID = "SH_CLIENT_ID"
ENV_SECRET = "SH_CLIENT_SECRET"

Answer = TypeVar("Answer")


def notify(message: str) -> None:
    """One line on stderr at normal verbosity (-q only hides progress bars), above any bar."""
    tqdm.write(f"etl: sentinelhub: {message}", file=sys.stderr)


def sh_config(params: SentinelHubParams, client_id: str = "", client_secret: str = "") -> Any:
    """An SHConfig built from defaults only: it never reads nor writes the user's config file."""
    from sentinelhub import SHConfig

    return SHConfig(
        use_defaults=True,
        sh_client_id=client_id,
        sh_client_secret=client_secret,
        sh_base_url=params.base_url,
        sh_token_url=params.token_url,
        max_download_attempts=1,  # retries are ours (bounded, Retry-After aware), see Fetcher
        download_sleep_time=RETRY_BASE_SECONDS,
        download_timeout_seconds=DOWNLOAD_TIMEOUT_SECONDS,
    )


# ---------------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    origin: str  # where they came from, for error messages (never the values)

    def __repr__(self) -> str:  # never show the values
        return f"Credentials(origin={self.origin!r})"


def read_credentials(params: SentinelHubParams) -> Credentials:
    """From env SH_CLIENT_ID/SH_CLIENT_SECRET, else a sentinelhub config profile (read only)."""
    env_id, env_secret = os.environ.get(ENV_ID, ""), os.environ.get(ENV_SECRET, "")
    if env_id and env_secret:
        return Credentials(env_id, env_secret, f"env {ENV_ID}/{ENV_SECRET}")
    if env_id or env_secret:
        present, absent = (ENV_ID, ENV_SECRET) if env_id else (ENV_SECRET, ENV_ID)
        raise UserError(f"{present} is set but {absent} is not: set both (or neither, to use a profile)")
    return _profile_credentials(params)


def _profile_credentials(params: SentinelHubParams) -> Credentials:
    from sentinelhub import SHConfig
    from sentinelhub.config import DEFAULT_PROFILE, SH_PROFILE_ENV_VAR

    profile = params.profile or os.environ.get(SH_PROFILE_ENV_VAR) or DEFAULT_PROFILE
    location = Path(SHConfig.get_config_location())
    entry = _read_profiles(location).get(profile)
    if isinstance(entry, dict) and entry.get("sh_client_id") and entry.get("sh_client_secret"):
        return Credentials(
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


def _read_profiles(location: Path) -> dict[str, Any]:
    """The sentinelhub config file's profiles, read directly: SHConfig would rewrite the file."""
    if not location.is_file():
        return {}
    import tomli  # a sentinelhub dependency

    try:
        return tomli.loads(location.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(
            f"cannot read the sentinelhub config file {location}: fix it, or set {ENV_ID} and "
            f"{ENV_SECRET}"
        ) from None


def credentials_error(answer: int | str, path: str, creds: Credentials) -> UserError:
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


class Stopped(Exception):
    """The run is being stopped (an error elsewhere, Ctrl-C, SIGTERM): send nothing more."""


class Fetcher:
    """Token and Process API calls, with bounded retries that honour Retry-After.

    sentinelhub's own download client retries 429 answers in an inner loop (config.max_retries)
    and 5xx answers in an outer loop (max_download_attempts), so the two multiply; a 429's
    Retry-After is not capped and a 5xx's is ignored. Here the library builds the request and
    handles OAuth (SentinelHubSession, with its retries switched off), and one loop retries
    429, 5xx and connection errors at most `max_retries` times for each call, saying so on
    stderr each time.

    Several threads may call download() at once: they share one OAuth session (behind a lock)
    and one RateGate, and all stop waiting and sending once `stop` is set.

    Reading the credentials is the first thing it does, so a missing one fails before any
    call; while it is open (a context manager), the HTTP/OAuth logs are redacted.
    """

    def __init__(self, params: SentinelHubParams, stop: threading.Event | None = None):
        self.params = params
        self.creds = read_credentials(params)
        self.config = sh_config(params, self.creds.client_id, self.creds.client_secret)
        self.session: Any = None
        self.token_path = urlsplit(params.token_url).path or "/"
        self.stop = stop if stop is not None else threading.Event()
        self.gate = RateGate(self.stop)
        self._session_lock = threading.Lock()
        self._redaction = contextlib.ExitStack()
        self._redactor: _RedactSecrets | None = None

    def __enter__(self) -> Fetcher:
        secrets = (self.creds.client_secret,)
        self._redactor = self._redaction.enter_context(
            redacted_logs(secrets, client_id=self.creds.client_id)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._redaction.close()

    def download(self, url: str, payload: dict[str, Any], *, scene_id: str, aoi: str,
                 label: str | None = None) -> bytes:
        """The Process API's answer to `payload`; `scene_id`, `aoi` and `label` (the request
        in retry messages, e.g. "berlin-000 2023-06-01/2023-06-30") only word messages."""
        from sentinelhub.constants import SHConstants

        path = urlsplit(url).path
        headers_base = {**SHConstants.HEADERS, "content-type": "application/json", "accept": "image/tiff"}

        def attempt() -> bytes:
            headers = {**headers_base, **self._auth_headers()}
            self.gate.wait()
            try:
                response = requests.post(url, json=payload, headers=headers, timeout=DOWNLOAD_TIMEOUT_SECONDS)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Retry(f"connection failed ({type(exc).__name__})", None) from None
            status = response.status_code
            if status == 200:
                return response.content
            failure = self._status_failure(response, path)
            if failure is not None:
                raise failure
            raise UserError(
                f"Sentinel Hub rejected scene {scene_id} (HTTP {status} from {path}): "
                f"{_server_message(response)}; check etl.sentinelhub (AOI {aoi!r}, resolution)"
            )

        return self._with_retries(attempt, url, "base_url", label or scene_id)

    def _auth_headers(self) -> dict[str, str]:
        """Bearer header; creates or refreshes the session (OAuth client credentials) as needed.

        One thread at a time: the first creates the session, the others then reuse it, and a
        refresh near expiry happens once."""
        def attempt() -> dict[str, str]:
            self.gate.wait()
            try:
                if self.session is None:
                    self.session = _session_class()(config=self.config)
                headers = self.session.session_headers
            except Exception as exc:  # noqa: BLE001
                raise self._token_failure(exc) from None
            if self._redactor is not None:
                self._redactor.add(self.session.token.get("access_token", ""))
            return headers

        with self._session_lock:
            return self._with_retries(attempt, self.params.token_url, "token_url", "the token request")

    def _status_failure(self, response: requests.Response, path: str) -> Exception | None:
        """The error for a status both endpoints treat alike: 401/403 name the credentials,
        429/5xx are retried; None for any other status (each caller words its own)."""
        status = response.status_code
        if status in (401, 403):
            return credentials_error(status, path, self.creds)
        if status == 429:
            return _Retry(f"HTTP {status}", _retry_after(response), rate_limited=True)
        if status >= 500:
            return _Retry(f"HTTP {status}", _retry_after(response))
        return None

    def _token_failure(self, exc: Exception) -> Exception:
        from oauthlib.oauth2 import OAuth2Error
        from oauthlib.oauth2.rfc6749.errors import InsecureTransportError
        from sentinelhub.exceptions import DownloadFailedException

        path = self.token_path
        if isinstance(exc, (_Retry, UserError)):
            return exc
        if isinstance(exc, _NotJsonAnswer):
            return self._not_json_failure(exc)
        if isinstance(exc, InsecureTransportError):
            return UserError(f"etl.sentinelhub.token_url must be an https:// URL, got {self.params.token_url}")
        if isinstance(exc, OAuth2Error):  # the endpoint answered with an OAuth error code
            return credentials_error(f"OAuth error {exc.error}", path, self.creds)
        response = getattr(exc, "response", None)
        if isinstance(exc, DownloadFailedException) and exc.request_exception is not None:
            response = getattr(exc.request_exception, "response", None)
            if response is None:
                return _Retry(f"connection failed ({type(exc.request_exception).__name__})", None)
        if isinstance(exc, requests.RequestException) and response is None:
            return _Retry(f"connection failed ({type(exc).__name__})", None)
        if response is not None:
            return self._token_status_failure(response)
        return UserError(
            f"could not get a Sentinel Hub token from {path} ({type(exc).__name__}): check "
            f"etl.sentinelhub.token_url ({self.params.token_url})"
        )

    def _not_json_failure(self, exc: _NotJsonAnswer) -> Exception:
        """HTML where a token was expected: a proxy's login or error page, or a URL that is not
        an OAuth token endpoint. Not the credentials' fault, so the message does not blame them;
        a 5xx page may be a passing gateway error, so it is retried first."""
        error = UserError(
            f"the token endpoint at {self.params.token_url} answered {exc.kind} (status "
            f"{exc.status}, {exc.content_type or 'no content type'}), not a JSON token: check "
            "etl.sentinelhub.token_url and any proxy between here and it (HTTPS_PROXY, a login "
            "page of the network)"
        )
        if exc.status >= 500:
            return _Retry(f"{exc.kind} answer (HTTP {exc.status})", None, final=error)
        return error

    def _token_status_failure(self, response: requests.Response) -> Exception:
        failure = self._status_failure(response, self.token_path)
        if failure is not None:
            return failure
        return UserError(
            f"the Sentinel Hub token endpoint answered HTTP {response.status_code} at "
            f"{self.token_path}: check etl.sentinelhub.token_url ({self.params.token_url})"
        )

    def _with_retries(self, attempt: Callable[[], Answer], url: str, key: str, label: str) -> Answer:
        """Run `attempt`, retrying on _Retry at most max_retries times; `key` names the URL param,
        `label` the request in the line each retry prints."""
        max_retries = self.params.max_retries
        for number in range(max_retries + 1):
            try:
                return attempt()
            except _Retry as retry:
                if number == max_retries:
                    if retry.final is not None:
                        raise retry.final from None
                    raise UserError(
                        f"Sentinel Hub {url} failed {max_retries + 1} times in a row (last: "
                        f"{retry.problem}): the service is busy or down, or etl.sentinelhub.{key} "
                        f"is wrong; try again later or raise etl.sentinelhub.max_retries "
                        f"(now {max_retries})"
                    ) from None
                wait = retry.wait if retry.wait is not None else RETRY_BASE_SECONDS * 2**number
                wait = min(wait, MAX_WAIT_SECONDS)
                if self.stop.is_set():
                    raise Stopped from None
                notify(
                    f"{retry.problem} for {label}; retrying in {wait:.3g} s "
                    f"(attempt {number + 2} of {max_retries + 1})"
                )
                if retry.rate_limited:
                    self.gate.hold(wait)  # every thread waits, at its next gate.wait()
                elif self.stop.wait(wait):
                    raise Stopped from None
        raise AssertionError("unreachable")


def _session_class() -> type:
    """SentinelHubSession that tells an HTML (or other non-JSON) token answer apart.

    The library's hook lets a 200 HTML page through to oauthlib, which then reports a missing
    token as if the credentials were refused; a page from a proxy is not about credentials.
    """
    from sentinelhub import SentinelHubSession

    class Session(SentinelHubSession):
        @staticmethod
        def _compliance_hook(response: requests.Response) -> requests.Response:
            content_type = response.headers.get("Content-Type", "")
            head = response.content[:200].lstrip().lower()
            if "html" in content_type.lower() or head.startswith((b"<!doctype html", b"<html")):
                raise _NotJsonAnswer("HTML", response.status_code, content_type)
            return SentinelHubSession._compliance_hook(response)

    return Session


class _NotJsonAnswer(Exception):
    def __init__(self, kind: str, status: int, content_type: str):
        super().__init__(f"{kind} answer, HTTP {status}")
        self.kind, self.status, self.content_type = kind, status, content_type


class _Retry(Exception):
    """A temporary failure: 429, 5xx or a connection error. `final` is the error to raise
    instead of the generic one when the retries run out."""

    def __init__(self, problem: str, wait: float | None, *, rate_limited: bool = False,
                 final: UserError | None = None):
        super().__init__(problem)
        self.problem = problem
        self.wait = wait
        self.rate_limited = rate_limited
        self.final = final


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
# Known secrets are redacted by value, in every form they can take in a log line (below); the
# patterns catch the rest (a token before it is known to the filter).
_SECRET_PATTERNS = [
    re.compile(r"(client_secret|access_token|refresh_token|id_token)(['\"]?\s*[:=]\s*['\"]?)[^'\"&,\s}]+"),
    re.compile(r"(Bearer|Basic)(\s+)[^'\"\s,}]+"),
]
_LOGGER_PREFIXES = ("requests_oauthlib", "oauthlib", "sentinelhub", "urllib3", "requests", LOGGER.name)


def secret_forms(secret: str) -> list[str]:
    """`secret` as it may appear in a log line, longest first: as is, escaped inside a
    repr() or JSON string (either quote), URL-encoded (a form body, a query) and as bytes."""
    if not secret:
        return []
    forms = {
        secret,
        repr(secret)[1:-1],
        secret.replace("\\", "\\\\").replace("'", "\\'"),
        secret.replace("\\", "\\\\").replace('"', '\\"'),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote_plus(secret),
        quote(secret, safe=""),
        quote(secret),
        repr(secret.encode())[2:-1],
    }
    return sorted(forms, key=len, reverse=True)


class _RedactSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...], client_id: str = ""):
        super().__init__()
        self._lock = threading.Lock()
        self._forms: list[str] = []
        for secret in secrets:
            self.add(secret)
            if client_id and secret:  # HTTP Basic auth carries base64("id:secret")
                for pair in (f"{client_id}:{secret}", f"{quote_plus(client_id)}:{quote_plus(secret)}"):
                    self.add(base64.b64encode(pair.encode()).decode())

    def add(self, secret: str) -> None:
        """Redact `secret` too from now on (the access token, once it is known)."""
        with self._lock:
            known = set(self._forms)
            self._forms = sorted(known | set(secret_forms(secret)), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        redacted = message
        for form in self._forms:
            redacted = redacted.replace(form, "***")
        for pattern in _SECRET_PATTERNS:
            redacted = pattern.sub(r"\1\2***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


@contextlib.contextmanager
def redacted_logs(secrets: tuple[str, ...], *, client_id: str = "") -> Iterator[_RedactSecrets]:
    """Redact secrets from records of the HTTP/OAuth loggers while downloads run.

    A logger's filters only see records logged on that very logger, so the filter goes on each
    existing logger under the prefixes (all of them are imported by now). It yields the filter,
    so that secrets learnt later (the access token) can be added.
    """
    filt = _RedactSecrets(secrets, client_id)
    names = set(_LOGGER_PREFIXES) | {
        name for name in logging.root.manager.loggerDict
        if name.startswith(tuple(prefix + "." for prefix in _LOGGER_PREFIXES))
    }
    loggers = [logging.getLogger(name) for name in sorted(names)]
    for logger in loggers:
        logger.addFilter(filt)
    try:
        yield filt
    finally:
        for logger in loggers:
            logger.removeFilter(filt)
