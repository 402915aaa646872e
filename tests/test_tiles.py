"""canopy/tiles.py: what the writer puts in a tiles folder, the readers get back."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

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


def _manifest_without_sizes(root):
    """A manifest as written before shard sizes were recorded."""
    path = root / tiles.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    for shard in manifest["shards"]:
        del shard["size"]
    path.write_text(json.dumps(manifest))
    return manifest


def _verified(root, split="train"):
    return tiles.verified_tiles(root, split, tiles.read_manifest(root, point_at="--tiles"))


def test_the_manifest_records_each_shards_size_and_the_verified_reader_agrees(tmp_path):
    placed = write_folder(tmp_path, images(5), images(2, seed=1))
    manifest = tiles.read_manifest(tmp_path, point_at="--tiles")
    for shard in manifest["shards"]:
        assert shard["size"] == (tmp_path / shard["file"]).stat().st_size
    assert _verified(tmp_path) + _verified(tmp_path, "val") == placed


def test_a_missing_shard_is_named_with_what_to_rerun(tmp_path):
    write_folder(tmp_path, images(5), images(0))
    (tmp_path / "train" / "shard-000001.tar").unlink()
    with pytest.raises(UserError, match=r"shard-000001.tar, listed in .* is missing; "
                                        r"re-run `canopy etl`"):
        _verified(tmp_path)


def test_a_shard_of_another_size_is_refused(tmp_path):
    write_folder(tmp_path, images(5), images(0))
    shard = tmp_path / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes() + b"\0" * 512)
    with pytest.raises(UserError, match=r"shard-000000.tar is \d+ bytes, but manifest.json "
                                        r"records \d+; re-run `canopy etl`"):
        _verified(tmp_path)


def test_a_shard_cut_at_a_member_boundary_is_caught_by_its_count_without_sizes(tmp_path):
    write_folder(tmp_path, images(4), images(0))
    _manifest_without_sizes(tmp_path)
    shard = tmp_path / "train" / "shard-000000.tar"
    # Keep the first tile's two members (png + json), then the end-of-archive blocks.
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    end = members[2].offset
    shard.write_bytes(shard.read_bytes()[:end] + b"\0" * 1024)
    with pytest.raises(UserError, match="holds 1 tiles, but manifest.json records 2"):
        _verified(tmp_path)


@pytest.mark.parametrize("special", ["fifo", "device"])
def test_a_special_file_for_a_shard_is_refused_without_reading_it(tmp_path, special):
    write_folder(tmp_path, images(2), images(0))
    shard = tmp_path / "train" / "shard-000000.tar"
    shard.unlink()
    if special == "fifo":
        os.mkfifo(shard)  # opening it for reading would block
    else:
        shard.symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(UserError, match="shard-000000.tar is not a regular file"):
        _verified(tmp_path)


def test_a_shard_outside_the_folder_is_refused(tmp_path):
    write_folder(tmp_path / "tiles", images(1), images(0))
    path = tmp_path / "tiles" / tiles.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["file"] = "../elsewhere.tar"
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="outside the folder"):
        _verified(tmp_path / "tiles")


# --- sha256 verification on request --------------------------------------------------------

def _flip_a_png_byte(location):
    """Change one byte inside a tile's PNG bytes: the shard keeps its size and tile count."""
    data = bytearray(location.shard.read_bytes())
    data[location.offset + location.size // 2] ^= 0xFF
    location.shard.write_bytes(bytes(data))


def test_a_flipped_byte_passes_the_size_checks_but_not_sha256(tmp_path):
    placed = write_folder(tmp_path, images(4), images(1))
    _flip_a_png_byte(placed[2])  # in train/shard-000001.tar
    manifest = tiles.read_manifest(tmp_path, point_at="--tiles")
    assert tiles.verified_tiles(tmp_path, "train", manifest) == placed[:4]
    with pytest.raises(UserError, match=r"^shard .*train/shard-000001.tar has sha256 \w+\.\.\., "
                                        r"but manifest.json records \w+\.\.\.: .*; "
                                        r"re-run `canopy etl`$"):
        tiles.verified_tiles(tmp_path, "train", manifest, verify="sha256")
    assert tiles.verified_tiles(tmp_path, "val", manifest, verify="sha256") == placed[4:]


# --- every read bounded ---------------------------------------------------------------------

def _forge_size(shard, header_offset, size):
    """Rewrite the size field of the tar header at `header_offset`, with a valid checksum."""
    data = bytearray(shard.read_bytes())
    header = data[header_offset:header_offset + tarfile.BLOCKSIZE]
    header[124:136] = f"{size:011o}\0".encode()
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    data[header_offset:header_offset + tarfile.BLOCKSIZE] = header
    shard.write_bytes(bytes(data))


def _png_header_offset(shard):
    with tarfile.open(shard) as tar:
        return next(m for m in tar if m.name.endswith(".png")).offset


def test_a_member_claiming_more_than_its_shard_holds_is_refused(tmp_path):
    write_folder(tmp_path, images(2), images(0))
    shard = tmp_path / "train" / "shard-000000.tar"
    _forge_size(shard, _png_header_offset(shard), 2**20)  # 1 MB: under the cap, past the end
    with pytest.raises(UserError, match=r"shard-000000.tar: member 'train_0.png' claims 1048576 "
                                        r"bytes from byte 512, past the end of the shard "
                                        r"\(\d+ bytes; a forged or corrupt tar header\); "
                                        r"re-run `canopy etl`"):
        tiles.list_tiles(tmp_path, "train")


def test_a_member_claiming_more_than_any_tile_takes_is_refused(tmp_path):
    write_folder(tmp_path, images(2), images(0))
    shard = tmp_path / "train" / "shard-000000.tar"
    _forge_size(shard, _png_header_offset(shard), 20 * 2**20)
    with open(shard, "r+b") as handle:
        handle.truncate(40 * 2**20)  # zeros (the end-of-archive marker): holds the claim
    with pytest.raises(UserError, match=r"shard-000000.tar: member 'train_0.png' claims 20971520 "
                                        r"bytes, more than the 16777216 a tile may take"):
        tiles.list_tiles(tmp_path, "train")
    assert tiles.member_cap(4096) == 2 * 3 * 4096 * 4096  # big tiles get twice their raw size


def test_a_tile_read_is_exactly_its_size_and_a_short_one_is_refused(tmp_path):
    (location,) = write_folder(tmp_path, images(1), images(0))
    assert len(location.read()) == location.size
    with open(location.shard, "r+b") as handle:  # the shard changed after it was indexed
        handle.truncate(location.offset + 10)
    with pytest.raises(UserError, match=rf"the shard ends after 10 of the tile's "
                                        rf"{location.size} bytes; re-run `canopy etl`"):
        location.read()


_FORGED_PAX = """
import resource, sys
from pathlib import Path
from canopy import tiles
from canopy.errors import UserError

# Address space for what is loaded plus 1 GiB: a read buffer of the 8 GB claimed cannot fit.
vm_kib = next(int(line.split()[1]) for line in open("/proc/self/status")
              if line.startswith("VmSize:"))
limit = vm_kib * 1024 + 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    tiles.index_shards([Path(sys.argv[1])])
except UserError as err:
    print(err)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_a_forged_pax_header_is_refused_without_reading_what_it_claims(tmp_path):
    """tarfile reads a PAX header's data in one read of the size the header claims; the
    shard's reads are clamped to the file, so a forged 8 GB claim allocates nothing."""
    import subprocess
    import sys

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("k" * 120 + ".png")  # a name this long needs a PAX header
        info.size = 100
        tar.addfile(info, __import__("io").BytesIO(b"\0" * 100))
    assert shard.read_bytes()[156:157] == b"x"  # the first header is the PAX one
    _forge_size(shard, 0, 8 * 2**30 - 1)
    script = tmp_path / "index.py"
    script.write_text(_FORGED_PAX)
    done = subprocess.run([sys.executable, str(script), str(shard)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # a MemoryError would be a traceback
    assert f"{shard} is not a readable tar shard" in done.stdout
    assert "re-run `canopy etl`" in done.stdout


def test_channel_stats_do_not_depend_on_the_order_of_the_tiles():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    a, b = tiles.ChannelStats(), tiles.ChannelStats()
    for image in images:
        a.add(image)
    for image in images[::-1]:
        b.add(image)
    assert a.to_json() == b.to_json()
    values = images.reshape(-1, 3) / 127.5 - 1
    assert np.allclose(a.to_json()["mean"], values.mean(axis=0), atol=1e-6)
    assert np.allclose(a.to_json()["std"], values.std(axis=0), atol=1e-6)
    assert tiles.ChannelStats().to_json() is None


def test_the_tile_means_are_each_tiles_mean_colour_sorted_and_thinned_evenly(monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    stats = tiles.ChannelStats()
    for image in images:
        stats.add(image)
    expected = sorted((image.reshape(-1, 3) / 127.5 - 1).mean(axis=0).tolist() for image in images)
    found = stats.to_json()["tile_means"]
    assert np.allclose(found, expected, atol=1e-5)
    assert tiles.train_stats({"train_stats": stats.to_json()}, Path("x"))["tile_means"] == found
    # past the cap, every k-th of the sorted means: still spread over all of them
    monkeypatch.setattr(tiles, "MAX_TILE_MEANS", 4)
    assert stats.to_json()["tile_means"] == found[::3]


@pytest.mark.parametrize("means", [[], [[0, 0]] * 8, [[0, 0, 2]] * 8,
                                   [[0, 0, "x"]] * 8, {"a": 1}])
def test_malformed_tile_means_are_refused(tmp_path, means):
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "tile_means": means}
    with pytest.raises(UserError, match="train_stats.tile_means is not a list"):
        tiles.train_stats({"train_stats": stats}, tmp_path)


@pytest.mark.parametrize("stats", [{"mean": [0, 0], "std": [1, 1]},
                                   {"mean": [0, 0, 0], "std": [1, 0, 1]},
                                   {"mean": [0, 0, "x"], "std": [1, 1, 1]}, [1, 2]])
def test_malformed_train_stats_are_refused(tmp_path, stats):
    with pytest.raises(UserError, match="train_stats is not three means"):
        tiles.train_stats({"train_stats": stats}, tmp_path)
    assert tiles.train_stats({}, tmp_path) is None  # a manifest of before etl measured them


def _spectrum_of(images):
    stats = tiles.ChannelStats()
    for image in images:
        stats.add(image)
    return stats.to_json()["spectrum"]


def test_the_spectrum_of_white_noise_tiles_is_flat_at_the_identity():
    """Independent pixels and channels: every frequency, the tile means' too, holds the pixel
    variance (1 in standardised units) in each channel and nothing across channels."""
    images = np.random.default_rng(0).integers(0, 256, (400, 16, 16, 3), dtype=np.uint8)
    spectrum = _spectrum_of(images)
    assert spectrum["tile_size"] == 16
    radial = np.array(spectrum["radial"])
    assert radial.shape == (12, 3, 3)  # radii 0 .. round(16 / sqrt(2)) = 11
    assert np.allclose(radial[1:], np.eye(3), atol=0.1)
    assert np.allclose(radial[0], np.eye(3), atol=0.25)  # one coefficient per tile: noisier
    assert np.array_equal(radial, radial.transpose(0, 2, 1))


def test_the_spectrum_holds_the_covariance_of_the_standardised_tiles():
    """Parseval: over the frequency plane the cross-power sums to the channels' pixel
    covariance (1 on the diagonal), the DC's share being the covariance of the tiles' mean
    colours."""
    rng = np.random.default_rng(1)
    base = rng.integers(40, 200, (50, 1, 1, 1)) + rng.integers(-20, 20, (50, 1, 1, 3))
    walk = rng.normal(0, 20, (50, 8, 8, 1)).cumsum(axis=1) + rng.normal(0, 5, (50, 8, 8, 3))
    images = np.clip(base + walk, 0, 255).astype(np.uint8)
    radial = np.array(_spectrum_of(images)["radial"])
    counts, _, _ = tiles._radial_bins(8)
    z = images.reshape(-1, 3) / 127.5 - 1
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    plane = (radial * counts[:, None, None]).sum(axis=0) / 64
    assert np.allclose(plane, z.T @ z / len(z), atol=1e-4)
    assert plane[0, 1] > 0.5  # the channels move together, and the spectrum says so
    means = (images / 127.5 - 1).mean(axis=(1, 2))
    stds = (images.reshape(-1, 3) / 127.5 - 1).std(axis=0)
    want_dc = 64 * np.cov(means.T, bias=True) / np.outer(stds, stds)
    assert np.allclose(radial[0], want_dc, rtol=1e-4)


def test_the_mirror_spectrum_is_the_cross_power_of_the_tiles_dct():
    """mirror_spectrum: the spectrum of the tiles extended by their mirror images (2n px): the
    per-radius cross-power of the orthonormal 2-D DCT-II coefficients (k_y, k_x) at radius
    sqrt(k_y^2 + k_x^2), the DC that of a 2n tile with the tile's mean; by Parseval it too sums
    to the pixel covariance."""
    rng = np.random.default_rng(2)
    walk = rng.normal(0, 20, (40, 8, 8, 1)).cumsum(axis=2) + rng.normal(0, 5, (40, 8, 8, 3))
    images = np.clip(120 + walk, 0, 255).astype(np.uint8)
    stats = tiles.ChannelStats()
    for image in images:
        stats.add(image)
    found = stats.to_json()
    radial = np.array(found["mirror_spectrum"]["radial"])
    n = 8
    m, k = np.meshgrid(np.arange(n), np.arange(n))  # the orthonormal DCT-II matrix, k x m
    dct = np.sqrt(2 / n) * np.cos(np.pi * k * (m + 0.5) / n)
    dct[0] /= np.sqrt(2)
    z = (images / 127.5 - 1 - np.array(found["mean"])) / np.array(found["std"])
    coefficients = np.einsum("ka,nabc,lb->nklc", dct, z, dct)  # (tile, k_y, k_x, channel)
    bins = np.rint(np.hypot(*np.meshgrid(np.arange(n), np.arange(n)))).astype(int)
    assert found["mirror_spectrum"]["tile_size"] == 2 * n
    for r in (1, 2, 4, 9):
        cells = coefficients[:, bins == r]  # (tile, cells, channel)
        want = np.einsum("nic,nid->cd", cells, cells) / cells.shape[0] / cells.shape[1]
        assert np.allclose(radial[r], want, rtol=1e-4, atol=1e-6)
    assert np.allclose(radial[0], 4 * np.array(found["spectrum"]["radial"])[0])  # 4N Var(mean)
    counts = np.bincount(bins.ravel())
    plane = (radial[1:] * counts[1:, None, None]).sum(axis=0) / n**2 + radial[0] / 4 / n**2
    flat = z.reshape(-1, 3)
    assert np.allclose(plane, flat.T @ flat / len(flat), atol=1e-3)


@pytest.mark.parametrize("spectrum", [
    {"tile_size": 8}, {"tile_size": 8, "radial": [np.eye(3).tolist()]},
    {"tile_size": 8, "radial": [[[1, 0, 0], [0, 0, 0], [0, 0, 1]]] * 2},
    {"tile_size": 8, "radial": [[[1, 0.5, 0], [0, 1, 0], [0, 0, 1]]] * 2},
    {"tile_size": "8", "radial": [np.eye(3).tolist()] * 2}])
def test_a_malformed_spectrum_is_refused(tmp_path, spectrum):
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "spectrum": spectrum}
    with pytest.raises(UserError, match="train_stats.spectrum is not a tile size"):
        tiles.train_stats({"train_stats": stats}, tmp_path)


def test_a_spectrum_is_only_written_for_tiles_of_one_square_size():
    rng = np.random.default_rng(2)
    mixed = tiles.ChannelStats()
    for image in (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                  rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                  rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)):
        mixed.add(image)
    batch = tiles.ChannelStats()
    batch.add(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))  # 8 tiles of 8 px at once
    for stats in (mixed, batch):
        found = stats.to_json()
        assert "spectrum" not in found and len(found["mean"]) == 3


def test_train_stats_measure_each_region_on_its_own_tiles():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
    regions = ["b", "a", "b", None, "a", "b", "a", "b", "c"]
    stats = tiles.TrainStats()
    for image, region in zip(images, regions):
        stats.add(image, region)
    found = stats.to_json()
    every = tiles.ChannelStats()
    for image in images:
        every.add(image)
    assert {k: v for k, v in found.items() if k != "regions"} == every.to_json()
    assert sorted(found["regions"]) == ["a", "b", "c"]
    own = tiles.ChannelStats(tile_means=False)  # a region's tile means are not kept
    for image, region in zip(images, regions):
        if region == "b":
            own.add(image)
    assert found["regions"]["b"] == own.to_json()
    assert "spectrum" not in found["regions"]["c"]  # one tile: no spectrum of its own
    assert tiles.train_stats({"train_stats": found}, Path("x"))["regions"]["b"] == own.to_json()


def test_a_region_of_one_flat_colour_is_left_out():
    stats = tiles.TrainStats()
    rng = np.random.default_rng(4)
    stats.add(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "varied")
    stats.add(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "varied")
    stats.add(np.full((8, 8, 3), 90, dtype=np.uint8), "flat")
    assert list(stats.to_json()["regions"]) == ["varied"]
    assert tiles.TrainStats().to_json() is None


@pytest.mark.parametrize("regions, where", [
    ([1, 2], "train_stats.regions is not an object"),
    ({"a": {"mean": [0, 0, 0], "std": [1, 0, 1]}}, "train_stats.regions.a is not three means"),
    ({"a": {"mean": [0, 0, 0], "std": [1, 1, 1], "spectrum": {"tile_size": 8}}},
     "train_stats.regions.a.spectrum is not a tile size")])
def test_malformed_region_stats_are_refused(tmp_path, regions, where):
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1], "regions": regions}
    with pytest.raises(UserError, match=where):
        tiles.train_stats({"train_stats": stats}, tmp_path)
