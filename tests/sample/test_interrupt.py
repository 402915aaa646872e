"""SIGINT during `canopy sample` stops it, even when SIGINT was inherited ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.sample.conftest import write_checkpoint, write_params


@pytest.mark.slow
def test_sigint_inherited_ignored_still_stops_and_keeps_previous_output(tmp_path):
    write_checkpoint(tmp_path / "models")
    out = tmp_path / "samples"

    def sample(n: int) -> subprocess.Popen:
        params = write_params(tmp_path, n=n)
        return subprocess.Popen(
            [sys.executable, "-m", "canopy.cli", "sample", "-q", "-p", str(params)],
            cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            # as a background job of a script starts: Python keeps an inherited SIG_IGN
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )

    assert sample(4).wait(timeout=120) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    process = sample(100_000)  # minutes of sampling
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".samples.staging-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".samples.staging-*"))
