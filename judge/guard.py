"""The judging server's security policy: what a connection and a request may do before any
route sees it (judge/server.py holds the routes).

    connections   at most `max_connections` open at once (beyond that a connection is closed
                  as soon as it is accepted, and that is logged once, not per attempt), and
                  each must send a complete request within `request_timeout_s` (idle or
                  half-sent connections would otherwise hold the server's files open forever)
    host          on loopback only the loopback host names are served (a web page elsewhere
                  cannot reach the server by rebinding a DNS name to 127.0.0.1)
    invite        elsewhere every request carries the invite token (query once, then cookie)
    origin        every request other than GET and HEAD comes from this server's own origin
    judge cookie  signed with a key kept in the answers database: only ids this server
                  issued are accepted, so a made-up cookie opens no rounds
    bodies        JSON only, at most MAX_BODY_BYTES
    headers       SECURITY_HEADERS on every response
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import json
import logging
import re
import resource
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

JUDGE_COOKIE = "canopy_judge"
INVITE_COOKIE = "canopy_invite"
INVITE_QUERY = "invite"
MAX_BODY_BYTES = 1024  # an answer is under 100 bytes
COOKIE_MAX_AGE_S = 365 * 24 * 3600
ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # dealing.new_id's shape
_SIGNATURE = re.compile(r"^[A-Za-z0-9_-]{22}$")  # 16 bytes of HMAC-SHA256, URL-safe base64
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
# A browser sends a request in milliseconds; a judge idles between requests on a kept-alive
# connection, which uvicorn closes after its own keep-alive timeout.
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1000
_FILES_KEPT_FREE = 64  # file descriptors left for the database, the images and the logs

# Sent with every response. no-store: nothing dealt stays in a browser cache for the next
# person at the same machine. The policy allows this server's own scripts, styles, images
# and requests only; nothing may frame the page.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
}

log = logging.getLogger("canopy.judge")


class Refusal(Exception):
    """A request refused with a 4xx status and a one-line reason, before anything is stored."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def refusal_response(request: Request, refusal: Refusal) -> Response:
    return JSONResponse({"error": refusal.reason}, status_code=refusal.status)


# --- the judge cookie ----------------------------------------------------------------------


class JudgeCookies:
    """Judge ids in cookies, signed: `<id>.<signature>`. The key lives in the answers
    database, so cookies stay valid across restarts of the server."""

    def __init__(self, key: bytes):
        self._key = key

    def value(self, judge: str) -> str:
        return f"{judge}.{self._signature(judge)}"

    def judge(self, request: Request) -> str | None:
        """The judge id of the request's cookie if this server issued it, else None."""
        judge, _, signature = request.cookies.get(JUDGE_COOKIE, "").partition(".")
        if not (ID.match(judge) and _SIGNATURE.match(signature)):
            return None
        return judge if hmac.compare_digest(signature, self._signature(judge)) else None

    def _signature(self, judge: str) -> str:
        digest = hmac.new(self._key, judge.encode("ascii"), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def judge_of(request: Request) -> str | None:
    return request.app.state.cookies.judge(request)


def required_judge(request: Request) -> str:
    judge = judge_of(request)
    if judge is None:
        raise Refusal(403, "no judge cookie from this server: open the page first")
    return judge


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    # Lax, not Strict: the first visit may come from a link in another site or a mail, and
    # Strict would then drop the cookie across the invite's redirect. POSTs from elsewhere
    # are refused by their Origin anyway.
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax")


# --- request bodies and ids ----------------------------------------------------------------


def opaque_id(value: str) -> str:
    # An id is only ever looked up, never used as a path; the shape check just answers
    # anything else early, the same way as an unknown id.
    if not ID.match(value):
        raise Refusal(404, "not found")
    return value


async def read_json(request: Request) -> object:
    """The body as JSON, refused when it is not JSON or longer than MAX_BODY_BYTES."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refusal(415, "send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise Refusal(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():  # also bounds a chunked body with no length
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Refusal(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Refusal(400, "the body is not valid JSON") from None


# --- the request guard (ASGI middleware) ---------------------------------------------------


class Guard:
    """ASGI middleware: the host, invite and origin checks, and the security headers."""

    def __init__(self, app, invite: str | None, allowed_hosts: frozenset[str] | None):
        self.app, self.invite, self.allowed_hosts = app, invite, allowed_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        request = Request(scope)
        try:
            invite_in_query = self._admit(request)
        except Refusal as refusal:
            await refusal_response(request, refusal)(scope, receive, send)
            return
        if invite_in_query:
            await self._drop_invite_from_url(request)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _admit(self, request: Request) -> bool:
        """Raise Refusal for a request that may not go on; True when the invite came in the
        query (the browser is then sent to the same page without it)."""
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            raise Refusal(403, "unexpected Host header: open the URL that `canopy judge serve` "
                               "printed")
        in_query = False
        if self.invite is not None:
            from_cookie = request.cookies.get(INVITE_COOKIE, "")
            from_query = request.query_params.get(INVITE_QUERY, "")
            in_query = _same(from_query, self.invite)
            if not (in_query or _same(from_cookie, self.invite)):
                raise Refusal(403, "this server needs its invite: open the URL with ?invite= "
                                   "that `canopy judge serve` printed")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin", "")
            expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if not _same(origin, expected):
                raise Refusal(403, "cross-origin request refused")
        return in_query and request.method in ("GET", "HEAD")

    def _drop_invite_from_url(self, request: Request) -> Response:
        # The token moves into a cookie so that it is not left in the address bar, the
        # history or a screenshot.
        response = RedirectResponse(request.url.path, status_code=303)
        set_cookie(response, INVITE_COOKIE, self.invite)
        return response


def _same(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _with_headers(send):
    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            headers = [(name, value) for name, value in message.get("headers", [])
                       if name.decode("latin-1").lower() not in SECURITY_HEADERS]
            headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
            message = {**message, "headers": headers}
        await send(message)
    return sending


# --- connections ---------------------------------------------------------------------------


def default_max_connections() -> int:
    """MAX_CONNECTIONS, or fewer where the process may open fewer files: accept() must never
    run out of descriptors (asyncio then logs a traceback per attempt)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, soft - _FILES_KEPT_FREE))


@dataclass
class ConnectionLimits:
    max_connections: int
    request_timeout_s: float

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._refusing = False
        self.refused = 0

    def refuse(self) -> None:
        """Count a connection refused for the cap; log only the first of a run of them."""
        with self._lock:
            self.refused += 1
            first = not self._refusing
            self._refusing = True
        if first:
            log.warning("judge: %d connections are open, the most allowed: refusing new ones "
                        "until some close (logged once)", self.max_connections)

    def admitted(self) -> None:
        with self._lock:
            if self._refusing:
                self._refusing = False
                log.warning("judge: accepting connections again (%d refused)", self.refused)


def bounded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the connection cap and the time limit on receiving each
    request (from the connection, or the end of the previous response, until the request
    and its body are in; the app's own time to answer is not limited)."""

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                limits.refuse()
                self._refused = True
                transport.abort()  # before uvicorn counts it: nothing else to undo
                return
            limits.admitted()
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
                self._disarm()  # the whole request is in: the app takes its time

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.request_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
                self.transport.close()

    return BoundedH11Protocol


def quiet_resource_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The event loop's exception handler: accept() out of descriptors or memory is logged
    once per run of failures, in one line (asyncio's default logs a traceback every time,
    megabytes a second); everything else as asyncio would."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE,
                                                      errno.ENOBUFS, errno.ENOMEM):
        last = getattr(loop, "_canopy_resource_logged", 0.0)
        now = loop.time()
        if now - last > 60:
            log.warning("judge: cannot accept connections (%s); retrying (logged once a "
                        "minute)", error.strerror)
            loop._canopy_resource_logged = now  # type: ignore[attr-defined]
        return
    loop.default_exception_handler(context)
