"""Crop training (train.crop_*; Patch Diffusion, Wang et al. 2023): the crops, their schedule,
and what stays as it was (train/data.py CropPlan, BatchStream)."""

import pytest
import torch

from canopy.errors import UserError
from canopy.params import parse_params
from canopy.train.data import BatchStream, CropPlan, build_index, train_shards
from canopy.train.loop import resume_params, train

from .conftest import tiny_params, write_tiles


def _index(tiles):
    return build_index(train_shards(tiles), tiles)


def test_off_unless_a_fraction_is_given():
    assert CropPlan.from_params(0.0, [2, 4], 0.25, 100) is None
    plan = CropPlan.from_params(0.5, [2, 4], 0.25, 100)
    assert plan.until == 75 and plan.divisors == (2, 4)


def test_crops_are_windows_of_the_flipped_tiles_at_the_same_pixels_per_step(tiles):
    index = _index(tiles)  # 16 px tiles
    plan = CropPlan(fraction=1.0, divisors=(2, 4), until=6)
    full = BatchStream(index, batch_size=4, seed=3, augment=True)
    crops = BatchStream(index, batch_size=4, seed=3, augment=True, crop=plan)
    seen = set()
    for b in range(8):
        whole, cut = full.batch(b), crops.batch(b)
        if b >= 6:  # the final part on full tiles, exactly the batches of no crop training
            assert torch.equal(whole, cut)
            continue
        d, offsets = plan.draw(3, b, 4, 16)
        seen.add(d)
        side = 16 // d
        assert cut.shape == (4 * d * d, 3, side, side)
        assert cut.numel() == whole.numel()  # the same pixels per step
        for j in range(4):
            for c, (y, x) in enumerate(offsets[j]):
                assert torch.equal(cut[j * d * d + c], whole[j, :, y:y + side, x:x + side])
    assert seen == {2, 4}


def test_a_fraction_mixes_crops_and_tiles_and_is_seeded(tiles):
    plan = CropPlan(fraction=0.5, divisors=(2,), until=200)
    ds = [plan.draw(0, b, 4, 16)[0] for b in range(200)]
    assert 60 < ds.count(2) < 140 and set(ds) == {1, 2}
    assert ds == [plan.draw(0, b, 4, 16)[0] for b in range(200)]
    assert ds != [plan.draw(1, b, 4, 16)[0] for b in range(200)]


def test_rank_slices_put_together_are_the_whole_batch(tiles):
    index = _index(tiles)
    plan = CropPlan(fraction=1.0, divisors=(2,), until=10)
    whole = BatchStream(index, 4, 0, True, crop=plan).batch(1)
    parts = [BatchStream(index, 4, 0, True, part=(lo, lo + 2), crop=plan).batch(1) for lo in (0, 2)]
    assert torch.equal(torch.cat(parts), whole)


def test_params_check_the_crop_sizes_and_the_tiles(tmp_path):
    with pytest.raises(UserError, match="crop_sizes"):
        parse_params({"train": {"crop_sizes": [3]}})
    with pytest.raises(UserError, match="did you mean 'crop_fraction'"):
        parse_params({"train": {"crop_fractoin": 0.5}})
    tiles = write_tiles(tmp_path / "tiles", size=24)  # dim_mults [1, 2]: factor 2
    with pytest.raises(UserError, match="1/8 crop of the 24 px tiles"):
        train(tiny_params(tiles, tmp_path / "m", crop_fraction=0.5, crop_sizes=[8]), quiet=True)


def test_crop_keys_enter_the_params_hash_only_when_on(tiles, tmp_path):
    off = resume_params(tiny_params(tiles, tmp_path))["train"]
    assert not {"crop_fraction", "crop_sizes", "crop_full_final", "steps"} & set(off)
    on = resume_params(tiny_params(tiles, tmp_path, crop_fraction=0.5))["train"]
    assert on["crop_fraction"] == 0.5 and on["steps"] == 8
