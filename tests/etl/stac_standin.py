"""Local stand-ins for a STAC API and a COG file server on 127.0.0.1.

`StacStandIn` answers `/stac` (landing page), `/stac/search` (GET and POST, the query
extension's eo:cloud_cover, pagination by next links, a bare 502 for a page over 100 items as
Earth Search does) and serves files under `/files/` honouring HTTP Range (single ranges, 206
with Content-Range), which Python's http.server does not. It records every request, and can be
scripted to fail: the next N answers of a path prefix with a status (and headers), ranged
answers cut short (a truncated transfer), or Range ignored altogether.

    with StacStandIn(items, files_dir) as api:
        api.script("/stac/search", 429, headers={"Retry-After": "0.05"})
        ...  # etl.stac.api_url = api.url
        assert api.calls("/files/")
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
]
MAX_PAGE = 100
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Call:
    method: str
    path: str
    range: str | None
    body: Any


class StacStandIn:
    def __init__(self, items: list[dict[str, Any]], files_dir: Path):
        self.items = items  # hrefs may hold "{base}", replaced by this server's URL
        self.files_dir = Path(files_dir)
        self.no_range = False
        self.truncate = 0  # the next N ranged answers are cut short (-1: all of them)
        self._calls: list[Call] = []
        self._scripts: deque[list] = deque()  # [prefix, status, headers, requests to let by]
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base}/stac"

    def __enter__(self) -> StacStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, prefix: str, status: int, times: int = 1, headers: dict | None = None,
               after: int = 0) -> None:
        """The next `times` requests whose path starts with `prefix`, once `after` such requests
        have been answered normally, answer `status`."""
        with self._lock:
            for number in range(times):
                self._scripts.append([prefix, status, headers or {}, after if number == 0 else 0])

    def calls(self, prefix: str = "") -> list[Call]:
        with self._lock:
            return [call for call in self._calls if call.path.startswith(prefix)]

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- answers ---------------------------------------------------------------------------------

    def _record(self, call: Call) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            self._calls.append(call)
            for index, entry in enumerate(self._scripts):
                prefix, status, headers, after = entry
                if call.path.startswith(prefix):
                    if after > 0:
                        entry[3] -= 1
                        return None
                    del self._scripts[index]
                    return status, headers
        return None

    def _take_truncate(self) -> bool:
        with self._lock:
            if self.truncate == 0:
                return False
            if self.truncate > 0:
                self.truncate -= 1
            return True

    def landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog", "id": "standin", "stac_version": "1.0.0",
            "description": "STAC API stand-in", "conformsTo": CONFORMANCE,
            "links": [
                {"rel": "self", "href": self.url, "type": "application/json"},
                {"rel": "root", "href": self.url, "type": "application/json"},
                {"rel": "search", "href": f"{self.url}/search", "method": "GET",
                 "type": "application/geo+json"},
                {"rel": "search", "href": f"{self.url}/search", "method": "POST",
                 "type": "application/geo+json"},
            ],
        }

    def search(self, query: dict[str, Any], method: str) -> tuple[int, dict[str, Any] | None]:
        limit = int(query.get("limit", 10))
        if limit > MAX_PAGE:
            return 502, None
        matches = [item for item in self.items if _matches(item, query)]
        start = int(query.get("token", 0))
        page = matches[start:start + limit]
        links = []
        if start + limit < len(matches):
            token = str(start + limit)
            if method == "POST":
                links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST",
                              "body": {"token": token}, "merge": True})
            else:
                params = {k: v for k, v in query.items() if k != "token"}
                encoded = "&".join(f"{k}={_query_value(v)}" for k, v in params.items())
                links.append({"rel": "next", "href": f"{self.url}/search?{encoded}&token={token}",
                              "method": "GET"})
        features = [json.loads(json.dumps(item).replace("{base}", self.base)) for item in page]
        return 200, {"type": "FeatureCollection", "features": features, "links": links}


def _query_value(value: Any) -> str:
    from urllib.parse import quote

    if isinstance(value, (list, tuple)):
        return quote(",".join(str(v) for v in value))
    if isinstance(value, dict):
        return quote(json.dumps(value))
    return quote(str(value))


def _matches(item: dict[str, Any], query: dict[str, Any]) -> bool:
    collections = query.get("collections")
    if isinstance(collections, str):
        collections = collections.split(",")
    if collections and item.get("collection") not in collections:
        return False
    bbox = query.get("bbox")
    if isinstance(bbox, str):
        bbox = [float(v) for v in bbox.split(",")]
    if bbox:
        west, south, east, north = item["bbox"]
        if bbox[0] > east or bbox[2] < west or bbox[1] > north or bbox[3] < south:
            return False
    when = query.get("datetime")
    if when:
        start, end = when.split("/")
        if not start <= item["properties"]["datetime"] <= end:
            return False
    conditions = query.get("query")
    if isinstance(conditions, str):
        conditions = json.loads(conditions)
    for name, ops in (conditions or {}).items():
        value = item["properties"].get(name)
        if "lte" in ops and not (value is not None and value <= ops["lte"]):
            return False
    return True


def _handler_for(api: StacStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def _answer(self, method: str) -> None:
            parts = urlsplit(self.path)
            body = None
            if method == "POST":
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
            scripted = api._record(Call(method, parts.path, self.headers.get("Range"), body))
            if scripted is not None:
                status, headers = scripted
                return self._send(status, b"scripted failure", headers)
            if parts.path.rstrip("/") == "/stac":
                return self._json(200, api.landing())
            if parts.path == "/stac/search":
                query = body if method == "POST" else {
                    k: v[0] for k, v in parse_qs(parts.query).items()}
                status, answer = api.search(query, method)
                if answer is None:
                    return self._send(status, b"", {})  # a bare 502, as Earth Search does
                return self._json(status, answer, "application/geo+json")
            if parts.path.startswith("/sas/token/"):  # Planetary Computer's token endpoint
                return self._json(200, {"msft:expiry": "2099-01-01T00:00:00Z",
                                        "token": "st=2024-01-01&se=2099-01-01&sp=rl&sig=s3cr3t"})
            if parts.path.startswith("/files/"):
                return self._file(method, api.files_dir / parts.path[len("/files/"):])
            return self._send(404, b"not found", {})

        def _file(self, method: str, path: Path) -> None:
            if not path.is_file():
                return self._send(404, b"not found", {})
            size = path.stat().st_size
            wanted = self.headers.get("Range")
            match = _RANGE.match(wanted or "")
            if api.no_range or match is None:
                headers = {} if api.no_range else {"Accept-Ranges": "bytes"}
                return self._send(200, b"" if method == "HEAD" else path.read_bytes(), headers,
                                  length=size)
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            length = end + 1 - start
            # Cut GDAL's block reads, not the source's 16-byte probe of each file.
            truncate = length > 1024 and api._take_truncate()
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if method == "HEAD":
                return
            # Streamed in small pieces: the stand-in runs in the tests' process, whose memory
            # some tests measure. A truncated answer stops halfway and drops the connection.
            remaining = length // 2 if truncate else length
            with path.open("rb") as handle:
                handle.seek(start)
                while remaining > 0:
                    piece = handle.read(min(remaining, 64 * 1024))
                    self.wfile.write(piece)
                    remaining -= len(piece)
            if truncate:
                self.wfile.flush()
                self.close_connection = True

        def _json(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": content_type})

        def _send(self, status: int, body: bytes, headers: dict[str, str],
                  length: int | None = None) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if body:
                self.wfile.write(body)

    return Handler
