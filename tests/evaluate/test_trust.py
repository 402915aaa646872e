"""Metrics you can trust: real tiles score at their floor, obvious fakes are caught, every figure
has a seeded interval, and too few images are said so.

The images are the synthetic etl source's scenes cut into tiles (and, in the slow tests, the
team's NEON orthophotos when ../shared/data is there); the fakes are blurred, noised and
patch-shuffled copies of real tiles (tests/evaluate/fakes.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from canopy.etl.sources.synthetic import render_forest
from canopy.evaluate import bootstrap
from canopy.evaluate import fid as F
from canopy.evaluate import swd as S
from canopy.evaluate.c2st import C2stConfig, c2st
from canopy.evaluate.linear_c2st import LinearC2stConfig, linear_c2st
from canopy.evaluate.precision_recall import knn_radii, precision_recall
from tests.evaluate.fakes import FAKES, blurred, noised, patch_shuffled

SWD_FAST = S.SwdConfig(patches_per_image=32, projections=64, repeats=2)


def synthetic_tiles(scenes: int, size: int = 512, tile: int = 64, seed: int = 0) -> np.ndarray:
    """Tiles of the synthetic demo scenes (the etl's renderer), shuffled by a seeded draw."""
    out = []
    for scene in range(scenes):
        image = render_forest(np.random.default_rng([seed, scene]), size, size)
        for row in range(0, size - tile + 1, tile):
            for col in range(0, size - tile + 1, tile):
                out.append(image[row:row + tile, col:col + tile])
    tiles = np.stack(out)
    return tiles[np.random.default_rng(seed).permutation(len(tiles))]


@pytest.fixture(scope="module")
def parts():
    """Three disjoint sets of 48 real tiles: reference, floor set, and a real 'samples' set."""
    tiles = synthetic_tiles(3)  # 192 tiles of 64 px
    return tiles[:48], tiles[48:96], tiles[96:144]


def swd_ratio_interval(fake, floor_set, reference, seed=0, replicates=40):
    draws = bootstrap.draws(np.random.default_rng(seed),
                            {"real": len(reference), "fake0": len(fake),
                             "fake1": len(floor_set)}, replicates)
    result = S.swd([fake, floor_set], reference, SWD_FAST, seed, resamples=draws)
    value = S.mean_over_levels(result.per_level[0]) / S.mean_over_levels(result.per_level[1])
    return value, bootstrap.centred_interval(result.replicates[0] / result.replicates[1], value)


def test_a_disjoint_real_set_scores_at_the_swd_floor_and_a_blurred_copy_does_not(parts):
    reference, floor_set, real = parts
    ratio, interval = swd_ratio_interval(real, floor_set, reference)
    assert interval.contains(1.0), (ratio, interval)
    ratio, interval = swd_ratio_interval(blurred(real), floor_set, reference)
    assert interval.low > 1.0, (ratio, interval)  # its interval excludes the floor


def test_swd_bootstrap_replicates_are_seeded_and_spread_around_the_estimate(parts):
    reference, floor_set, _ = parts
    first = swd_ratio_interval(floor_set, floor_set, reference, seed=1, replicates=20)
    assert first == swd_ratio_interval(floor_set, floor_set, reference, seed=1, replicates=20)
    assert first != swd_ratio_interval(floor_set, floor_set, reference, seed=2, replicates=20)
    assert first[1].low < first[0] < first[1].high


def test_the_fakes_change_the_pixels_but_keep_the_shape(parts):
    real = parts[2][:4]
    for make in FAKES.values():
        fake = make(real)
        assert fake.shape == real.shape and fake.dtype == np.uint8
        assert np.abs(fake.astype(int) - real).mean() > 1.0
    shuffled = patch_shuffled(real)  # the same pixels, moved
    assert sorted(shuffled[0].reshape(-1, 3).tolist()) == sorted(real[0].reshape(-1, 3).tolist())
    grey = np.full((2, 32, 32, 3), 128, dtype=np.uint8)  # no clipping at 0 or 255
    assert (noised(grey).astype(int) - grey).std() == pytest.approx(8, rel=0.05)


def gaussian_sets(n=120, d=32, shift=0.0, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(shift, scale, size=(n, d))


def test_linear_c2st_is_near_one_half_for_one_distribution_and_near_one_for_two():
    a, b = gaussian_sets(seed=1)
    same = linear_c2st(a, b, LinearC2stConfig(), seed=0)
    interval = bootstrap.mean_interval(same.correct, np.random.default_rng(0), 200)
    assert interval.contains(0.5) and same.n == 120 and len(same.correct) == 240
    a, b = gaussian_sets(shift=0.5, seed=2)
    assert linear_c2st(a, b, LinearC2stConfig(), seed=0).accuracy >= 0.9
    assert linear_c2st(a, b, LinearC2stConfig(), seed=0).accuracy == \
        linear_c2st(a, b, LinearC2stConfig(), seed=0).accuracy


def test_precision_and_recall_tell_realism_from_coverage():
    real, same = gaussian_sets(n=300, d=8, seed=3)
    both = precision_recall(same, real)
    assert both.precision > 0.8 and both.recall > 0.8
    real, narrow = gaussian_sets(n=300, d=8, scale=0.3, seed=4)  # realistic, covers little
    narrow_pr = precision_recall(narrow, real)
    assert narrow_pr.precision > 0.95 and narrow_pr.recall < 0.5
    real, off = gaussian_sets(n=300, d=8, shift=3.0, seed=5)  # unrealistic
    assert precision_recall(off, real).precision < 0.2


def test_knn_radius_is_the_distance_to_the_kth_other_vector():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 4.0, 9.0, 16.0]  # squared
    assert knn_radii(points, k=3)[0] == 36.0
    with pytest.raises(ValueError, match="more than 3 vectors"):
        knn_radii(points[:3], k=3)


def test_centred_interval_keeps_the_spread_and_moves_it_onto_the_estimate():
    replicates = np.arange(101.0)  # median 50, 2.5th/97.5th percentiles 2.5 and 97.5
    interval = bootstrap.centred_interval(replicates, 10.0)
    assert (interval.low, interval.high) == pytest.approx((-37.5, 57.5))
    assert np.isnan(bootstrap.centred_interval(np.array([np.nan]), 1.0).low)


def test_kid_bootstrap_leaves_out_pairs_of_one_image_with_itself():
    a, b = gaussian_sets(n=40, d=16, seed=6)
    pair = F.KernelPair(a, b)
    rows = np.arange(40)
    assert pair.mmd2(rows, rows) == pytest.approx(F.mmd2_unbiased(a, b), rel=1e-12)
    rng = np.random.default_rng(0)
    values = [pair.mmd2(rng.integers(0, 40, 40), rng.integers(0, 40, 40)) for _ in range(300)]
    # Duplicated images would add their self-similarity: the resampled mean would jump up.
    assert abs(np.mean(values) - pair.mmd2(rows, rows)) < 3 * np.std(values) / np.sqrt(300) + 1e-3


def test_fid_extrapolated_to_infinity_is_less_biased_than_fid_at_small_n():
    rng = np.random.default_rng(7)
    d = 16
    reference = rng.normal(size=(4000, d))
    small = rng.normal(0.3, 1.0, size=(60, d))  # true FID = d * 0.09 = 1.44
    truth = d * 0.09
    plain = F.fid(small, reference)
    extrapolated = F.fid_infinity(small, reference, np.random.default_rng(0))
    assert plain > truth + 0.1  # the small-n bias upwards
    assert abs(extrapolated - truth) < abs(plain - truth)


def test_pixel_c2st_takes_the_same_number_of_steps_for_any_image_count():
    images = synthetic_tiles(1, size=256, tile=32)  # 64 tiles
    counts = []
    for n in (8, 32):
        steps = []
        c2st(images[:n], images[n:2 * n], C2stConfig(folds=2, steps=3), seed=0, tick=steps.append)
        counts.append(len(steps))
    assert counts == [6, 6]  # folds x steps, whatever n


def features_or_skip():
    from canopy.evaluate import inception

    weights, why = inception.locate_weights(None)
    if weights is None:
        pytest.skip(f"no local Inception weights: {why}")
    return inception.InceptionFeatures(weights, "cpu", batch_size=32)


def check_real_at_floor_and_fakes_caught(reference, floor_set, real, subtle=()):
    """The targets: real-vs-real at the floor (C2ST within 0.5 +- its interval, precision within
    the floor's interval); each fake: feature C2ST >= 0.9, precision clearly below the floor.
    A `subtle` fake need only be told apart: its C2ST interval above 0.5."""
    extract = features_or_skip()
    f_ref, f_floor = extract(reference), extract(floor_set)
    floor_pr = precision_recall(f_floor, f_ref)
    floor_interval = bootstrap.mean_interval(floor_pr.generated_inside,
                                             np.random.default_rng(0), 200)
    real_f = extract(real)
    same = linear_c2st(real_f, f_ref, LinearC2stConfig(), seed=0)
    assert bootstrap.mean_interval(same.correct, np.random.default_rng(0), 200).contains(0.5)
    assert floor_interval.contains(precision_recall(real_f, f_ref).precision)
    for name, make in FAKES.items():
        fake_f = extract(make(real))
        linear = linear_c2st(fake_f, f_ref, LinearC2stConfig(), seed=0)
        accuracy = linear.accuracy
        if name in subtle:
            interval = bootstrap.mean_interval(linear.correct, np.random.default_rng(0), 200)
            assert interval.low > 0.5, (name, accuracy, interval)
            continue
        precision = precision_recall(fake_f, f_ref).precision
        assert accuracy >= 0.9, (name, accuracy)
        assert precision < floor_interval.low - 0.1, (name, precision, floor_interval)


@pytest.mark.slow  # Inception on about 300 images: a few minutes on 2 CPU cores
def test_synthetic_tiles_real_at_floor_and_fakes_caught(parts):
    check_real_at_floor_and_fakes_caught(*parts)


@pytest.mark.slow
def test_neon_tiles_real_at_floor_and_fakes_caught(shared_data):
    from PIL import Image

    files = sorted((shared_data / "NEON").glob("*/*.tif"))
    if not files:
        pytest.skip("no NEON orthophotos in ../shared/data/NEON")
    tiles = []
    for path in files[::3]:  # about 30 plots of 400 px, 36 tiles of 64 px each
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        tiles += [image[r:r + 64, c:c + 64] for r in range(0, h - 63, 64)
                  for c in range(0, w - 63, 64)]
    tiles = np.stack(tiles)[np.random.default_rng(0).permutation(len(tiles))]
    # Noise of std 8 on these orthophotos, which carry sensor noise of their own, is subtle at
    # 64 images: feature C2ST 0.80 and precision at the floor (docs/benchmarks.md).
    check_real_at_floor_and_fakes_caught(tiles[:64], tiles[64:128], tiles[128:192],
                                         subtle=("noise 8",))
