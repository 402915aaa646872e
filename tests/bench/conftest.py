"""The benchmark helpers live in bench/ (scripts run from a checkout, not part of the package):
put that folder on the import path, as `python bench/...` does."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny shapes: one torch thread (see tests/conftest.py)."""
