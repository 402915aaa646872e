"""The judging web server: one page, a small JSON API, and the images under opaque ids.

    GET  /                  the page (sets the judge's random id cookie)
    GET  /app.js, /style.css
    POST /api/round         deal a round: {"round": id, "images": [id, ...]}
    GET  /img/<id>          one dealt image, re-encoded (judge/png.py)
    POST /api/answer        {"image": id, "answer": "real" | "generated", "ms": int}
    GET  /api/round/<id>    the score and the truths, once every image of the round is answered

What a connection and a request may do is decided before a route sees them, by the policy in
judge/guard.py (connection cap and request time limit, host, invite, origin, signed judge
cookie, body size, headers). Routes then accept only ids that this server dealt to the
judge's cookie, and bodies that validate; a judge has at most `max_open_rounds` rounds open.
"""

from __future__ import annotations

import html
import ipaddress
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from anyio import to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from canopy.errors import UserError
from canopy.judge.catalog import Catalog
from canopy.judge.db import AnswersDB, Outcome
from canopy.judge.dealing import new_id, pick_round
from canopy.judge.guard import (
    COOKIE_MAX_AGE_S,
    ID,
    JUDGE_COOKIE,
    LOOPBACK_NAMES,
    REQUEST_TIMEOUT_S,
    ConnectionLimits,
    Guard,
    JudgeCookies,
    Refusal,
    bounded_protocol,
    default_max_connections,
    judge_of,
    opaque_id,
    quiet_resource_errors,
    read_json,
    refusal_response,
    required_judge,
    set_cookie,
)
from canopy.judge.png import uniform_png

__all__ = ["LOOPBACK_NAMES", "Settings", "create_app", "listen", "uvicorn_server"]

MAX_RESPONSE_MS = 3_600_000
_IMAGES_KEPT = 4096  # encoded images kept in memory (about 200 MB at 128 px)
# Rounds a judge may have dealt and not finished; dealing another discards the unanswered
# images of the oldest (a reload of the page deals a new round, so refusing would lock the
# judge out). Bounds what one cookie can make the database hold.
MAX_OPEN_ROUNDS = 4
# Where index.html says what the real pictures are.
REAL_KIND_SLOT = b"{{real_kind}}"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}


@dataclass(frozen=True)
class Settings:
    round_size: int
    # The invite token every request must carry (once as ?invite=, then as a cookie); None on
    # loopback, where only this machine's users can connect.
    invite: str | None = None
    # The Host names served; None accepts any (with an invite, the token is the gate).
    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES
    max_open_rounds: int = MAX_OPEN_ROUNDS


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(pattern=ID.pattern)
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
        # The page says what the real pictures are (the tiles manifest knows).
        self.static["index.html"] = self.static["index.html"].replace(
            REAL_KIND_SLOT, html.escape(catalog.real_kind).encode())

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
            cookie = request.app.state.cookies.value(new_id())
            set_cookie(response, JUDGE_COOKIE, cookie, max_age=COOKIE_MAX_AGE_S)
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
        self.db.deal(judge, round_id, dealt, experiment, self.settings.max_open_rounds)
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


def create_app(catalog: Catalog, db: AnswersDB, settings: Settings) -> Guard:
    judging = Judging(catalog, db, settings)
    app = Starlette(routes=judging.routes(), exception_handlers={Refusal: refusal_response})
    app.state.cookies = JudgeCookies(db.cookie_key())
    return Guard(app, settings.invite, settings.allowed_hosts)


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


def uvicorn_server(app: Guard, limits: ConnectionLimits | None = None):
    """uvicorn serving `app` under the connection policy (judge/guard.py): `limits` defaults
    to as many connections as the open-files limit allows and REQUEST_TIMEOUT_S."""
    import uvicorn

    limits = limits or ConnectionLimits(default_max_connections(), REQUEST_TIMEOUT_S)

    class Server(uvicorn.Server):
        async def serve(self, sockets=None) -> None:
            import asyncio

            asyncio.get_running_loop().set_exception_handler(quiet_resource_errors)
            await super().serve(sockets)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            server_header=False, timeout_keep_alive=5,
                            timeout_graceful_shutdown=3, http=bounded_protocol(limits))
    return Server(config)

