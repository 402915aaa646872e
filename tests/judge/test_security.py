"""Each refusal of the judging server, shown on a real server over HTTP; nothing is stored."""

from __future__ import annotations

import http.client
import re
import secrets
import sys
import threading

import pytest

from tests.judge.conftest import png_chunks, running_server


def answers_stored(server) -> int:
    return len(server.rows("answers"))


# --- who may connect -----------------------------------------------------------------------


def test_without_loopback_every_request_needs_the_invite(workspace):
    token = secrets.token_urlsafe(16)
    with running_server(workspace, invite=token) as server:
        stranger = server.client()
        for method, path in [("GET", "/"), ("GET", "/app.js"), ("GET", "/img/" + "a" * 22),
                             ("POST", "/api/round"), ("POST", "/api/answer")]:
            reply = stranger.request(method, path, {} if method == "POST" else None)
            assert reply.status == 403, (path, reply.status)
            assert b"invite" in reply.body
        assert stranger.request("GET", "/?invite=" + "x" * len(token)).status == 403
        assert stranger.cookies == {}  # no judge id handed out before the invite

        guest = server.client()
        reply = guest.request("GET", f"/?invite={token}")
        assert reply.status == 303 and reply.headers["location"] == "/"  # token leaves the URL
        assert guest.cookies["canopy_invite"] == token
        guest.open_page()
        round_ = guest.deal()
        assert guest.answer(round_["images"][0]).status == 200
        assert answers_stored(server) == 1


def test_on_loopback_other_host_names_are_refused(server):
    """A web page elsewhere cannot reach the server through a name rebound to 127.0.0.1."""
    client = server.client()
    assert client.request("GET", "/", headers={"Host": "evil.example:8765"}).status == 403
    assert client.request("GET", "/", headers={"Host": "localhost:1"}).status == 200


# --- what a judge may answer ---------------------------------------------------------------


def test_an_image_not_dealt_to_this_judge_is_refused(server):
    alice, bob = server.judge(), server.judge()
    round_ = alice.deal()
    image = round_["images"][0]
    assert bob.answer(image).status == 404  # dealt, but to someone else
    assert bob.request("GET", f"/img/{image}").status == 404
    assert bob.request("GET", f"/api/round/{round_['round']}").status == 404
    assert alice.answer(secrets.token_urlsafe(16)).status == 404  # never dealt
    cookieless = server.client()
    assert cookieless.answer(image).status == 403
    assert answers_stored(server) == 0
    assert alice.answer(image).status == 200


def test_a_replayed_answer_is_refused(server):
    judge = server.judge()
    image = judge.deal()["images"][0]
    assert judge.answer(image, "real").status == 200
    replay = judge.answer(image, "generated")
    assert replay.status == 409
    (row,) = server.rows("answers")
    assert row["answer"] == "real"  # the first answer stands


def test_concurrent_replays_store_one_answer(server):
    judge = server.judge()
    image = judge.deal()["images"][0]
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(judge.answer(image).status))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [409] * 7
    assert answers_stored(server) == 1


# --- how requests must look ----------------------------------------------------------------


@pytest.mark.parametrize("origin", [None, "null", "http://evil.example", "http://127.0.0.1:1"])
def test_a_post_from_another_origin_is_refused(server, origin):
    judge = server.judge()
    image = judge.deal()["images"][0]
    assert judge.request("POST", "/api/round", {}, origin=origin).status == 403
    reply = judge.request("POST", "/api/answer", {"image": image, "answer": "real", "ms": 5},
                          origin=origin)
    assert reply.status == 403
    assert answers_stored(server) == 0
    assert len(server.rows("deals")) == 10  # the first round only: no second one dealt


@pytest.mark.parametrize("body, headers, status", [
    (b"{" + b" " * 2000 + b"}", {"Content-Type": "application/json"}, 413),
    (b'{"image": "x"}', {"Content-Type": "application/json", "Content-Length": "99999"}, 413),
    (b"{not json", {"Content-Type": "application/json"}, 400),
    (b"\xff\xfe", {"Content-Type": "application/json"}, 400),
    (b'{"image": "x"}', {"Content-Type": "text/plain"}, 415),
    (b'["real"]', {"Content-Type": "application/json"}, 422),
])
def test_oversized_or_malformed_bodies_are_refused(server, body, headers, status):
    judge = server.judge()
    judge.deal()
    assert judge.request("POST", "/api/answer", body, headers=headers).status == status
    assert answers_stored(server) == 0


def test_an_oversized_chunked_body_is_refused(server):
    """No Content-Length: the server counts the bytes as they come."""
    judge = server.judge()
    conn = http.client.HTTPConnection(judge.base.hostname, judge.base.port, timeout=20)
    cookies = "; ".join(f"{k}={v}" for k, v in judge.cookies.items())
    conn.request("POST", "/api/answer", body=iter([b"[" + b"1," * 600, b"1]"]),
                 headers={"Content-Type": "application/json", "Origin": judge.origin,
                          "Cookie": cookies, "Transfer-Encoding": "chunked"},
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    assert answers_stored(server) == 0


@pytest.mark.parametrize("change", [
    {"answer": "maybe"}, {"answer": "REAL"}, {"ms": -1}, {"ms": 10**9}, {"ms": "800"},
    {"ms": True}, {"ms": 1.5}, {"image": "../../pyproject.toml"}, {"extra": 1},
])
def test_answers_that_do_not_validate_are_refused(server, change):
    judge = server.judge()
    image = judge.deal()["images"][0]
    body = {"image": image, "answer": "real", "ms": 800, **change}
    assert judge.request("POST", "/api/answer", body).status == 422
    assert answers_stored(server) == 0


# --- what a client can name ----------------------------------------------------------------


HOSTILE_PATHS = [
    "/img/..%2F..%2Fpyproject.toml", "/img/../../pyproject.toml", "/img/000000.png",
    "/img/test_val_0000", "/img/val%2Ftest_val_0000", "/img/%2Fetc%2Fpasswd",
    "/static/app.js", "/judge/static/app.js", "/samples/000000.png", "/tiles/manifest.json",
    "/app.js/..%2F..%2Fserver.py", "/api/round/..%2F..%2Fanswers.sqlite", "/answers.sqlite",
    "/img/" + "A" * 21 + ".",
]


def test_no_client_path_reaches_the_file_system(workspace):
    opened = []
    recording = threading.Event()

    def audit(event, args):
        if recording.is_set() and event == "open":
            opened.append(str(args[0]))

    sys.addaudithook(audit)  # process-wide: it sees the server's threads too
    with running_server(workspace) as server:
        judge = server.judge()
        images = judge.deal()["images"]
        recording.set()
        try:
            statuses = {path: judge.request("GET", path).status for path in HOSTILE_PATHS}
            static = judge.request("GET", "/app.js")  # served from memory, read at start
        finally:
            recording.clear()
    assert set(statuses.values()) == {404}, statuses
    assert static.status == 200
    assert opened == []

    # The hook does see the server's reads: a restarted server (nothing in memory) reads a
    # dealt image again from the folder listing, and only from there.
    with running_server(workspace) as restarted:
        again = restarted.client()
        again.cookies = judge.cookies
        recording.set()
        try:
            replies = [again.request("GET", f"/img/{image}") for image in images]
        finally:
            recording.clear()
    assert {reply.status for reply in replies} == {200}
    folders = (str(workspace / "tiles") + "/", str(workspace / "samples") + "/")
    assert opened and all(path.startswith(folders) for path in opened), opened


def test_ids_are_opaque(server):
    """Random, per deal: the same image dealt twice gets two unrelated ids."""
    judges = [server.judge() for _ in range(3)]
    rounds = [judge.deal() for judge in judges]
    ids = [image for round_ in rounds for image in round_["images"]] + [r["round"] for r in rounds]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", image) for image in ids)
    assert all(set(round_) == {"round", "images"} for round_ in rounds)
    deals = server.rows("deals")
    names = {row["tile_key"] for row in deals if row["tile_key"]} | {
        f"{row['sample_index']:06d}" for row in deals if row["sample_index"] is not None}
    page = judges[0].open_page().body.decode()
    for name in names:
        assert all(name not in image for image in ids)
        assert name not in page
    assert not re.search(r"real|generated", " ".join(ids), re.IGNORECASE)
    repeated = {}
    for row in deals:  # 10 of 12 tiles and 10 samples a round: images recur across judges
        repeated.setdefault((row["tile_key"], row["sample_index"]), []).append(row["id"])
    assert any(len(set(images)) > 1 for images in repeated.values())


def test_both_classes_are_served_alike(server, workspace):
    """Same headers, same byte size, same PNG layout, no metadata: nothing but the pixels differ."""
    on_disk = {len(path.read_bytes()) for path in (workspace / "samples").glob("0*.png")}
    judge = server.judge()
    round_ = judge.deal()
    replies = {image: judge.request("GET", f"/img/{image}") for image in round_["images"]}
    truths = {image: server.truth(image) for image in replies}
    assert set(truths.values()) == {"real", "generated"}
    shapes = set()
    for image, reply in replies.items():
        assert reply.status == 200
        headers = tuple(sorted((k.lower(), v) for k, v in reply.headers.items()
                               if k.lower() != "date"))
        shapes.add((headers, len(reply.body), tuple(png_chunks(reply.body))))
    assert len(shapes) == 1, shapes  # one shape for all ten
    (headers, size, chunks), = shapes
    assert chunks == ("IHDR", "IDAT", "IEND")
    assert ("content-type", "image/png") in headers and ("cache-control", "no-store") in headers
    assert not any(name in ("etag", "last-modified") for name, _ in headers)
    assert len(on_disk) > 1  # the files on disk do differ in size

    # The answer's reply is the same for both classes too.
    real = next(image for image, truth in truths.items() if truth == "real")
    generated = next(image for image, truth in truths.items() if truth == "generated")
    assert judge.answer(real).body == judge.answer(generated).body
    early = judge.request("GET", f"/api/round/{round_['round']}")
    assert early.status == 409 and b"real" not in early.body and b"generated" not in early.body


def test_rounds_are_half_real_in_shuffled_order(workspace):
    with running_server(workspace, round_size=6) as server:
        judge = server.judge()
        patterns = []
        for _ in range(40):
            images = judge.deal()["images"]
            pattern = tuple(server.truth(image) == "real" for image in images)
            assert sum(pattern) == 3
            patterns.append(pattern)
    firsts = sum(pattern[0] for pattern in patterns)
    assert 6 <= firsts <= 34  # a fixed order would give 0 or 40 (p of failing by chance < 1e-5)
    assert len(set(patterns)) >= 8  # of the 20 possible orders


# --- cookies and rounds --------------------------------------------------------------------


def test_a_judge_cookie_the_server_never_issued_opens_no_round(server):
    from canopy.judge.dealing import new_id

    issued = server.judge().cookies["canopy_judge"]
    forged = {
        "a bare id": new_id(),
        "another id under the issued signature": f"{new_id()}.{issued.split('.')[1]}",
        "a made-up signature": f"{issued.split('.')[0]}.{new_id()}",
    }
    for cookie in forged.values():
        stranger = server.client()
        stranger.cookies["canopy_judge"] = cookie
        assert stranger.request("POST", "/api/round", {}).status == 403
    assert server.rows("deals") == []


def test_issued_cookies_stay_valid_across_a_restart(workspace):
    with running_server(workspace) as first:
        judge = first.judge()
        cookie = judge.cookies["canopy_judge"]
    with running_server(workspace) as second:
        again = second.client()
        again.cookies["canopy_judge"] = cookie
        again.open_page()
        assert again.cookies["canopy_judge"] == cookie  # recognised: no new judge id
        again.deal()


def test_a_judge_has_a_bounded_number_of_open_rounds(workspace):
    with running_server(workspace, round_size=4, max_open_rounds=3) as server:
        judge = server.judge()
        first = judge.deal()
        assert judge.answer(first["images"][0]).status == 200
        for _ in range(20):  # a script, or 20 reloads of the page
            judge.deal()
        deals = server.rows("deals")
        unanswered = {row["round"] for row in deals
                      if row["id"] not in {a["deal"] for a in server.rows("answers")}}
        assert len(unanswered) == 3
        assert len(deals) == 3 * 4 + 1  # three open rounds, and the answered image's deal
        assert answers_stored(server) == 1
        assert judge.answer(first["images"][1]).status == 404  # its round was closed


# --- connections ---------------------------------------------------------------------------


def _connect(base: str):
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(base)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def _closed_by_server(sock, within_s: float) -> bool:
    """Whether the server closes the connection within `within_s` (whatever it sent first)."""
    import socket
    import time

    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(4096) == b"":
                return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
    return False


def test_an_idle_or_half_sent_request_is_closed_after_the_time_limit(workspace):
    from canopy.judge.guard import ConnectionLimits

    with running_server(workspace, limits=ConnectionLimits(100, 0.5)) as server:
        judge = server.judge()
        cookies = "; ".join(f"{k}={v}" for k, v in judge.cookies.items())
        idle, half = _connect(server.base), _connect(server.base)
        half.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the final blank line
        body = _connect(server.base)  # a request the app accepts, then too little of its body
        body.sendall(f"POST /api/answer HTTP/1.1\r\nHost: {judge.base.netloc}\r\nOrigin: "
                     f"{judge.origin}\r\nCookie: {cookies}\r\nContent-Type: application/json"
                     "\r\nContent-Length: 50\r\n\r\n{\"im".encode())
        for sock in (idle, half, body):
            assert _closed_by_server(sock, within_s=5)
            sock.close()
        assert len(judge.deal()["images"]) == 10  # whole requests are served as before


def test_connections_beyond_the_cap_are_refused_and_logged_once(workspace, caplog):
    from canopy.judge.guard import ConnectionLimits

    with running_server(workspace, limits=ConnectionLimits(4, 60)) as server:
        held = [_connect(server.base) for _ in range(4)]
        server_side_accepts = 0
        for _ in range(30):
            extra = _connect(server.base)
            assert _closed_by_server(extra, within_s=5)
            extra.close()
            server_side_accepts += 1
        refusals = [r for r in caplog.records if "the most allowed" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
        for sock in held:
            sock.close()
        import time
        for _ in range(100):  # the server notices the closed connections
            try:
                server.judge()
                break
            except (AssertionError, ConnectionError, http.client.HTTPException):
                time.sleep(0.05)
        assert len(server.judge().deal()["images"]) == 10


def test_accept_running_out_of_files_is_logged_once_not_per_attempt(caplog):
    """asyncio logs a traceback for every failed accept(): 8 MB/s of stderr when the
    server's files ran out. The server's loop handler says it in one line, once a minute."""
    import asyncio
    import errno
    import logging

    from canopy.judge.guard import quiet_resource_errors

    loop = asyncio.new_event_loop()
    try:
        error = OSError(errno.EMFILE, "Too many open files")
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):
                quiet_resource_errors(loop, {"message": "socket.accept() out of system resource",
                                             "exception": error})
        lines = [r.getMessage() for r in caplog.records]
        assert lines == ["judge: cannot accept connections (Too many open files); retrying "
                         "(logged once a minute)"]
    finally:
        loop.close()
