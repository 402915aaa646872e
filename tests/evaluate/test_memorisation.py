"""Nearest-training-tile distances and the near-copy fraction (evaluate/memorisation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from canopy.evaluate import memorisation as M
from tests.evaluate.synthetic import degrade, forest_images


@pytest.fixture(scope="module")
def train():
    return forest_images(40, 32, seed=11)


def search(queries, train, size=8, dihedral=True, block=16):
    features = M.downscale(train, size)
    blocks = [features[i:i + block] for i in range(0, len(features), block)]
    return M.nearest_distances(M.query_features(queries, size, dihedral), blocks)


def test_downscale_is_the_block_mean_in_0_to_1():
    image = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    image[0, :2, :2] = 255
    small = M.downscale(image, 2).reshape(2, 2, 3)
    np.testing.assert_allclose(small[..., 0], [[1.0, 0.0], [0.0, 0.0]])
    odd = M.downscale(np.full((1, 30, 30, 3), 51, dtype=np.uint8), 8)  # 30 / 8: PIL box
    np.testing.assert_allclose(odd, 0.2, atol=1e-6)


def test_exact_copies_are_found_with_distance_zero_and_the_right_tile(train):
    dist, index = search(train[[3, 17, 29]], train)
    np.testing.assert_array_equal(dist, 0.0)
    np.testing.assert_array_equal(index, [3, 17, 29])


def test_flipped_and_rotated_copies_count_as_copies(train):
    copies = np.stack([np.rot90(train[5], 1), train[8][:, ::-1], np.rot90(train[9][::-1], 3)])
    dist, index = search(copies, train)
    np.testing.assert_array_equal(dist, 0.0)
    np.testing.assert_array_equal(index, [5, 8, 9])
    plain, _ = search(copies, train, dihedral=False)
    assert np.all(plain > 0.03)


def test_distinct_images_are_not_flagged_and_noisy_copies_are(train):
    distinct = forest_images(20, 32, seed=12)
    dist_distinct, _ = search(distinct, train)
    noisy = degrade(train[:10], noise=10, seed=1)  # sampler-like pixel noise on copies
    dist_noisy, _ = search(noisy, train)
    threshold = 0.03  # the default evaluate.memorisation_threshold
    assert M.memorised_fraction(dist_distinct, threshold) == 0.0
    assert M.memorised_fraction(dist_noisy, threshold) == 1.0
    assert dist_distinct.min() > 3 * dist_noisy.max()


def test_distance_is_the_rms_difference_in_units_of_the_range():
    a = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    b = np.full((1, 8, 8, 3), 151, dtype=np.uint8)  # 51 grey levels = 0.2 everywhere
    dist, _ = M.nearest_distances(M.query_features(a, 4, False), [M.downscale(b, 4)])
    assert dist[0] == pytest.approx(0.2, abs=1e-6)


def test_the_search_does_not_depend_on_the_block_size(train):
    queries = forest_images(6, 32, seed=13)
    first = search(queries, train, block=7)
    second = search(queries, train, block=40)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_structure_is_the_distance_to_the_flat_tile_of_the_images_own_colour(train):
    flat = np.full((1, 32, 32, 3), (90, 120, 60), dtype=np.uint8)
    assert M.structure(flat, 8)[0] == 0.0
    noise = np.random.default_rng(0).integers(-3, 4, size=flat.shape)
    grainy = (flat.astype(int) + noise).astype(np.uint8)  # plain ground with grain
    assert 0 < M.structure(grainy, 8)[0] < 0.03
    # a forest tile's structure is far above the default threshold, and it is exactly its
    # nearest-neighbour distance to the flat tile of its own mean colour
    forest = train[:1]
    colour = M.downscale(forest, 8).reshape(-1, 3).mean(axis=0)
    distance = np.sqrt(((M.downscale(forest, 8).reshape(-1, 3) - colour) ** 2).mean())
    assert M.structure(forest, 8)[0] == pytest.approx(distance) and distance > 0.03
