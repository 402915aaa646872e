"""Bad input: one clear line on stderr, exit code 2, no partial output, old output kept."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from canopy.cli import app
from tests.etl.rasters import forest_rgb, write_raster

AOI = {"name": "a", "bbox": [10.0, 50.0, 10.1, 50.1], "time": ["2024-06-01", "2024-06-30"]}


def run_etl_cli(tmp_path, etl: dict, *extra):
    params = {"model": {"dim_mults": [1, 2]}, "etl": {"tile_size": 16, "stride": 16, **etl}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return CliRunner().invoke(app, ["etl", "-q", "--params", str(tmp_path / "params.yaml"),
                                    "--tiles", str(tmp_path / "out"), *extra])


def local(paths, **settings):
    return {"source": "local", "local": {"paths": paths, **settings}}


def not_a_raster(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are field notes, not an image\n")
    return local([str(path)])


def truncated_tiff(tmp_path):
    path = write_raster(tmp_path / "cut.tif", forest_rgb(64, 64), compress="deflate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return local([str(path)])


def tiny_raster(tmp_path):
    return local([str(write_raster(tmp_path / "tiny.tif", forest_rgb(8, 40)))])


def small_once_resampled(tmp_path):
    """24 px at 10 m is 12 px at 20 m: smaller than a tile only after resampling."""
    path = write_raster(tmp_path / "plot.tif", forest_rgb(24, 24))
    return local([str(path)], target_gsd=20.0)


def single_band(tmp_path):
    return local([str(write_raster(tmp_path / "pan.tif", forest_rgb(16, 16)[:1]))])


def band_out_of_range(tmp_path):
    return local([str(write_raster(tmp_path / "rgb.tif", forest_rgb(16, 16)))], bands=[1, 2, 5])


def no_vegetation(tmp_path):
    grey = np.full((3, 32, 32), 128, dtype=np.uint8)
    return local([str(write_raster(tmp_path / "grey.tif", grey))])


def _link_loop(tmp_path):
    (tmp_path / "loop.tif").symlink_to(tmp_path / "loop.tif")
    return tmp_path / "loop.tif"


def _fifo(tmp_path):
    """A FIFO: opening it for reading blocks until a writer comes (etl used to hang there)."""
    import os

    os.mkfifo(tmp_path / "band.tif")
    return tmp_path / "band.tif"


def all_nodata(tmp_path):
    blank = np.zeros((3, 32, 32), dtype=np.uint8)
    return local([str(write_raster(tmp_path / "blank.tif", blank, nodata=0))], scale="none")


CASES = {
    "missing path": (lambda t: local([str(t / "nope.tif")]), "nope.tif: no such file"),
    "a folder as a path": (lambda t: local([str(t)]), ": a folder, not a file"),
    "a symbolic link loop": (lambda t: local([str(_link_loop(t))]), "loop.tif: a symbolic link loop"),
    "empty glob": (lambda t: local([str(t / "*.tif")]), "matches no file"),
    "not a raster": (not_a_raster, "not a readable raster"),
    "truncated tiff": (truncated_tiff, "truncated or corrupt"),
    "raster smaller than a tile": (tiny_raster, "smaller than one 16x16 tile"),
    "raster smaller than a tile once resampled": (
        small_once_resampled, "plot.tif is 12x12 pixels at etl.local.target_gsd 20 m"),
    "single band for rgb": (single_band, "has a single band"),
    "band out of range": (band_out_of_range, "band 5 is out of range"),
    "no vegetation survives": (no_vegetation, "min_vegetation_fraction"),
    "all nodata": (all_nodata, "min_valid_fraction"),
    "swapped bbox": (lambda t: {"source": "sentinelhub", "sentinelhub": {
        "aois": [{**AOI, "bbox": [10.1, 50.0, 10.0, 50.1]}]}}, "swapped"),
    "latitude out of range": (lambda t: {"source": "sentinelhub", "sentinelhub": {
        "aois": [{**AOI, "bbox": [10.0, 50.0, 10.1, 95.0]}]}}, "outside [-90, 90]"),
    "reversed time": (lambda t: {"source": "sentinelhub", "sentinelhub": {
        "aois": [{**AOI, "time": ["2024-06-30", "2024-06-01"]}]}}, "reversed"),
    "unknown source": (lambda t: {"source": "landsat"}, "'sentinelhub', 'stac', 'local' or 'synthetic'"),
    "typo in a key": (lambda t: {"min_valid_fractoin": 0.5}, "did you mean 'min_valid_fraction'"),
    "local without paths": (lambda t: {"source": "local"}, "etl.local.paths is empty"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, case):
    make_etl, expected = CASES[case]
    result = run_etl_cli(tmp_path, make_etl(tmp_path))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("canopy etl: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_bad_input_leaves_previous_output_untouched(tmp_path):
    good = write_raster(tmp_path / "good.tif", forest_rgb(32, 32))
    assert run_etl_cli(tmp_path, local([str(good)])).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    make_etl, _ = CASES["truncated tiff"]
    assert run_etl_cli(tmp_path, make_etl(tmp_path)).exit_code == 2
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before


def test_missing_params_file_says_what_to_do(tmp_path):
    result = CliRunner().invoke(app, ["etl", "--params", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "not found: run from the repository root or pass --params PATH" in result.stderr


def test_source_option_is_validated(tmp_path):
    result = run_etl_cli(tmp_path, {}, "--source", "modis")
    assert result.exit_code == 2
    assert "etl.source" in result.stderr


def test_a_full_disk_is_one_line_naming_the_folder_and_the_old_output_is_kept(tmp_path,
                                                                              monkeypatch):
    import errno

    from canopy import tiles

    synthetic = {"source": "synthetic", "synthetic": {"scenes": 1, "width": 32, "height": 32},
                 "min_vegetation_fraction": 0}
    assert run_etl_cli(tmp_path, synthetic).exit_code == 0
    before = (tmp_path / "out" / "manifest.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a plain write() raises it

    monkeypatch.setattr(tiles, "_add_member", full)
    result = run_etl_cli(tmp_path, synthetic)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("canopy etl: error: ")
    assert f"{tmp_path} is full (No space left on device)" in lines[0] and "free" in lines[0]
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "params.yaml"]


def _on_a_small_filesystem(tmp_path, size: str, command: list[str]):
    """Run `command` with a tmpfs of `size` mounted at tmp_path/small (in a user and mount
    namespace, so no root is needed); skip where the system does not allow it."""
    import shutil
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    unshare = shutil.which("unshare")
    probe = [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs {small}"]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (unshare -rm and mount are needed)")
    script = f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run([unshare, "-rm", "sh", "-c", script, "sh", str(small), *command],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_a_full_disk_while_gdal_writes_a_scene_is_one_line_and_exit_2(tmp_path):
    """The synthetic source's scene GeoTIFF, written by GDAL in the staging folder, on a
    real filesystem that fills up: GDAL's "Write error" used to be a 57-line traceback."""
    import sys

    params = {"etl": {"source": "synthetic", "synthetic": {"scenes": 1, "width": 1024,
                                                           "height": 1024}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    small = tmp_path / "small"
    done = _on_a_small_filesystem(tmp_path, "200k", [
        sys.executable, "-m", "canopy.cli", "etl", "-q", "--params",
        str(tmp_path / "params.yaml"), "--tiles", str(small / "tiles")])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"canopy etl: error: {small} is full (No space left on device)")


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_gdal_write_errors_from_a_full_disk_or_quota_become_that_oserror(tmp_path, code):
    import errno
    import os

    from rasterio.errors import RasterioIOError

    from canopy.etl.scene import raster_write_errors

    number = getattr(errno, code)
    with pytest.raises(OSError) as raised, raster_write_errors(tmp_path / "scene.tif"):
        try:
            raise RuntimeError(f"TIFFAppendToStrip: {os.strerror(number)}")
        except RuntimeError as cause:
            raise RasterioIOError("Write failed. See previous exception for details.") from cause
    assert raised.value.errno == number and raised.value.filename == str(tmp_path / "scene.tif")
    with pytest.raises(RasterioIOError), raster_write_errors(tmp_path / "scene.tif"):
        raise RasterioIOError("Write failed: not a disk problem")


@pytest.mark.parametrize("stacked", [False, True], ids=["a file entry", "a stack of band files"])
def test_a_fifo_among_the_inputs_is_refused_not_waited_on(tmp_path, stacked):
    """Opening a FIFO blocks until something writes to it: etl hung there (in a subprocess
    with a timeout here, so that the hang fails the test instead of stalling the suite)."""
    import subprocess
    import sys

    fifo = _fifo(tmp_path)
    entry = [str(write_raster(tmp_path / "b1.tif", forest_rgb(32, 32)[:1])), str(fifo)] \
        if stacked else str(fifo)
    params = {"etl": {"tile_size": 16, "stride": 16, **local([entry])}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "canopy.cli", "etl", "-q", "--params",
                           str(tmp_path / "params.yaml"), "--tiles", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"canopy etl: error: {fifo}: a FIFO (named pipe), not a "
                                   "file; check etl.local.paths") if stacked else \
        done.stderr.strip() == (f"canopy etl: error: etl.local.paths: {fifo}: a FIFO (named "
                                "pipe), not a file")


def test_a_raster_smaller_than_a_tile_among_others_is_left_out_and_named(tmp_path):
    """A partial plot among whole ones has no tile to give, like a scene all nodata: the
    others are tiled, and the left-out raster is named on stderr and in the manifest."""
    import json

    whole = write_raster(tmp_path / "whole.tif", forest_rgb(64, 64))
    partial = write_raster(tmp_path / "partial.tif", forest_rgb(24, 40))  # 12 px tall at 20 m
    result = run_etl_cli(tmp_path, local([str(whole), str(partial)], target_gsd=20.0))
    assert result.exit_code == 0, result.output
    assert ("left out 1 raster(s) smaller than one 16x16 tile: partial.tif (20x12)"
            in result.stderr)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == 4  # whole.tif: 32 px at 20 m
    [skipped] = manifest["filters"]["skipped_scenes"]
    assert skipped["files"] == [str(partial)] and (skipped["width"], skipped["height"]) == (20, 12)
    assert [source["files"] for source in manifest["sources"]] == [[str(whole)]]
