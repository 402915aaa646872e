"""Fixtures shared by every stage's tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Never let a test reach a real Sentinel Hub service or write the user's sentinelhub config.
os.environ.pop("SH_CLIENT_ID", None)
os.environ.pop("SH_CLIENT_SECRET", None)


@pytest.fixture
def shared_data() -> Path:
    """The team's real forest rasters (../shared/data); tests skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (it is not part of a user's clone)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Tiny shapes gain nothing from 2 threads, and one thread does not spin-wait (OpenMP
    barriers) when other processes hold the cores: steadier test times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def output_locked_by_another_process(target: Path, command: str):
    """Another process holding `target`'s output lock for the block (locks of this process's
    own are not refused: POSIX record locks are per process). Yields that process."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from canopy.fsutil import output_lock\n"
        f"with output_lock({str(target)!r}, {command!r}):\n"
        "    print('held', flush=True); time.sleep(120)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=10)
