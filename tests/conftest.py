"""Fixtures shared by every stage's tests."""

from __future__ import annotations

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
