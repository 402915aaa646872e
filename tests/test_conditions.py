"""Conditions from tile metadata and from sample requests (canopy/conditions.py), and the
tiles reader's metadata (canopy/tiles.py read_metadata)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from canopy import conditions, tiles
from canopy.errors import UserError
from tests.tiles import write_tiles


def _utm_tile(**extra):
    # A 64 px tile at 0.1 m in UTM zone 18N, near Harvard Forest (42.54 N, 72.17 W)
    left, bottom = 732000.0, 4713000.0
    return {"key": "k", "source": "local", "scene": "harv-001", "crs": "EPSG:32618",
            "window": {"col": 0, "row": 0, "width": 64, "height": 64},
            "bounds": [left, bottom, left + 6.4, bottom + 6.4],
            "acquired": "2019:08:14 12:00:00", **extra}


def test_values_from_what_tiles_carry_today():
    values = conditions.tiles_values([_utm_tile()])[0]
    assert values["region"] == "harv-001"  # no region written: the scene id
    assert values["month"] == 8
    assert math.isclose(values["lat"], 42.54, abs_tol=0.02)
    assert math.isclose(values["lon"], -72.2, abs_tol=0.05)
    assert math.isclose(values["gsd"], 0.1, rel_tol=1e-6)
    assert values["tree_cover"] is None


def test_a_tile_gives_a_value_or_none_for_every_kind_a_model_knows():
    from canopy.model.condition import CONDITION_KINDS

    assert set(conditions.tile_values({})) == set(CONDITION_KINDS)
    assert set(conditions.tiles_values([_utm_tile()])[0]) == set(CONDITION_KINDS)


def test_written_keys_win_over_the_fallbacks():
    values = conditions.tiles_values([_utm_tile(region="HARV", gsd=0.12, tree_cover=0.7)])[0]
    assert (values["region"], values["gsd"], values["tree_cover"]) == ("HARV", 0.12, 0.7)


def test_a_geographic_crs_gives_gsd_in_metres():
    tile = {"crs": "EPSG:4326", "window": {"width": 10}, "bounds": [-50.0, 0.0, -49.999, 0.001],
            "acquired": "2020-01-03"}
    values = conditions.tiles_values([tile])[0]
    assert math.isclose(values["gsd"], 11.132, rel_tol=1e-3)
    assert values["month"] == 1 and math.isclose(values["lat"], 0.0005, abs_tol=1e-6)


def test_tiles_without_place_or_date_give_none():
    values = conditions.tiles_values([{"scene": "s", "crs": None, "acquired": None}])[0]
    assert values["lat"] is values["month"] is values["gsd"] is None


def test_the_model_condition_and_its_rows():
    values = conditions.tiles_values([_utm_tile(region="b"), _utm_tile(region="a"),
                                      {"region": "b"}])
    condition = conditions.model_condition(["month", "region"], values)
    assert condition == {"region": ["a", "b"], "month": None}
    rows = conditions.condition_rows(condition, values)
    assert rows.dtype == np.float32 and rows[:2].tolist() == [[1.0, 8.0], [0.0, 8.0]]
    assert rows[2, 0] == 1.0 and np.isnan(rows[2, 1])
    with pytest.raises(UserError, match="no train tile's metadata gives it .*tree_cover"):
        conditions.model_condition(["tree_cover"], values)


def test_requests_each_a_name_or_a_list():
    condition = {"region": ["a", "b", "c"], "month": None}
    asked = conditions.requested(condition, {"region": "each", "month": 6.0}, range(5))
    assert [a["region"] for a in asked] == ["a", "b", "c", "a", "b"]
    # image i's condition does not depend on the images asked for
    assert conditions.requested(condition, {"region": "each", "month": 6.0}, [4]) == [asked[4]]
    asked = conditions.requested(condition, {"region": ["c", "a"], "month": 2.0}, range(3))
    assert [a["region"] for a in asked] == ["c", "a", "c"]
    with pytest.raises(UserError, match="'d' is not a class of this model; use one of a, b, c"):
        conditions.requested(condition, {"region": "d", "month": 1.0}, [0])
    with pytest.raises(UserError, match="lacks month"):
        conditions.requested(condition, {"region": "a"}, [0])
    with pytest.raises(UserError, match="'lat', which this model is not conditioned on"):
        conditions.requested(condition, {"region": "a", "month": 1.0, "lat": 3.0}, [0])


def test_the_reader_returns_each_tiles_metadata(tmp_path):
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    root = write_tiles(tmp_path / "t", images, images[:1], shard_size=2,
                       metadata={"train": [{"region": r} for r in "xyz"]})
    locations = tiles.list_tiles(root, "train")
    metadata = tiles.read_metadata(locations[::-1])
    assert [m["region"] for m in metadata] == ["z", "y", "x"]
    assert [m["key"] for m in metadata] == [loc.key for loc in locations[::-1]]


def test_a_tile_without_metadata_is_refused(tmp_path):
    import io
    import tarfile

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        data = b"\x89PNG"
        info = tarfile.TarInfo("k.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    location = tiles.index_shards([shard])[0]
    with pytest.raises(UserError, match="has no k.json metadata"):
        tiles.read_metadata([location])
