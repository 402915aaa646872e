"""canopy/samples.py: what the writer puts in a samples folder, the readers get back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from canopy import samples
from canopy.errors import UserError
from canopy.hashing import sha256_file


def write_folder(folder, arrays):
    records = [samples.write_image(folder, i, a) for i, a in enumerate(arrays)]
    samples.write_grid(folder, len(records))
    manifest = samples.SamplesManifest(
        n=len(records), seed=1, sampler="ddim", steps=5, eta=0.0, timestep_spacing="quadratic",
        weights="ema", checkpoint=samples.CheckpointRecord("ema.safetensors", "0" * 64, 7),
        tile_size=8, device="cpu", precision="fp32", channels_last=True, images=records)
    samples.write_manifest(folder, manifest)


def test_the_readers_get_back_what_the_writer_wrote(tmp_path):
    arrays = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    write_folder(tmp_path, arrays)
    paths = samples.list_samples(tmp_path)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png"]  # no grid.png
    assert all(np.array_equal(samples.read_sample(p, 8), a) for p, a in zip(paths, arrays))
    manifest = samples.read_manifest(tmp_path)
    assert manifest["format_version"] == samples.FORMAT_VERSION and manifest["n"] == 3
    assert manifest["checkpoint"] == {"file": "ema.safetensors", "sha256": "0" * 64, "step": 7}
    for record in manifest["images"]:
        assert sha256_file(tmp_path / record["file"]) == record["sha256"]
    assert (tmp_path / samples.GRID_FILE).is_file()


def test_a_folder_without_a_manifest_is_read_as_plain_images(tmp_path):
    samples.write_image(tmp_path, 0, np.zeros((8, 8, 3), dtype=np.uint8))
    assert samples.read_manifest(tmp_path) is None
    assert len(samples.list_samples(tmp_path)) == 1


def test_a_manifest_of_another_format_version_is_refused_in_one_line(tmp_path):
    write_folder(tmp_path, np.zeros((1, 8, 8, 3), dtype=np.uint8))
    path = tmp_path / samples.MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 2}))
    with pytest.raises(UserError, match="format_version 2") as err:
        samples.read_manifest(tmp_path)
    assert "\n" not in str(err.value)


def test_a_sample_file_too_big_for_an_image_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "000000.png"
    with open(path, "wb") as handle:
        handle.truncate(samples.MAX_SAMPLE_BYTES + 1)  # sparse: no disk, no time
    with pytest.raises(UserError, match=r"000000.png is \d+ bytes, far more than a sample "
                                        r"image may take"):
        samples.read_sample(path, 16)
