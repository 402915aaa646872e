"""The skip mixture's fit (train/mixture.py): the kinds of tile found, each measured as etl
measures all tiles, the same fit from the same tiles and seed, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from canopy.tiles import ChannelStats
from canopy.train.mixture import MIN_COMPONENT_TILES, fit_skip_mixture, max_components


def _two_kinds(rng: np.random.Generator, textured: int, flat: int, size: int = 16) -> np.ndarray:
    """Bright tiles of coarse and fine texture, and dark tiles of one colour with faint noise."""
    bright = rng.integers(90, 230, (textured, size, size, 3)).astype(np.uint8)
    dark = np.clip(rng.normal(40, 2, (flat, size, size, 3)) + rng.normal(0, 6, (flat, 1, 1, 3)),
                   0, 255).astype(np.uint8)
    return np.concatenate([bright, dark])


def _stats(tiles: np.ndarray) -> dict:
    measured = ChannelStats(tile_means=False)
    for tile in tiles:
        measured.add(tile)
    found = measured.to_json()
    return {key: found[key] for key in ("mean", "std", "spectrum")}


def test_the_kinds_of_tile_are_found_and_each_measured_as_etl_measures_all_tiles():
    rng = np.random.default_rng(0)
    tiles = _two_kinds(rng, 30, 20)
    overall = _stats(tiles)
    fit = fit_skip_mixture(tiles, overall["mean"], overall["std"], 2, seed=0)
    by_size = dict(zip(fit["weights"], fit["components"]))
    assert sorted(by_size) == [20, 30]
    assert by_size[30] == _stats(tiles[:30]) and by_size[20] == _stats(tiles[30:])
    # the same tiles and seed, the same fit, and one that JSON keeps as it is
    again = fit_skip_mixture(tiles, overall["mean"], overall["std"], 2, seed=0)
    assert json.dumps(again, sort_keys=True) == json.dumps(fit, sort_keys=True)
    assert json.loads(json.dumps(fit)) == fit


def test_a_cluster_too_small_for_a_spectrum_joins_none_and_too_few_tiles_is_one_error():
    rng = np.random.default_rng(1)
    tiles = _two_kinds(rng, 40, 3)
    overall = _stats(tiles)
    fit = fit_skip_mixture(tiles, overall["mean"], overall["std"], 2, seed=0)
    assert all(w >= MIN_COMPONENT_TILES for w in fit["weights"])
    with pytest.raises(ValueError, match="8 kinds of tile need at least 64 train tiles.*"
                                         "there are 43"):
        fit_skip_mixture(tiles, overall["mean"], overall["std"], 8, seed=0)
    assert max_components(43) == 5 and max_components(3) == 1
