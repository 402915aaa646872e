"""SIGTERM or Ctrl-C during `canopy etl` leaves the previous output and no staging folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO_ROOT


def _inherit_sigint(handler):
    """Start the child with SIGINT set to `handler`, however pytest itself was started.

    SIG_DFL is what a terminal's Ctrl-C meets; a background job of a script inherits SIGINT
    ignored (SIG_IGN), which Python keeps: etl must install its own handler and stop anyway.
    """
    return lambda: signal.signal(signal.SIGINT, handler)


@pytest.mark.slow
@pytest.mark.parametrize("signum, inherited", [
    (signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.SIG_DFL), (signal.SIGINT, signal.SIG_IGN),
], ids=["sigterm", "sigint", "sigint-inherited-ignored"])
def test_signal_mid_run_keeps_previous_output(tmp_path, signum, inherited):
    params = tmp_path / "params.yaml"
    out = tmp_path / "tiles"

    def etl(scenes: int) -> subprocess.Popen:
        settings = {"etl": {"source": "synthetic", "tile_size": 32, "stride": 32,
                            "min_vegetation_fraction": 0,
                            "synthetic": {"scenes": scenes, "width": 512, "height": 512}}}
        params.write_text(yaml.safe_dump(settings))
        return subprocess.Popen([sys.executable, "-m", "canopy.cli", "etl", "-q", "-p", str(params),
                                 "--tiles", str(out)], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_inherit_sigint(inherited))

    assert etl(1).wait(timeout=120) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    process = etl(40)  # synthetic scenes are drawn first, then tiled for several seconds
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".tiles.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".tiles.staging-*"))
