"""A judging workspace (etl-style tiles, sample images) and a real server on a free port."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from canopy.judge.catalog import load_catalog
from canopy.judge.db import AnswersDB
from canopy.judge.guard import ConnectionLimits
from canopy.judge.server import LOOPBACK_NAMES, Settings, create_app, listen, uvicorn_server
from tests.evaluate.synthetic import degrade, forest_images, write_samples, write_tiles

TILE = 32


def write_workspace(root: Path, tile: int = TILE, n_val: int = 12, n_samples: int = 10) -> Path:
    """tiles/ (train and val shards), samples/ (NNNNNN.png + manifest) and params.yaml."""
    write_tiles(root / "tiles", forest_images(6, tile, seed=1), forest_images(n_val, tile, seed=2))
    # Blurred, as a weak model's samples are: they compress better than the real tiles, so the
    # files on disk differ in size by class (what the served encoding must hide).
    write_samples(root / "samples", degrade(forest_images(n_samples, tile, seed=3), blur=1.5))
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0}))
    return root


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return write_workspace(tmp_path)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


class Client:
    """One browser's worth of HTTP: its own cookies, and the page's Origin on POSTs."""

    def __init__(self, base: str):
        self.base = urlsplit(base)
        self.cookies: dict[str, str] = {}

    @property
    def origin(self) -> str:
        return f"http://{self.base.netloc}"

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                origin: str | None = "own") -> Reply:
        sent = {"Host": self.base.netloc}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method == "POST" and origin is not None:
            sent["Origin"] = self.origin if origin == "own" else origin
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        conn = http.client.HTTPConnection(self.base.hostname, self.base.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            conn.close()
        for cookie in reply.headers.get_all("set-cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";")[0]
        return reply

    def open_page(self) -> Reply:
        reply = self.request("GET", "/")
        assert reply.status == 200, reply.body
        return reply

    def deal(self) -> dict:
        reply = self.request("POST", "/api/round", {})
        assert reply.status == 200, reply.body
        return reply.json()

    def answer(self, image: str, answer: str = "real", ms: int = 800) -> Reply:
        return self.request("POST", "/api/answer", {"image": image, "answer": answer, "ms": ms})


@dataclass
class Running:
    base: str
    db: AnswersDB

    def client(self) -> Client:
        return Client(self.base)

    def judge(self) -> Client:
        """A client that has opened the page (so it has its judge cookie)."""
        client = self.client()
        client.open_page()
        return client

    def rows(self, table: str) -> list[sqlite3.Row]:
        with contextlib.closing(sqlite3.connect(self.db.path)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()

    def truth(self, image_id: str) -> str:
        (row,) = [row for row in self.rows("deals") if row["id"] == image_id]
        return row["truth"]


@contextlib.contextmanager
def running_server(root: Path, round_size: int = 10, invite: str | None = None,
                   samples: str = "samples", db: str = "answers.sqlite",
                   limits: ConnectionLimits | None = None, **settings) -> Iterator[Running]:
    """The judging app under uvicorn on 127.0.0.1, on a free port, in a thread."""
    catalog = load_catalog(root / samples, root / "tiles")
    answers = AnswersDB.checked(root / db, must_exist=False)
    answers.initialise()
    settings = Settings(round_size=round_size, invite=invite,
                        allowed_hosts=None if invite else LOOPBACK_NAMES, **settings)
    listener = listen("127.0.0.1", 0)
    server = uvicorn_server(create_app(catalog, answers, settings), limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener.socket]},
                              daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            thread.join(0.01)
        assert server.started, "the server did not start"
        yield Running(f"http://127.0.0.1:{listener.port}", answers)
    finally:
        server.should_exit = True
        thread.join(10)
        listener.socket.close()


@pytest.fixture
def server(workspace: Path) -> Iterator[Running]:
    with running_server(workspace) as running:
        yield running


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kinds.append(data[at + 4:at + 8].decode("ascii"))
        at += 12 + length
    return kinds

