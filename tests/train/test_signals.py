"""A real `canopy train` process: SIGTERM saves and exits; kill -9 never breaks the checkpoint."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

from canopy.train import checkpoint
from canopy.train.loop import train

from .conftest import tiny_params


def _params(tiles, out, steps=100_000):
    return tiny_params(tiles, out, steps=steps, checkpoint_every=3, log_every=1,
                       preview_images=0, num_workers=2)


def _params_file(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    return path


def _start(params):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "canopy.cli", "train", "--params", str(params), "-q"]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_step(state_root, at_least, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        dirs = checkpoint.state_dirs(state_root)
        if dirs and int(dirs[0].name.split("-")[1]) >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


@pytest.mark.slow
def test_sigterm_saves_then_exits(tiles, tmp_path):
    out = tmp_path / "models"
    proc = _start(_params_file(tmp_path, _params(tiles, out)))
    _wait_for_step(out / "state", 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "SIGTERM" in proc.stderr.read()
    step = int(checkpoint.state_dirs(out / "state")[0].name.split("-")[1])
    assert step >= 3 and (out / "ema.safetensors").is_file()


@pytest.mark.slow
def test_kill_9_never_corrupts_the_last_checkpoint(tiles, tmp_path):
    out = tmp_path / "models"
    params_file = _params_file(tmp_path, _params(tiles, out))
    rng = random.Random(0)
    for _ in range(3):
        proc = _start(params_file)
        _wait_for_step(out / "state", 3, proc)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in a step or a checkpoint write
        proc.kill()
        proc.wait()
    last = int(checkpoint.state_dirs(out / "state")[0].name.split("-")[1])
    resumed = train(_params(tiles, out, steps=last + 2), quiet=True)
    assert resumed.start >= last
