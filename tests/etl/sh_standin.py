"""A local stand-in for Sentinel Hub: OAuth2 token endpoint and Process API on 127.0.0.1.

It answers `/api/v1/process` with a real GeoTIFF (5 uint16 bands, no band descriptions, like
the service) sized by the request's output width/height, in the request's CRS and bbox. It
records every request (when it arrived and when it was answered) and can be scripted to fail
first (401, 429 with Retry-After in ms, 500, an HTML page...), to answer slowly, or to call a
hook after each answer, so tests drive the real sentinelhub client without touching the
internet.

    with StandIn() as sh:
        sh.script("process", 429, headers={"Retry-After": "50"})  # next process call answers 429
        ...  # point base_url at sh.url and token_url at sh.token_url
        assert len(sh.calls("process")) == 2
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds

TOKEN_PATH = "/oauth/token"
PROCESS_PATH = "/api/v1/process"
ENDPOINTS = {"token": TOKEN_PATH, "process": PROCESS_PATH}


@dataclass
class Call:
    endpoint: str  # "token" | "process" | "other"
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (process) or form dict (token)
    status: int
    time: float = field(default_factory=time.monotonic)  # when the answer was ready
    arrived: float = 0.0  # time.monotonic() when the request came in
    answered: float = 0.0  # ... and when its answer had been sent


@dataclass
class Scripted:
    status: int
    headers: dict[str, str]
    body: bytes


class StandIn:
    def __init__(self, client_id: str = "standin-client", client_secret: str = "standin-secret-Zq93"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token = _fake_jwt(client_id)
        self._calls: list[Call] = []
        self._scripts: dict[str, deque[Scripted]] = {"token": deque(), "process": deque()}
        self._always: dict[str, Scripted | None] = {"token": None, "process": None}
        self._delay: dict[str, float] = {"token": 0.0, "process": 0.0}
        self._on_answer: Any = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    # -- scripting and inspection ----------------------------------------------------------------

    def script(
        self, endpoint: str, status: int, *, times: int = 1, headers: dict[str, str] | None = None,
        body: bytes | dict | None = None,
    ) -> None:
        """The next `times` calls to `endpoint` ("token" | "process") answer `status`."""
        for _ in range(times):
            self._scripts[endpoint].append(_scripted(status, headers, body))

    def always(self, endpoint: str, status: int, *, headers: dict[str, str] | None = None) -> None:
        """Every call to `endpoint` answers `status` (after any scripted answers)."""
        self._always[endpoint] = _scripted(status, headers, None)

    def slow(self, endpoint: str, seconds: float) -> None:
        """Unscripted answers of `endpoint` take `seconds` (scripted ones come at once)."""
        self._delay[endpoint] = seconds

    def on_answer(self, hook: Any) -> None:
        """Call `hook(call)` in the server thread after each answer has been sent."""
        self._on_answer = hook

    def calls(self, endpoint: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if endpoint is None or c.endpoint == endpoint]

    # -- answers ---------------------------------------------------------------------------------

    def _answer(self, endpoint: str, headers: dict[str, str], raw: bytes) -> tuple[Scripted, Any]:
        if endpoint == "token":
            body: Any = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        else:
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
        with self._lock:
            queue = self._scripts.get(endpoint)
            scripted = queue.popleft() if queue else self._always.get(endpoint)
        if scripted is not None:
            return scripted, body
        time.sleep(self._delay.get(endpoint, 0.0))
        if endpoint == "token":
            return self._token(body), body
        if endpoint == "process":
            return self._process(headers, body), body
        return _scripted(404, None, {"error": {"status": 404, "message": "not found"}}), body

    def _token(self, form: dict[str, str]) -> Scripted:
        if form.get("grant_type") != "client_credentials":
            return _scripted(400, None, {"error": "unsupported_grant_type"})
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _scripted(
                401, None,
                {"error": "unauthorized_client", "error_description": "Invalid client or Invalid client credentials"},
            )
        return _scripted(
            200, None, {"access_token": self.access_token, "expires_in": 3600, "token_type": "Bearer"}
        )

    def _process(self, headers: dict[str, str], body: Any) -> Scripted:
        if headers.get("authorization") != f"Bearer {self.access_token}":
            return _scripted(401, None, {"error": {"status": 401, "reason": "Unauthorized",
                                                  "message": "You are not authorized!"}})
        try:
            bounds = body["input"]["bounds"]
            epsg = int(bounds["properties"]["crs"].rstrip("/").rsplit("/", 1)[-1])
            minx, miny, maxx, maxy = bounds["bbox"]
            width, height = int(body["output"]["width"]), int(body["output"]["height"])
        except (KeyError, TypeError, ValueError):
            return _scripted(400, None, {"error": {"status": 400, "message": "bad request body"}})
        if not (0 < width <= 2500 and 0 < height <= 2500):
            return _scripted(400, None, {"error": {"status": 400, "message": "size over 2500 px"}})
        tiff = _geotiff(epsg, (minx, miny, maxx, maxy), width, height)
        return Scripted(200, {"Content-Type": "image/tiff"}, tiff)


def _geotiff(epsg: int, bounds: tuple[float, float, float, float], width: int, height: int) -> bytes:
    """5 uint16 bands: R, G, B reflectance x 10000 (a gradient), dataMask 1, SCL 4 (vegetation)."""
    rows, cols = np.mgrid[0:height, 0:width]
    data = np.empty((5, height, width), dtype=np.uint16)
    data[0] = 300 + (cols * 7 + rows * 3) % 500
    data[1] = 600 + (cols * 5 + rows * 11) % 400
    data[2] = 200 + (cols * 13 + rows) % 300
    data[3] = 1
    data[4] = 4
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff", width=width, height=height, count=5, dtype="uint16",
            crs=CRS.from_epsg(epsg), transform=from_bounds(*bounds, width, height),
        ) as dst:
            dst.write(data)
        return memfile.read()


def _scripted(status: int, headers: dict[str, str] | None, body: bytes | dict | None) -> Scripted:
    if isinstance(body, dict):
        payload = json.dumps(body).encode()
    elif body is None:
        payload = json.dumps({"error": {"status": status, "message": f"scripted {status}"}}).encode()
    else:
        payload = body
    return Scripted(status, {"Content-Type": "application/json", **(headers or {})}, payload)


def _fake_jwt(client_id: str) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'azp': client_id, 'sub': 'standin'})}.c2lnbmF0dXJl"


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            endpoint = next((name for name, p in ENDPOINTS.items() if p == path), "other")
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer, body = standin._answer(endpoint, headers, raw)
            call = Call(endpoint, path, headers, body, answer.status, arrived=arrived)
            with standin._lock:
                standin._calls.append(call)
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
            self.wfile.flush()
            call.answered = time.monotonic()
            if standin._on_answer is not None:
                standin._on_answer(call)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean

    return Handler
