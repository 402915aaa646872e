"""C2ST: held-out accuracy near 0.5 for one distribution, near 1.0 for degraded copies."""

from __future__ import annotations

import pytest

from canopy.evaluate.c2st import C2stConfig, c2st
from tests.evaluate.synthetic import degrade, forest_images

# 32 px images and few of them: a fixed budget of optimiser steps, whatever the count.
FAST = C2stConfig(folds=5, steps=160)


@pytest.fixture(scope="module")
def real():
    return forest_images(160, 32, seed=1)


def test_two_sets_from_one_distribution_score_near_one_half(real):
    result = c2st(forest_images(160, 32, seed=2), real, FAST, seed=0)
    assert result.n == 160 and result.folds == 5
    assert result.accuracy == pytest.approx(0.5, abs=0.15)


@pytest.mark.parametrize("change", [{"blur": 1.0}, {"noise": 8.0}])
def test_blurred_or_noised_copies_of_real_tiles_score_near_one(real, change):
    result = c2st(degrade(real, **change), real, FAST, seed=0)
    assert result.accuracy > 0.85
    assert len(result.most_sure_a) == 16 and result.most_sure_probability[0] > 0.5


def test_the_same_inputs_give_the_same_accuracy(real):
    a = degrade(real[:60], noise=4.0)
    config = C2stConfig(folds=3, steps=10)
    first, second = c2st(a, real[60:], config, seed=3), c2st(a, real[60:], config, seed=3)
    assert first.accuracy == second.accuracy
    assert first.most_sure_a == second.most_sure_a


def test_balanced_subsets_capped_by_max_images(real):
    result = c2st(real[:40], real[40:], C2stConfig(folds=2, steps=2, max_images=30), seed=0)
    assert result.n == 30 and len(result.picked_a) == 30
