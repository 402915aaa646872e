"""`canopy judge serve` and `report` from the command line: the bad input of each gives one
line, exit code 2 and nothing written; serve announces its URL (with an invite off loopback)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from canopy.cli import app
from tests.evaluate.synthetic import write_tiles
from tests.judge.conftest import Client, running_server


def judge(workspace, *args):
    return CliRunner().invoke(app, ["judge", *args], catch_exceptions=False)


def serve_args(workspace, *extra):
    return ["serve", "--params", str(workspace / "params.yaml"), "--samples", str(workspace / "samples"), "--tiles", str(workspace / "tiles"),
            "--db", str(workspace / "db" / "answers.sqlite"), "--port", "0", *extra]


def report_args(workspace, *extra):
    return ["report", "--params", str(workspace / "params.yaml"),
            "--samples", str(workspace / "samples"), "--tiles", str(workspace / "tiles"),
            "--db", str(workspace / "db" / "answers.sqlite"),
            "--metrics", str(workspace / "metrics"), *extra]


def assert_refused(result, *phrases):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("canopy judge: error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    assert "Traceback" not in result.output


def written(workspace) -> list[str]:
    return sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*")
                  if p.is_file() and p.parts[len(workspace.parts)] in ("db", "metrics"))


# --- serve: bad input ----------------------------------------------------------------------


def test_serve_refuses_a_missing_samples_folder(workspace):
    shutil.rmtree(workspace / "samples")
    assert_refused(judge(workspace, *serve_args(workspace)), "samples folder", "not found")
    assert written(workspace) == []


def test_serve_refuses_a_samples_folder_without_images(workspace):
    for path in (workspace / "samples").glob("0*.png"):
        path.unlink()
    assert_refused(judge(workspace, *serve_args(workspace)), "no sample images")


def test_serve_refuses_samples_without_their_manifest(workspace):
    (workspace / "samples" / "manifest.json").unlink()
    assert_refused(judge(workspace, *serve_args(workspace)), "manifest.json not found")


def test_serve_refuses_tiles_without_val_tiles(workspace):
    shutil.rmtree(workspace / "tiles")
    write_tiles(workspace / "tiles", np.zeros((4, 32, 32, 3), np.uint8),
                np.zeros((0, 32, 32, 3), np.uint8))
    assert_refused(judge(workspace, *serve_args(workspace)), "no val tiles")
    assert written(workspace) == []


def test_serve_refuses_a_missing_tiles_folder(workspace):
    shutil.rmtree(workspace / "tiles")
    assert_refused(judge(workspace, *serve_args(workspace)), "manifest.json not found")


def test_serve_refuses_samples_of_another_tile_size(workspace):
    Image.new("RGB", (64, 64)).save(workspace / "samples" / "000002.png")
    assert_refused(judge(workspace, *serve_args(workspace)), "is 64x64 px", "32x32")
    assert written(workspace) == []


def test_serve_refuses_a_file_that_is_not_an_answers_database(workspace):
    (workspace / "db").mkdir()
    bad = workspace / "db" / "answers.sqlite"
    bad.write_text("my notes, not a database\n" * 50)
    assert_refused(judge(workspace, *serve_args(workspace)), "not a Canopy answers database")
    assert bad.read_text() == "my notes, not a database\n" * 50
    assert written(workspace) == ["db/answers.sqlite"]


def test_serve_refuses_a_port_in_use(workspace):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [*serve_args(workspace)[:-2], "--port", str(port)]
        assert_refused(judge(workspace, *args), f"127.0.0.1:{port}", "--port")
    assert written(workspace) == []  # refused before the database was created


def test_serve_refuses_an_odd_round_size(workspace):
    assert_refused(judge(workspace, *serve_args(workspace, "--round-size", "5")), "even")


# --- report: bad input ---------------------------------------------------------------------


def test_report_refuses_without_a_database(workspace):
    assert_refused(judge(workspace, *report_args(workspace)), "no answers database")
    assert written(workspace) == []


def test_report_refuses_a_file_that_is_not_an_answers_database(workspace):
    (workspace / "db").mkdir()
    (workspace / "db" / "answers.sqlite").write_bytes(os.urandom(4096))
    assert_refused(judge(workspace, *report_args(workspace)), "not a Canopy answers database")
    assert written(workspace) == ["db/answers.sqlite"]


def test_report_refuses_samples_that_have_no_answers(workspace):
    with running_server(workspace, db="db/answers.sqlite") as server:
        client = server.judge()
        client.answer(client.deal()["images"][0])
    # The samples change (another run): the answers in the database are not theirs.
    manifest = workspace / "samples" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "seed": 1}))
    assert_refused(judge(workspace, *report_args(workspace)), "no answers for the samples",
                   "1 other experiment")
    assert written(workspace) == ["db/answers.sqlite"]


# --- serve for real ------------------------------------------------------------------------


def start_serve(workspace, *extra) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-c", "from canopy.cli import main; main()", "judge",
         *serve_args(workspace, *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workspace)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "judge: open " in line:
            return process, line.split("judge: open ", 1)[1].split()[0]
        if not line:
            break
    process.kill()
    raise AssertionError(f"serve printed no URL: {lines} {process.stderr.read()}")


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return out


def test_serve_on_loopback_prints_its_url_and_needs_no_invite(workspace):
    process, url = start_serve(workspace)
    try:
        assert url.startswith("http://127.0.0.1:") and "invite" not in url
        client = Client(url)
        client.open_page()
        assert client.answer(client.deal()["images"][0]).status == 200
    finally:
        out = stop(process)
    assert "judge: stopped" in out
    assert (workspace / "db" / "answers.sqlite").is_file()


def test_serve_elsewhere_than_loopback_requires_the_printed_invite(workspace):
    process, url = start_serve(workspace, "--host", "0.0.0.0")
    try:
        assert "?invite=" in url
        token = url.split("?invite=", 1)[1]
        port = url.split(":")[2].split("/")[0]
        here = f"http://127.0.0.1:{port}"
        stranger = Client(here)
        assert stranger.request("GET", "/").status == 403
        assert stranger.request("POST", "/api/round", {}).status == 403
        guest = Client(here)
        assert guest.request("GET", f"/?invite={token}").status == 303
        guest.open_page()
        assert guest.answer(guest.deal()["images"][0]).status == 200
    finally:
        stop(process)
