"""Benchmark the etl stage on large generated rasters: tiles/s, peak memory, PNG-encode bound.

    python bench/bench_etl.py                 # 5000^2 and 10000^2 rasters (about 2 minutes)
    python bench/bench_etl.py --sizes 20000   # any sizes

For each size it writes a tiled, deflate-compressed 3-band uint8 GeoTIFF of forest-like
texture (by blocks, so this script stays small), runs `canopy etl` on it in a child process
while sampling the resident memory of the whole process tree, then times the PNG-encode
bound: the same number of tiles, already in memory, encoded by the same worker pool with the
same settings, before and after the etl run (the faster counts). The etl (whole command,
interpreter start-up included) should run within 2x of that bound with a peak RSS that does not
grow with the raster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
import yaml
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]

from canopy.etl.pipeline import TileEncoder
from canopy.etl.sources.synthetic import render_forest
from canopy.etl.tiling import Candidate

TILE = 128
BLOCK = 1024


def write_big_raster(path: Path, size: int) -> None:
    """A size x size x 3 forest mosaic, written block by block (memory stays small)."""
    patches = [render_forest(np.random.default_rng(i), BLOCK, BLOCK) for i in range(4)]
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500000, 6000000, 0.5, 0.5))
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, BLOCK):
            for col in range(0, size, BLOCK):
                patch = patches[(row // BLOCK + 3 * (col // BLOCK)) % 4]
                h, w = min(BLOCK, size - row), min(BLOCK, size - col)
                dst.write(patch[:h, :w].transpose(2, 0, 1), window=Window(col, row, w, h))


def peak_tree_rss(process: subprocess.Popen) -> tuple[float, float]:
    """Sample RSS of the child and all its descendants until it exits: (peak tree, peak main)."""
    peak_tree = peak_main = 0
    parent = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            main = parent.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in parent.children(recursive=True))
        except psutil.Error:
            break
        peak_tree, peak_main = max(peak_tree, tree), max(peak_main, main)
        time.sleep(0.05)
    return peak_tree / 2**20, peak_main / 2**20


def run_etl(raster: Path, workdir: Path) -> tuple[float, int, float, float]:
    params = {"etl": {"source": "local", "min_vegetation_fraction": 0.0,
                      "local": {"paths": [str(raster)]}}}
    params_path = workdir / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out = workdir / "tiles"
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "canopy.cli", "etl", "-q", "-p",
                                str(params_path), "--tiles", str(out)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: list[tuple[float, float]] = []
    sampler = threading.Thread(target=lambda: peaks.append(peak_tree_rss(process)))
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode:
        raise SystemExit(f"etl failed: {stderr}")
    import json

    tiles = sum(json.loads((out / "manifest.json").read_text())["counts"].values())
    return seconds, tiles, *peaks[0]


def encode_bound(raster: Path, tiles: int) -> float:
    """Seconds to PNG-encode `tiles` in-memory tiles with the etl's own pool and settings."""
    with rasterio.open(raster) as src:
        pool_tiles = [src.read(window=Window(c * TILE, r * TILE, TILE, TILE)).transpose(1, 2, 0).copy()
                      for r in range(8) for c in range(8)]
    candidates = (Candidate(0, 0, pool_tiles[i % len(pool_tiles)], 1.0, 1.0) for i in range(tiles))
    start = time.perf_counter()
    with TileEncoder(0) as encoder:
        count = sum(1 for _ in encoder.encode(candidates))
    assert count == tiles
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000])
    args = parser.parse_args()
    print(f"cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'raster':>13} {'tiles':>6} {'etl s':>7} {'etl t/s':>8} {'bound t/s':>9} "
          f"{'ratio':>6} {'peak RSS tree':>14} {'main':>7}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="canopy-bench-") as tmp:
            raster = Path(tmp) / f"forest-{size}.tif"
            write_big_raster(raster, size)
            bound_before = encode_bound(raster, 1000)
            seconds, tiles, tree_mib, main_mib = run_etl(raster, Path(tmp))
            # The bound is timed before and after the etl; the faster is kept (the machine is
            # shared: a slower bound would flatter the ratio).
            bound = min(bound_before * tiles / 1000, encode_bound(raster, tiles))
            print(f"{size:>6}x{size:<6} {tiles:>6} {seconds:>7.1f} {tiles / seconds:>8.0f} "
                  f"{tiles / bound:>9.0f} {seconds / bound:>5.2f}x {tree_mib:>10.0f} MiB "
                  f"{main_mib:>4.0f} MiB")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
