"""Sentinel Hub over HTTP: the OAuth session and the Process API, with the shared retry policy.

Request planning and the cache are in sentinelhub.py; this module sends what it planned, on
the pieces every online source shares: http.py (bounded retries honouring Retry-After, one
rate gate for all threads), redaction.py (secret-free logs) and, for this source alone,
sentinelhub_credentials.py. `sentinelhub` is imported inside the functions (about 0.4 s) so
that runs with another etl source do not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from canopy.errors import UserError
from canopy.etl.params import SentinelHubParams
from canopy.etl.sources import http
from canopy.etl.sources.http import RateGate, Retry, Stopped, retry_after_seconds, status_retry
from canopy.etl.sources.redaction import HTTP_LOGGERS, RedactSecrets, redacted_logs
from canopy.etl.sources.sentinelhub_credentials import (  # noqa: F401  (this module's API)
    ENV_ID,
    ENV_SECRET,
    Credentials,
    credentials_error,
    read_credentials,
)

# The source's one logger, whichever of its modules logs: users filter on this name.
LOGGER = logging.getLogger("canopy.etl.sources.sentinelhub")

RETRY_BASE_SECONDS = http.RETRY_BASE_SECONDS  # read when a Fetcher is made (tests shorten it)
MAX_WAIT_SECONDS = http.MAX_WAIT_SECONDS
DOWNLOAD_TIMEOUT_SECONDS = 300.0
LOGGER_PREFIXES = (*HTTP_LOGGERS, "sentinelhub", LOGGER.name)

Answer = TypeVar("Answer")
_Retry = Retry  # the name the Fetcher's methods use
__all__ = ["Fetcher", "RateGate", "Stopped", "notify", "read_credentials", "sh_config"]


def notify(message: str) -> None:
    """One line on stderr at normal verbosity (-q only hides progress bars), above any bar."""
    http.notify("sentinelhub", message)


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
        self.retrier = http.Retrier(
            service="Sentinel Hub", source="sentinelhub", section="etl.sentinelhub",
            max_retries=params.max_retries, stop=self.stop, gate=self.gate,
            base_seconds=RETRY_BASE_SECONDS, max_wait=MAX_WAIT_SECONDS,
        )
        self._session_lock = threading.Lock()
        self._redaction = contextlib.ExitStack()
        self._redactor: RedactSecrets | None = None

    def __enter__(self) -> Fetcher:
        secrets = (self.creds.client_secret,)
        self._redactor = self._redaction.enter_context(
            redacted_logs(secrets, client_id=self.creds.client_id, logger_prefixes=LOGGER_PREFIXES)
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
        # Sentinel Hub's Retry-After is in milliseconds
        return status_retry(status, retry_after_seconds(response.headers.get("Retry-After"),
                                                        unit_seconds=0.001))

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
        """Run `attempt` under the shared retry policy (http.Retrier); `key` names the URL
        param, `label` the request in the line each retry prints."""
        return self.retrier.run(attempt, url, key, label)


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


def _server_message(response: requests.Response) -> str:
    from sentinelhub.decoding import decode_sentinelhub_err_msg

    try:
        message = decode_sentinelhub_err_msg(response)
    except Exception:  # noqa: BLE001
        message = response.reason or ""
    message = " ".join(str(message).split())
    return (message[:300] + "...") if len(message) > 300 else (message or "no details")
