"""Benchmark the evaluate stage: time per phase and the whole command, on generated tiles.

    python bench/bench_evaluate.py                      # 64 samples vs 64 val, 256 train, 128 px
    python bench/bench_evaluate.py --samples 256 --val 256 --train 2000

Writes forest-like synthetic tiles and samples (tests/evaluate/synthetic.py) to a temporary
folder, times each phase in this process (reading, near-copy search, SWD, Inception features,
FID + KID math), then the whole `canopy evaluate` command with FID/KID off and on (interpreter
start-up included). Torch on a shared 2-core machine slows down many times while another
process holds a core: report the load average with the numbers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from canopy.evaluate import fid as fid_mod  # noqa: E402
from canopy.evaluate import inception  # noqa: E402
from canopy.evaluate import memorisation as mem  # noqa: E402
from canopy.evaluate import swd as swd_mod  # noqa: E402
from tests.evaluate.synthetic import degrade, forest_images, write_samples, write_tiles  # noqa: E402


def timed(label: str, fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    print(f"  {label:<38} {time.perf_counter() - start:7.2f} s", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    print(f"load average before: {os.getloadavg()}")
    samples = degrade(forest_images(args.samples, args.size, seed=1), blur=0.8)
    val = forest_images(args.val, args.size, seed=2)
    train = forest_images(args.train, args.size, seed=3)
    floor = train[: args.samples]
    print(f"{args.samples} samples vs {args.val} val tiles, {args.train} train tiles, "
          f"{args.size} px:")

    queries = mem.query_features(samples, 32, True)
    timed(f"near-copy search ({args.train} train, x8)", mem.nearest_distances, queries,
          [mem.downscale(train, 32)])
    timed("SWD (samples and floor vs val)", swd_mod.swd, [samples, floor], val)  # .per_level
    weights, why = inception.locate_weights(None)
    if weights is None:
        print(f"  Inception: skipped ({why})")
    else:
        extractor = inception.InceptionFeatures(weights, "cpu", 16)
        n = args.samples + args.val + len(floor)
        feats = timed(f"Inception features ({n} images)", lambda: [extractor(x) for x in
                                                                  (samples, val, floor)])
        rng = np.random.default_rng(0)
        timed("FID + KID x2 (math only)", lambda: [
            (fid_mod.fid(f, feats[1]), fid_mod.kid(f, feats[1], rng))
            for f in (feats[0], feats[2])])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tiles(root / "tiles", train, val)
        write_samples(root / "samples", samples)
        for fid in (False, True):
            (root / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"fid": fid}}))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "canopy.cli", "evaluate", "-q", "--params",
                            str(root / "params.yaml"), "--samples", str(root / "samples"),
                            "--tiles", str(root / "tiles"), "--metrics", str(root / "metrics")],
                           check=True, cwd=REPO)
            print(f"  whole command, fid {str(fid).lower():<5}               "
                  f"{time.perf_counter() - start:7.2f} s", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
