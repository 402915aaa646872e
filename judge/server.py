"""The judging web server: one page, a small JSON API, and the images under opaque ids.

    GET  /                  the page (sets the judge's random id cookie)
    GET  /app.js, /style.css
    POST /api/round         deal a round: {"round": id, "images": [id, ...]}
    GET  /img/<id>          one dealt image, re-encoded (judge/png.py)
    POST /api/answer        {"image": id, "answer": "real" | "generated", "ms": int}
    GET  /api/round/<id>    the score and the truths, once every image of the round is answered

What a request may do is decided before it reaches a route (`Guard`): on loopback only the
loopback host names are served (a web page elsewhere cannot reach the server by rebinding a
DNS name to 127.0.0.1); elsewhere every request carries the invite token; every POST comes
from this server's own origin. Routes then accept only ids that this server dealt to the
judge's cookie, and bodies of at most MAX_BODY_BYTES that validate.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Literal
from urllib.parse import urlsplit

from anyio import to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from canopy.errors import UserError
from canopy.judge.catalog import Catalog
from canopy.judge.db import AnswersDB, Outcome
from canopy.judge.dealing import new_id, pick_round
from canopy.judge.png import uniform_png

JUDGE_COOKIE = "canopy_judge"
INVITE_COOKIE = "canopy_invite"
INVITE_QUERY = "invite"
MAX_BODY_BYTES = 1024  # an answer is under 100 bytes
MAX_RESPONSE_MS = 3_600_000
_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # dealing.new_id's shape
_COOKIE_MAX_AGE_S = 365 * 24 * 3600
_IMAGES_KEPT = 4096  # encoded images kept in memory (about 200 MB at 128 px)
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}

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


@dataclass(frozen=True)
class Settings:
    round_size: int
    # The invite token every request must carry (once as ?invite=, then as a cookie); None on
    # loopback, where only this machine's users can connect.
    invite: str | None = None
    # The Host names served; None accepts any (with an invite, the token is the gate).
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES


class Refusal(Exception):
    """A request refused with a 4xx status and a one-line reason, before anything is stored."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(pattern=_ID.pattern)
    answer: Literal["real", "generated"]
    ms: int = Field(ge=0, le=MAX_RESPONSE_MS)


# --- the routes ----------------------------------------------------------------------------


class Judging:
    """The routes, over one experiment's catalog and the answers database."""

    def __init__(self, catalog: Catalog, db: AnswersDB, settings: Settings):
        self.catalog, self.db, self.settings = catalog, db, settings
        self.images = EncodedImages(_IMAGES_KEPT)
        folder = resources.files("canopy.judge") / "static"
        # Read once at start: no request ever names a file.
        self.static = {name: (folder / name).read_bytes() for name in STATIC}

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page, methods=["GET"]),
            *(Route(f"/{name}", self._static(name), methods=["GET"])
              for name in STATIC if name != "index.html"),
            Route("/api/round", self.new_round, methods=["POST"]),
            Route("/api/round/{round_id}", self.round_result, methods=["GET"]),
            Route("/api/answer", self.answer, methods=["POST"]),
            Route("/img/{image_id}", self.image, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        response = Response(self.static["index.html"], media_type=STATIC["index.html"])
        if judge_of(request) is None:
            set_cookie(response, JUDGE_COOKIE, new_id(), max_age=_COOKIE_MAX_AGE_S)
        return response

    def _static(self, name: str) -> Callable:
        async def serve(request: Request) -> Response:
            return Response(self.static[name], media_type=STATIC[name])
        return serve

    async def new_round(self, request: Request) -> Response:
        judge = required_judge(request)
        if await read_json(request) != {}:
            raise Refusal(422, "a new round takes an empty JSON object")
        round_id, image_ids = await to_thread.run_sync(self._deal, judge)
        return JSONResponse({"round": round_id, "images": image_ids})

    def _deal(self, judge: str) -> tuple[str, list[str]]:
        self._refuse_if_replaced()
        experiment = self.catalog.experiment
        picked = pick_round(self.catalog, self.db.seen(judge, experiment),
                            self.settings.round_size)
        dealt = [(new_id(), identity) for identity in picked]
        # Encoded now, before the page asks: every image is then served from memory, at the
        # same speed whichever file it came from.
        encoded = [uniform_png(self.catalog.pixels(identity)) for _, identity in dealt]
        self._refuse_if_replaced()  # again: the folders may have been swapped while reading
        for (image_id, _), data in zip(dealt, encoded):
            self.images.put(image_id, judge, data)
        round_id = new_id()
        self.db.deal(judge, round_id, dealt, experiment)
        return round_id, [image_id for image_id, _ in dealt]

    def _refuse_if_replaced(self) -> None:
        # A run that replaced data/samples or data/tiles under a running server would get its
        # images judged as the old experiment's: stop dealing instead.
        if not self.catalog.unchanged():
            raise Refusal(409, "the samples or tiles changed since the server started: "
                               "restart `canopy judge serve`")

    async def image(self, request: Request) -> Response:
        judge = required_judge(request)
        image_id = opaque_id(request.path_params["image_id"])
        data = await to_thread.run_sync(self._encoded, image_id, judge)
        return Response(data, media_type="image/png")

    def _encoded(self, image_id: str, judge: str) -> bytes:
        data = self.images.get(image_id, judge)
        if data is not None:
            return data
        identity = self.db.dealt_image(image_id, judge, self.catalog.experiment)
        if identity is None or not self.catalog.holds(identity):
            raise Refusal(404, "no such image was dealt to you")
        self._refuse_if_replaced()
        data = uniform_png(self.catalog.pixels(identity))  # evicted, or dealt before a restart
        self.images.put(image_id, judge, data)
        return data

    async def answer(self, request: Request) -> Response:
        judge = required_judge(request)
        try:
            body = AnswerBody.model_validate(await read_json(request))
        except ValidationError as err:
            problem = err.errors(include_url=False)[0]
            where = ".".join(str(part) for part in problem["loc"]) or "body"
            raise Refusal(422, f"{where}: {problem['msg']}") from None
        outcome = await to_thread.run_sync(self.db.answer, body.image, judge, body.answer,
                                           body.ms, self.catalog.experiment)
        if outcome is Outcome.UNKNOWN:
            raise Refusal(404, "no such image was dealt to you")
        if outcome is Outcome.REPLAYED:
            raise Refusal(409, "this image is already answered")
        return JSONResponse({"stored": True})

    async def round_result(self, request: Request) -> Response:
        judge = required_judge(request)
        round_id = opaque_id(request.path_params["round_id"])
        deals = await to_thread.run_sync(self.db.round, round_id, judge, self.catalog.experiment)
        if not deals:
            raise Refusal(404, "no such round was dealt to you")
        answered = sum(deal.answer is not None for deal in deals)
        if answered < len(deals):
            # The truths stay hidden until the end: a half-done round must not teach the rest.
            raise Refusal(409, f"answer every image of the round first ({answered} of "
                               f"{len(deals)} answered)")
        images = [{"id": deal.id, "truth": deal.identity.truth, "answer": deal.answer}
                  for deal in deals]
        right = sum(image["truth"] == image["answer"] for image in images)
        return JSONResponse({"right": right, "total": len(images), "images": images})


class EncodedImages:
    """The served bytes of recently dealt images, by id, with the judge they were dealt to."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, image_id: str, judge: str, data: bytes) -> None:
        with self._lock:
            self._entries[image_id] = (judge, data)
            self._entries.move_to_end(image_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def get(self, image_id: str, judge: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(image_id)
            if entry is None or entry[0] != judge:
                return None
            self._entries.move_to_end(image_id)
            return entry[1]


# --- request checks ------------------------------------------------------------------------


def judge_of(request: Request) -> str | None:
    value = request.cookies.get(JUDGE_COOKIE, "")
    return value if _ID.match(value) else None


def required_judge(request: Request) -> str:
    judge = judge_of(request)
    if judge is None:
        raise Refusal(403, "no judge cookie: open the page first")
    return judge


def opaque_id(value: str) -> str:
    # An id is only ever looked up, never used as a path; the shape check just answers
    # anything else early, the same way as an unknown id.
    if not _ID.match(value):
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


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    # Lax, not Strict: the first visit may come from a link in another site or a mail, and
    # Strict would then drop the cookie across the invite's redirect. POSTs from elsewhere
    # are refused by their Origin anyway.
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax")


class Guard:
    """ASGI middleware: the host, invite and origin checks, and the security headers."""

    def __init__(self, app: Starlette, settings: Settings):
        self.app, self.settings = app, settings

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
        allowed = self.settings.allowed_hosts
        if allowed is not None and host not in allowed:
            raise Refusal(403, "unexpected Host header: open the URL that `canopy judge serve` "
                               "printed")
        in_query = False
        if self.settings.invite is not None:
            from_cookie = request.cookies.get(INVITE_COOKIE, "")
            from_query = request.query_params.get(INVITE_QUERY, "")
            in_query = _same(from_query, self.settings.invite)
            if not (in_query or _same(from_cookie, self.settings.invite)):
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
        set_cookie(response, INVITE_COOKIE, self.settings.invite)
        return response


def _same(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def refusal_response(request: Request, refusal: Refusal) -> Response:
    return JSONResponse({"error": refusal.reason}, status_code=refusal.status)


def _with_headers(send):
    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            headers = [(name, value) for name, value in message.get("headers", [])
                       if name.decode("latin-1").lower() not in SECURITY_HEADERS]
            headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
            message = {**message, "headers": headers}
        await send(message)
    return sending


def create_app(catalog: Catalog, db: AnswersDB, settings: Settings) -> Guard:
    judging = Judging(catalog, db, settings)
    app = Starlette(routes=judging.routes(), exception_handlers={Refusal: refusal_response})
    return Guard(app, settings)


# --- listening -----------------------------------------------------------------------------


@dataclass
class Listener:
    socket: socket.socket
    host: str
    port: int
    loopback: bool


def listen(host: str, port: int) -> Listener:
    """Bind and listen now, so a port in use is a clear error before anything is written."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"cannot listen on {host!r}: {err.strerror}; pass --host with an "
                        "address of this machine (127.0.0.1 for this machine only)") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted server take its port back while old connections linger in TIME_WAIT;
    # a port another program listens on is still refused.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}): pass --port with "
                        "a free port (or stop what uses that one)") from None
    bound_port = sock.getsockname()[1]
    loopback = ipaddress.ip_address(address[0].split("%")[0]).is_loopback
    return Listener(sock, host, bound_port, loopback)


def uvicorn_server(app: Guard):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            server_header=False, timeout_keep_alive=5,
                            timeout_graceful_shutdown=3)
    return uvicorn.Server(config)

