"""The benchmark helpers live in bench/ (scripts run from a checkout, not part of the package):
put that folder on the import path, as `python bench/...` does."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def as_on_the_gpu_machine(script: str) -> str:
    """`python -c` source that runs bench/`script` as on the GPU machine: neither pydantic,
    dvc, dvclive, rasterio nor sentinelhub importable, and Canopy not installed (the editable
    install's import hook removed). The script's arguments follow the source."""
    return f"""
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
for name in ("pydantic", "dvc", "dvclive", "rasterio", "sentinelhub"):
    sys.modules[name] = None
sys.argv = ["bench/{script}", *sys.argv[1:]]
runpy.run_path("bench/{script}", run_name="__main__")
"""


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny shapes: one torch thread (see tests/conftest.py)."""
