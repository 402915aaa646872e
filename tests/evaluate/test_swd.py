"""Sliced Wasserstein distance on Laplacian-pyramid patches (evaluate/swd.py)."""

from __future__ import annotations

import numpy as np
import pytest

from canopy.evaluate import swd as S
from tests.evaluate.synthetic import degrade, forest_images

FAST = S.SwdConfig(patches_per_image=64, projections=64, repeats=2)


@pytest.fixture(scope="module")
def real():
    return forest_images(32, 32, seed=1)


@pytest.fixture(scope="module")
def other():
    """Different images from the same distribution as `real`."""
    return forest_images(32, 32, seed=2)


@pytest.mark.parametrize("size, expected", [
    (128, [128, 64, 32, 16]), (256, [256, 128, 64, 32, 16]), (16, [16]), (8, [8]),
    (100, [100, 50, 25]), (31, [31, 16]),
])
def test_levels_go_down_to_16_px(size, expected):
    assert S.pyramid_resolutions(size, 16) == expected


def test_pyramid_reconstructs_the_image_exactly():
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    pyramid = S.laplacian_pyramid(images, 3)
    assert [level.shape for level in pyramid] == [(2, 3, 64, 48), (2, 3, 32, 24), (2, 3, 16, 12)]
    rebuilt = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        rebuilt = level + S.pyr_up(rebuilt, level.shape[2:])
    np.testing.assert_allclose(rebuilt, images.transpose(0, 3, 1, 2), atol=1e-3)
    for k in range(3):
        np.testing.assert_array_equal(S.pyramid_level(images, k, 3), pyramid[k])


def test_pyr_down_is_the_binomial_filter_with_mirrored_borders():
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    x[0, 0, 0, 0] = 256.0  # a corner impulse: mirrored, it is counted once (REFLECT_101)
    down = S.pyr_down(x)
    assert down[0, 0, 0, 0] == pytest.approx(36.0)  # 256 * 6/16 * 6/16
    assert down[0, 0, 0, 1] == pytest.approx(6.0)  # 256 * 6/16 * 1/16
    assert S.pyr_down(np.full((1, 1, 8, 8), 7.0, dtype=np.float32)) == pytest.approx(7.0)


def test_patches_lie_inside_the_image_and_have_the_right_shape():
    level = np.arange(2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)
    desc = S.patch_descriptors(level, 7, 10, np.random.default_rng(0))
    assert desc.shape == (20, 3, 7, 7)
    # Each patch is a contiguous window of its own image and channel.
    for k, patch in enumerate(desc):
        image = k // 10
        y0, x0 = divmod(int(patch[0, 0, 0]) - image * 768, 16)
        np.testing.assert_array_equal(patch, level[image, :, y0:y0 + 7, x0:x0 + 7])


def test_wasserstein_1d_with_unequal_counts_matches_the_expanded_sets():
    rng = np.random.default_rng(0)
    a = np.sort(rng.normal(size=(6, 4)), axis=0)
    b = np.sort(rng.normal(1.0, 2.0, size=(4, 4)), axis=0)
    # Repeating a 4 times and b 6 times gives equal-size sets with the same distributions.
    expanded = np.mean(np.abs(np.sort(np.repeat(a, 4, axis=0), axis=0)
                              - np.sort(np.repeat(b, 6, axis=0), axis=0)), axis=0)
    np.testing.assert_allclose(S.wasserstein_1d(a, b), expanded, rtol=1e-12)
    np.testing.assert_allclose(S.wasserstein_1d(b, a), expanded, rtol=1e-12)
    assert np.all(S.wasserstein_1d(a, a) == 0)


def test_swd_of_identical_descriptors_is_zero(real):
    desc = S.level_descriptors(real, 0, FAST, np.random.default_rng(0))
    assert S.swd_level([desc], desc, FAST, np.random.default_rng(1)) == [0.0]


def test_swd_is_near_zero_for_identical_sets_and_grows_with_each_shift(real, other):
    shifts = {
        "same images": real,
        "same distribution": other,
        "blur 0.7": degrade(other, blur=0.7),
        "blur 1.5": degrade(other, blur=1.5),
        "noise 8": degrade(other, noise=8),
        "noise 24": degrade(other, noise=24),
        "tint 8": degrade(other, tint=(8, -8, 0)),
        "tint 25": degrade(other, tint=(25, -25, 0)),
    }
    results = S.swd(list(shifts.values()), real, FAST, seed=0).per_level
    value = {name: S.mean_over_levels(r) for name, r in zip(shifts, results)}
    assert all(set(r) == {32, 16} for r in results)
    assert value["same images"] < value["same distribution"]  # only patch positions differ
    assert value["same distribution"] < value["blur 0.7"] < value["blur 1.5"]
    assert value["same distribution"] < value["noise 8"] < value["noise 24"]
    assert value["same distribution"] < value["tint 8"] < value["tint 25"]
    # A colour cast shows at the coarsest level, where the colours are; noise at the finest.
    tint, noise, base = (dict(zip(shifts, results))[k] for k in ("tint 25", "noise 24",
                                                                  "same distribution"))
    assert tint[16] > 3 * base[16] and tint[32] < 2 * base[32]
    assert noise[32] > 10 * base[32]


def test_swd_is_deterministic_given_the_seed(real, other):
    first = S.swd([other], real, FAST, seed=3).per_level
    assert S.swd([other], real, FAST, seed=3).per_level == first
    assert S.swd([other], real, FAST, seed=4).per_level != first


def test_a_fake_set_scores_the_same_alone_or_beside_another(real, other):
    alone = S.swd([other], real, FAST, seed=0).per_level[0]
    together = S.swd([other, degrade(other, blur=1.0)], real, FAST, seed=0).per_level[0]
    assert alone == together
