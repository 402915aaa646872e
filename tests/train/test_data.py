import dataclasses

import numpy as np
import pytest
import torch

from canopy.errors import UserError
from canopy.tiles import decode_tile
from canopy.train import data
from canopy.train.data import (
    BatchStream,
    build_index,
    data_hash,
    dihedral,
    make_loader,
    read_manifest,
    train_shards,
)

from .conftest import png_bytes, write_tiles


def _index(tiles):
    return build_index(train_shards(tiles), tiles)


def test_index_reads_every_train_tile(tiles):
    index = _index(tiles)
    assert len(index) == 12 and index.tile_size == 16
    assert len(set(index.keys)) == 12 and all(k.startswith("test_train_") for k in index.keys)


def test_batches_are_a_function_of_seed_and_batch_number(tiles):
    index = _index(tiles)
    a = BatchStream(index, batch_size=5, seed=3, augment=True)
    b = BatchStream(index, batch_size=5, seed=3, augment=True, start=4)
    first = [next(it)["images"] for it in [iter(a)] for _ in range(6)]
    assert torch.equal(next(iter(b))["images"], first[4])
    assert first[0].dtype == torch.uint8 and first[0].shape == (5, 3, 16, 16)
    other_seed = next(iter(BatchStream(index, batch_size=5, seed=4, augment=True)))["images"]
    assert not torch.equal(other_seed, first[0])


def test_every_tile_once_per_epoch(tiles):
    stream = BatchStream(_index(tiles), batch_size=4, seed=0, augment=False)
    ids = np.concatenate([stream.tile_ids(b) for b in range(3)])  # 12 tiles = one epoch
    assert sorted(ids.tolist()) == list(range(12))
    next_epoch = np.concatenate([stream.tile_ids(b) for b in range(3, 6)])
    assert sorted(next_epoch.tolist()) == list(range(12)) and not np.array_equal(ids, next_epoch)


def test_workers_do_not_change_the_stream(tiles):
    index = _index(tiles)
    plain = iter(make_loader(BatchStream(index, 4, 0, True, start=2), 0, False))
    workers = iter(make_loader(BatchStream(index, 4, 0, True, start=2), 2, False))
    for _ in range(5):
        a, b = next(plain), next(workers)
        assert a["batch"] == b["batch"] and torch.equal(a["images"], b["images"])


def test_dihedral_gives_the_eight_symmetries():
    tile = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    variants = {dihedral(tile, k).tobytes() for k in range(8)}
    assert len(variants) == 8 and dihedral(tile, 0).tobytes() == tile.tobytes()


def test_data_hash_comes_from_the_manifest(tiles, monkeypatch):
    shards = train_shards(tiles)
    manifest = read_manifest(tiles)
    monkeypatch.setattr(data, "sha256_file", lambda p: pytest.fail(f"hashed {p}"))
    h = data_hash(tiles, shards, manifest)
    manifest["shards"][0]["sha256"] = "0" * 64
    assert data_hash(tiles, shards, manifest) != h


def test_data_hash_falls_back_to_the_files(tiles):
    shards = train_shards(tiles)
    with_manifest = data_hash(tiles, shards, read_manifest(tiles))
    assert data_hash(tiles, shards, {}) == with_manifest  # same sha256, computed from the files


def test_missing_or_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="manifest.json not found: run `canopy etl`"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(UserError, match="no train shards"):
        train_shards(tmp_path)


def test_a_bad_tile_surfaces_as_an_error_item(tmp_path):
    tiles = write_tiles(tmp_path / "tiles", n_train=3, shard_size=3)
    index = build_index(train_shards(tiles), tiles)
    bad = dataclasses.replace(index, tile_size=32)
    item = next(iter(BatchStream(bad, 2, 0, False)))
    assert "expected 32x32" in item["error"]
    gray = png_bytes(np.zeros((16, 16), dtype=np.uint8))
    with pytest.raises(UserError, match="not 8-bit RGB"):
        decode_tile(gray, 16, "x")
    with pytest.raises(UserError, match="not a readable PNG"):
        decode_tile(b"nope", 16, "x")


def test_augment_booleans_give_the_batches_of_before(tiles):
    """true/false still draw exactly the batches they drew when augment was a boolean: all 8
    symmetries from integers(0, 8) of the augment stream, or none."""
    from canopy.seeding import Stream, numpy_rng

    index = _index(tiles)
    for old, new in ((True, "all"), (False, "none")):
        a = BatchStream(index, batch_size=5, seed=3, augment=old).batch(2)
        b = BatchStream(index, batch_size=5, seed=3, augment=new).batch(2)
        assert torch.equal(a, b)
    stream = BatchStream(index, batch_size=5, seed=3, augment="all")
    ks = numpy_rng(3, Stream.TRAIN_AUGMENT, 2).integers(0, 8, 5)
    raw = [dihedral(data.tiles.read_tile(index.locations[i], 16), int(k))
           for i, k in zip(stream.tile_ids(2), ks)]
    assert torch.equal(stream.batch(2), torch.from_numpy(np.stack(raw)).permute(0, 3, 1, 2))


def test_transpose_augment_keeps_the_light_side(tiles):
    """transpose draws only the identity and the transpose (k = 7), both over a batch."""
    index = _index(tiles)
    stream = BatchStream(index, batch_size=12, seed=0, augment="transpose")
    plain = BatchStream(index, batch_size=12, seed=0, augment="none").batch(0)
    got = stream.batch(0)
    same = [torch.equal(got[j], plain[j]) for j in range(12)]
    transposed = [torch.equal(got[j], plain[j].transpose(1, 2)) for j in range(12)]
    assert all(s or t for s, t in zip(same, transposed))
    assert any(t and not s for s, t in zip(same, transposed)) and any(same)
    t = np.arange(5 * 5 * 3).reshape(5, 5, 3)
    assert np.array_equal(dihedral(t, data.TRANSPOSE), t.transpose(1, 0, 2))


def test_unknown_augment_is_refused(tiles):
    with pytest.raises(ValueError, match="unknown augment"):
        BatchStream(_index(tiles), batch_size=4, seed=0, augment="rotate")


@pytest.mark.parametrize("augment, stored",
                         [("all", True), ("none", False), ("transpose", "transpose")])
def test_augment_keeps_the_resume_key_of_earlier_checkpoints(augment, stored):
    """A checkpoint of augment: true still resumes under augment: all (the params hash holds
    the boolean it held before)."""
    from canopy.params import parse_params
    from canopy.train.loop import resume_params

    params = parse_params({"train": {"augment": augment}})
    assert resume_params(params)["train"]["augment"] == stored
