"""canopy/tiles.py: what the writer puts in a tiles folder, the readers get back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from canopy import tiles
from canopy.errors import UserError
from canopy.hashing import sha256_file
from tests.tiles import png_bytes


def images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_folder(root, train, val, shard_size=2):
    placed, shards = [], []
    for split, arrays in (("train", train), ("val", val)):
        writer = tiles.ShardWriter(root, split, shard_size)
        placed += [writer.add(f"{split}_{i}", png_bytes(a), {"key": f"{split}_{i}"})
                   for i, a in enumerate(arrays)]
        shards += writer.close()
    tiles.write_manifest(root, tile_size=8, stride=8, shards=shards, synthetic=False,
                         filters={}, sources=[], params_hash="h")
    return placed


def test_the_readers_find_every_tile_where_the_writer_put_it(tmp_path):
    train, val = images(5), images(2, seed=1)
    placed = write_folder(tmp_path, train, val)
    manifest = tiles.read_manifest(tmp_path, point_at="--tiles")
    assert manifest["counts"] == {"train": 5, "val": 2} and manifest["tile_size"] == 8
    assert len(tiles.shard_files(tmp_path, "train")) == 3  # shards of 2 tiles
    found = tiles.list_tiles(tmp_path, "train") + tiles.list_tiles(tmp_path, "val")
    assert found == placed
    decoded = list(tiles.read_tiles(found, 8))
    assert all(np.array_equal(a, b) for a, b in zip(decoded, [*train, *val]))
    for file, digest in tiles.shard_hashes(manifest).items():
        assert sha256_file(tmp_path / file) == digest


def test_a_manifest_of_another_format_version_is_refused_in_one_line(tmp_path):
    write_folder(tmp_path, images(1), images(1))
    path = tmp_path / tiles.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(UserError, match="format_version 2") as err:
        tiles.read_manifest(tmp_path, point_at="--tiles")
    assert "\n" not in str(err.value)


def test_a_tile_of_the_wrong_size_names_itself(tmp_path):
    (location,) = write_folder(tmp_path, images(1), images(0))
    with pytest.raises(UserError, match=r"tile train_0 in .*shard-000000.tar is 8x8 px, "
                                        r"expected 16x16"):
        tiles.read_tile(location, 16)


def test_a_key_in_two_shards_is_refused(tmp_path):
    write_folder(tmp_path, images(2), images(0), shard_size=1)
    first, second = tiles.shard_files(tmp_path, "train")
    second.write_bytes(first.read_bytes())
    with pytest.raises(UserError, match="'train_0' is in both"):
        tiles.list_tiles(tmp_path, "train")


def test_a_manifest_without_its_shard_list_is_refused(tmp_path):
    write_folder(tmp_path, images(1), images(1))
    path = tmp_path / tiles.MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "shards": {"train": []}}))
    with pytest.raises(UserError, match="no list of shards"):
        tiles.read_manifest(tmp_path, point_at="--tiles")
