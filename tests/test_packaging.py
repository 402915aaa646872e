"""The installed distribution: one import root (`canopy`), nothing else in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True,
                                capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the wheel is built from the tracked files")
    return [name for name in listed.decode().split("\0") if name]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the tracked files (with DVC outputs such as models/
    planted in it: they must not be packaged even when they hold .py files)."""
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    for output in ("models", "data", "metrics"):
        (source / output).mkdir(exist_ok=True)
        (source / output / "__init__.py").write_text("")
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(dist), str(source)], check=True)
    (built,) = dist.glob("*.whl")
    return zipfile.ZipFile(built)


def test_wheel_installs_one_import_root(wheel):
    top_level = {name.split("/")[0] for name in wheel.namelist()}
    code = {name for name in top_level if not name.endswith((".dist-info", ".data"))}
    assert code == {"canopy"}


def test_wheel_holds_every_stage_under_the_root(wheel):
    packages = {str(Path(name).parent) for name in wheel.namelist()
                if name.endswith("/__init__.py")}
    assert {"canopy", "canopy/etl", "canopy/etl/sources", "canopy/model", "canopy/train",
            "canopy/sample", "canopy/evaluate", "canopy/judge"} <= packages
    assert {f"canopy/judge/static/{name}" for name in ("index.html", "app.js", "style.css")} \
        <= set(wheel.namelist())
    assert not any(part in ("tests", "bench", "models", "data")
                   for name in wheel.namelist() for part in Path(name).parts)


def test_distribution_name_and_command(wheel):
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    assert "\nName: canopy-forest\n" in wheel.read(metadata).decode()
    (entry_points,) = [name for name in wheel.namelist()
                       if name.endswith(".dist-info/entry_points.txt")]
    assert "canopy = canopy.cli:main" in wheel.read(entry_points).decode()
