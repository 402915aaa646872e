"""How far augmentation alone moves the training set from the val tiles (issue 20, item 1).

    python bench/bench_augment.py data/tiles [--n 400] [--repeats 6]

For each `train.augment` choice (none, transpose, all), `--repeats` times: n train tiles drawn
at random (seeded by the repeat), each put through a symmetry drawn as training draws it
(train/data.py), then SWD (evaluate/swd.py, the mean over levels, x1e3) against the val tiles.
A perfectly trained model reproduces its augmented training set, so the SWD of that set is a
floor the augmentation itself puts under the model's. Prints mean +- std per choice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from canopy import tiles  # noqa: E402
from canopy.evaluate import swd as swd_mod  # noqa: E402
from canopy.train.data import TRANSPOSE, dihedral  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tiles", type=Path)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    manifest = tiles.read_manifest(args.tiles, "the tiles argument")
    size = manifest["tile_size"]
    train = np.stack(list(tiles.read_tiles(tiles.list_tiles(args.tiles, "train", size), size)))
    val = np.stack(list(tiles.read_tiles(tiles.list_tiles(args.tiles, "val", size), size)))
    print(f"{len(train)} train, {len(val)} val tiles of {size} px; {args.n} drawn x {args.repeats}")
    draws = {"none": lambda rng, n: np.zeros(n, dtype=np.int64),
             "transpose": lambda rng, n: TRANSPOSE * rng.integers(0, 2, n),
             "all": lambda rng, n: rng.integers(0, 8, n)}
    for name, draw in draws.items():
        scores = []
        for r in range(args.repeats):
            rng = np.random.default_rng(1000 + r)
            ids = rng.choice(len(train), size=min(args.n, len(train)), replace=False)
            ks = draw(rng, len(ids))
            subset = np.stack([dihedral(train[i], int(k)) for i, k in zip(ids, ks)])
            (per_level,) = swd_mod.swd([subset], val, seed=r).per_level
            scores.append(swd_mod.mean_over_levels(per_level))
        print(f"{name:<10} SWD {np.mean(scores):6.1f} +- {np.std(scores, ddof=1):4.1f}  "
              f"({', '.join(f'{s:.1f}' for s in scores)})", flush=True)


if __name__ == "__main__":
    main()
