"""Sentinel Hub over HTTP: credentials, the OAuth session, bounded retries, secret-free logs.

Credentials come only from env SH_CLIENT_ID/SH_CLIENT_SECRET or a sentinelhub config profile
(read, never written); they never appear in params, logs or error messages.

Request planning and the cache are in sentinelhub.py; this module sends what it planned.
`sentinelhub` is imported inside the functions (about 0.4 s) so that runs with another etl
source do not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

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


class Fetcher:
    """Token and Process API calls, with bounded retries that honour Retry-After.

    sentinelhub's own download client retries 429 answers in an inner loop (config.max_retries)
    and 5xx answers in an outer loop (max_download_attempts), so the two multiply; a 429's
    Retry-After is not capped and a 5xx's is ignored. Here the library builds the request and
    handles OAuth (SentinelHubSession, with its retries switched off), and one loop retries
    429, 5xx and connection errors at most `max_retries` times for each call.

    Reading the credentials is the first thing it does, so a missing one fails before any
    call; while it is open (a context manager), the HTTP/OAuth logs are redacted.
    """

    def __init__(self, params: SentinelHubParams):
        self.params = params
        self.creds = read_credentials(params)
        self.config = sh_config(params, self.creds.client_id, self.creds.client_secret)
        self.session: Any = None
        self.token_path = urlsplit(params.token_url).path or "/"
        self._redaction = contextlib.ExitStack()

    def __enter__(self) -> Fetcher:
        self._redaction.enter_context(redacted_logs((self.creds.client_secret,)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._redaction.close()

    def download(self, url: str, payload: dict[str, Any], *, scene_id: str, aoi: str) -> bytes:
        """The Process API's answer to `payload`; `scene_id` and `aoi` only word the errors."""
        from sentinelhub.constants import SHConstants

        path = urlsplit(url).path
        headers_base = {**SHConstants.HEADERS, "content-type": "application/json", "accept": "image/tiff"}

        def attempt() -> bytes:
            headers = {**headers_base, **self._auth_headers()}
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

        return self._with_retries(attempt, url, "base_url")

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
            return credentials_error(status, path, self.creds)
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

    def _token_status_failure(self, response: requests.Response) -> Exception:
        failure = self._status_failure(response, self.token_path)
        if failure is not None:
            return failure
        return UserError(
            f"the Sentinel Hub token endpoint answered HTTP {response.status_code} at "
            f"{self.token_path}: check etl.sentinelhub.token_url ({self.params.token_url})"
        )

    def _with_retries(self, attempt: Callable[[], Answer], url: str, key: str) -> Answer:
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
_LOGGER_PREFIXES = ("requests_oauthlib", "oauthlib", "sentinelhub", "urllib3", "requests", LOGGER.name)


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
def redacted_logs(secrets: tuple[str, ...]) -> Iterator[None]:
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
