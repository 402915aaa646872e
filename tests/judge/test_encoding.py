"""The served PNG encoding and the catalog of one experiment's images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from canopy.errors import UserError
from canopy.judge.catalog import load_catalog
from canopy.judge.png import uniform_png, uniform_png_size
from tests.judge.conftest import png_chunks


def test_uniform_png_round_trips_and_its_size_depends_on_the_tile_size_only():
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    flat = np.full((64, 64, 3), 90, dtype=np.uint8)
    for image in (noisy, flat):
        data = uniform_png(image)
        with Image.open(io.BytesIO(data)) as decoded:
            assert decoded.mode == "RGB" and decoded.info == {}
            assert np.array_equal(np.asarray(decoded), image)
        assert png_chunks(data) == ["IHDR", "IDAT", "IEND"]
        assert len(data) == uniform_png_size(64)
    assert uniform_png_size(128) == 49_348  # 128 rows of 1 + 384 bytes, stored


def test_uniform_png_refuses_other_pixels():
    with pytest.raises(ValueError):
        uniform_png(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        uniform_png(np.zeros((8, 8, 3), dtype=np.uint16))


def test_catalog_lists_val_tiles_and_samples_and_decodes_both_alike(workspace):
    catalog = load_catalog(workspace / "samples", workspace / "tiles")
    assert len(catalog.real) == 12 and len(catalog.generated) == 10
    assert {i.split for i in catalog.real} == {"val"}  # never a train tile
    assert catalog.generated[3].sample_index == 3
    for identity in (catalog.real[0], catalog.generated[0]):
        pixels = catalog.pixels(identity)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert len(catalog.experiment.samples_sha256) == 64


def test_the_experiment_changes_with_either_manifest(workspace):
    before = load_catalog(workspace / "samples", workspace / "tiles").experiment
    manifest = workspace / "samples" / "manifest.json"
    manifest.write_text(manifest.read_text() + " ")
    after = load_catalog(workspace / "samples", workspace / "tiles").experiment
    assert after.tiles_sha256 == before.tiles_sha256
    assert after.samples_sha256 != before.samples_sha256


def test_catalog_refuses_samples_of_another_size(workspace):
    Image.new("RGB", (16, 16)).save(workspace / "samples" / "000004.png")
    with pytest.raises(UserError, match=r"000004.png is 16x16 px but the tiles .* are 32x32"):
        load_catalog(workspace / "samples", workspace / "tiles")
