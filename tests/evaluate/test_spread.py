import numpy as np
import pytest

from canopy.evaluate.spread import mean_colours, spread, spread_ratio


def test_spread_is_the_channel_mean_of_the_std_of_the_tiles_mean_colours():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[:, :, :, 0] = np.array([0, 255, 0, 255], dtype=np.uint8)[:, None, None]
    colours = mean_colours(images)
    assert colours.shape == (4, 3) and colours[1, 0] == 1.0
    # channel 0 takes 0 and 1 twice each (sample std 0.577), the others never vary
    assert spread(colours) == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 3)
    assert spread_ratio(colours, colours) == pytest.approx(1.0)


def test_a_set_without_variation_or_with_one_image_gives_no_made_up_number():
    flat = np.ones((3, 3)) * 0.5
    assert np.isnan(spread_ratio(np.random.default_rng(0).random((5, 3)), flat))
    assert np.isnan(spread(np.ones((1, 3))))
