"""Every evaluate metric against the sample count, for real-vs-real and for obvious fakes.

    python bench/bench_metrics.py --tiles data/tiles                    # 64 and 256 images
    python bench/bench_metrics.py --tiles /tmp/neon --sizes 64 256 1000 --device cuda
    python bench/bench_metrics.py --images tiles.npz ...                # a uint8 (N, H, W, 3) array
    python bench/bench_metrics.py --tiles /tmp/neon --swd-only --sizes 64 256 1000 --draws 3 \
        --replicates 30                                                 # SWD alone, fresh draws

For each seeded draw, the real tiles (train and val together) are permuted once and cut into
three disjoint parts; for each count n the first n tiles of each part are the reference R (in
the val tiles' place), the floor set F (in the train tiles' place) and a "samples" set A. Then
A itself (real vs real: it must score at the floor), and blurred (sigma 1), noised (std 8) and
patch-shuffled (4 x 4) copies of A, are scored against R as `canopy evaluate` scores samples,
each with its bootstrap interval; F against R is the floor. The sets for a smaller n are the
start of those for a larger one, so Inception features are computed once per image. Prints one
table row per (n, set) and appends every figure as JSON (--out) after each n.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from canopy.evaluate import bootstrap  # noqa: E402
from canopy.evaluate import c2st as c2st_mod  # noqa: E402
from canopy.evaluate import fid as fid_mod  # noqa: E402
from canopy.evaluate import linear_c2st as lin  # noqa: E402
from canopy.evaluate import precision_recall as pr  # noqa: E402
from canopy.evaluate import swd as swd_mod  # noqa: E402
from tests.evaluate.fakes import FAKES  # noqa: E402


def load_images(args) -> np.ndarray:
    if args.images:
        return np.load(args.images)["images"]
    from canopy import tiles
    from canopy.evaluate import images as images_io

    folder = Path(args.tiles)
    size = tiles.read_manifest(folder, point_at="--tiles")["tile_size"]
    refs = [ref for split in ("train", "val") for ref in images_io.tiles_by_key(folder, split)]
    return images_io.stack(tiles.read_tiles(refs, size), len(refs), size)


def feature_extractor(args):
    from canopy.evaluate import inception

    weights, why = inception.locate_weights(args.weights)
    if weights is None:
        sys.exit(f"no Inception weights: {why}")
    return inception.InceptionFeatures(weights, args.device, 64)


def interval(values, estimate: float) -> list[float]:
    found = bootstrap.centred_interval(values, estimate)
    return [round(found.low, 4), round(found.high, 4)]


def score(sets: dict[str, np.ndarray], feats: dict[str, np.ndarray], args, seed: int) -> dict:
    """Every metric of each set but R against R, F's row being the floor."""
    names = [name for name in sets if name != "R"]
    n = len(sets["R"])
    draws = bootstrap.draws(np.random.default_rng(seed), {"real": n, **{
        f"fake{i}": len(sets[name]) for i, name in enumerate(names)}}, args.replicates)
    out = {name: {} for name in names}
    start = time.perf_counter()
    swd = swd_mod.swd([sets[name] for name in names], sets["R"], swd_mod.SwdConfig(), seed,
                      resamples=draws)
    floor_reps = swd.replicates[names.index("F")]
    for i, name in enumerate(names):
        value = swd_mod.mean_over_levels(swd.per_level[i])
        ratio = value / swd_mod.mean_over_levels(swd.per_level[names.index("F")])
        out[name]["swd"] = [round(value, 2), *interval(swd.replicates[i], value)]
        out[name]["swd_ratio_to_floor"] = [round(ratio, 3),
                                           *interval(swd.replicates[i] / floor_reps, ratio)]
    timing = {"swd": time.perf_counter() - start}

    start = time.perf_counter()
    ref = feats["R"]
    for i, name in enumerate(names):
        f, role = feats[name], f"fake{i}"
        value = fid_mod.fid(f, ref)
        out[name]["fid"] = [round(value, 3), *interval(
            fid_mod.fid_replicates(f, ref, [(d[role], d["real"]) for d in draws]), value)]
        out[name]["fid_inf"] = round(fid_mod.fid_infinity(f, ref, np.random.default_rng(seed)), 3)
        pair = fid_mod.KernelPair(f, ref)
        value = pair.mmd2(np.arange(len(f)), np.arange(n))
        out[name]["kid_x1e3"] = [round(1e3 * value, 4), *[1e3 * v for v in interval(
            [pair.mmd2(d[role], d["real"]) for d in draws], value)]]
        result = pr.precision_recall(f, ref)
        rng = np.random.default_rng(seed)
        out[name]["precision"] = [round(result.precision, 3), *bootstrap_mean(
            result.generated_inside, rng, args.replicates)]
        out[name]["recall"] = [round(result.recall, 3), *bootstrap_mean(
            result.real_inside, rng, args.replicates)]
        linear = lin.linear_c2st(f, ref, lin.LinearC2stConfig(), seed)
        out[name]["c2st_features"] = [round(linear.accuracy, 3), *bootstrap_mean(
            linear.correct, rng, args.replicates)]
    timing["features metrics"] = time.perf_counter() - start

    if args.pixel_c2st:
        start = time.perf_counter()
        config = c2st_mod.C2stConfig(steps=args.c2st_steps)
        for name in names:
            result = c2st_mod.c2st(sets[name], sets["R"], config, seed)
            out[name]["c2st_pixels"] = [round(result.accuracy, 3), *bootstrap_mean(
                result.correct, np.random.default_rng(seed), args.replicates)]
        timing["pixel c2st"] = time.perf_counter() - start
    return {"sets": out, "seconds": {k: round(v, 1) for k, v in timing.items()}}


def bootstrap_mean(outcomes, rng, replicates) -> list[float]:
    found = bootstrap.mean_interval(outcomes, rng, replicates)
    return [round(found.low, 3), round(found.high, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", help="an etl output folder (train and val are pooled)")
    parser.add_argument("--images", help="or an .npz holding `images`, uint8 (N, H, W, 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--draws", type=int, default=1, help="seeded draws of the sets per n")
    parser.add_argument("--replicates", type=int, default=50, help="bootstrap resamples")
    parser.add_argument("--device", default="cpu", help="for Inception: cpu, cuda, mps")
    parser.add_argument("--weights", default=None, help="Inception TorchScript file")
    parser.add_argument("--no-pixel-c2st", dest="pixel_c2st", action="store_false")
    parser.add_argument("--c2st-steps", type=int, default=150)
    parser.add_argument("--out", default=None, help="write every figure here as JSON")
    parser.add_argument("--swd-only", action="store_true",
                        help="SWD alone (no Inception): fresh sets for each n and draw")
    args = parser.parse_args()

    pool = load_images(args)
    print(f"{len(pool)} real tiles of {pool.shape[1]} px; load average {os.getloadavg()}",
          flush=True)
    if args.swd_only:
        swd_sweep(pool, args)
        return
    extractor = feature_extractor(args)
    part = min(max(args.sizes), len(pool) // 3)
    results = []
    for draw in range(args.draws):
        order = np.random.default_rng(draw).permutation(len(pool))
        real_a = pool[order[2 * part:3 * part]]
        parts = {"R": pool[order[:part]], "F": pool[order[part:2 * part]], "real": real_a,
                 **{name: make(real_a) for name, make in FAKES.items()}}
        cache = {name: FeatureCache(images, extractor) for name, images in parts.items()}
        for n in args.sizes:
            if n > part:
                print(f"n={n}: needs {3 * n} tiles, skipped", flush=True)
                continue
            start = time.perf_counter()
            feats = {name: c.first(n) for name, c in cache.items()}
            seconds = time.perf_counter() - start
            sets = {name: images[:n] for name, images in parts.items()}
            row = {"n": n, "draw": draw, **score(sets, feats, args, seed=draw)}
            row["seconds"]["inception"] = round(seconds, 1)
            results.append(row)
            print_row(row)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


def swd_sweep(pool: np.ndarray, args) -> None:
    """SWD ratio to the floor of the real set and of each fake, with its interval: R, F and A
    drawn afresh for each (n, draw), so the rows show how much the floor moves between draws."""
    for n in args.sizes:
        for draw in range(args.draws):
            order = np.random.default_rng([7, n, draw]).permutation(len(pool))
            reference, floor_set, real = (pool[order[i * n:(i + 1) * n]] for i in range(3))
            sets = [floor_set, real] + [make(real) for make in FAKES.values()]
            picks = bootstrap.draws(np.random.default_rng(draw), {
                "real": n, **{f"fake{i}": n for i in range(len(sets))}}, args.replicates)
            result = swd_mod.swd(sets, reference, swd_mod.SwdConfig(), seed=draw,
                                 resamples=picks)
            values = [swd_mod.mean_over_levels(r) for r in result.per_level]
            parts = []
            for i, name in enumerate(["real", *FAKES], start=1):
                ratio = values[i] / values[0]
                found = bootstrap.centred_interval(result.replicates[i] / result.replicates[0],
                                                   ratio)
                parts.append(f"{name} {ratio:.2f} [{found.low:.2f}, {found.high:.2f}]")
            print(f"n={n} draw {draw} floor {values[0]:.1f}; " + "; ".join(parts), flush=True)


class FeatureCache:
    """Inception features of the first k images of a set, computed once per image."""

    def __init__(self, images: np.ndarray, extractor):
        self.images, self.extractor = images, extractor
        self.features = np.empty((0, 2048))

    def first(self, k: int) -> np.ndarray:
        done = len(self.features)
        if k > done:
            self.features = np.concatenate([self.features,
                                            self.extractor(self.images[done:k])])
        return self.features[:k]


def print_row(row: dict) -> None:
    print(f"n={row['n']} draw {row['draw']} seconds {row['seconds']}", flush=True)
    for name, figures in row["sets"].items():
        parts = []
        for key, value in figures.items():
            if isinstance(value, list):
                parts.append(f"{key} {value[0]:g} [{value[1]:g}, {value[2]:g}]")
            else:
                parts.append(f"{key} {value:g}")
        print(f"  {name:<14} " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
