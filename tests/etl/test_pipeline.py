"""Tiling, filters, shards, split and manifest of a whole etl run."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canopy.errors import UserError
from canopy.etl.pipeline import run_etl
from canopy.tiles import split_of
from tests.etl.rasters import forest_rgb, make_params, write_raster


def local_params(*paths, **etl):
    settings = {"source": "local", "tile_size": 16, "stride": 16, "local": {"paths": list(paths)}}
    return make_params(**{**settings, **etl})


def shard_members(root):
    members = {}
    for shard in sorted(root.glob("*/shard-*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                members[f"{shard.parent.name}/{info.name}"] = (info, tar.extractfile(info).read())
    return members


def test_tiles_cover_the_raster_in_full_tiles_only(tmp_path):
    path = write_raster(tmp_path / "f.tif", forest_rgb(40, 50))  # 2 x 3 full 16 px tiles
    result = run_etl(local_params(str(path)), tmp_path / "out", progress=False)
    assert result.filters.candidates == 6 and result.filters.kept == 6
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(manifest["counts"].values()) == 6
    keys = {name.split("/")[1].rsplit(".", 1)[0] for name in shard_members(tmp_path / "out")}
    assert keys == {f"f_{r:06d}_{c:06d}" for r in (0, 16) for c in (0, 16, 32)}


def test_tile_png_and_json_match_the_source_window(tmp_path):
    data = forest_rgb(32, 32, seed=3)
    path = write_raster(tmp_path / "w.tif", data)
    run_etl(local_params(str(path), val_fraction=0.0), tmp_path / "out", progress=False)
    members = shard_members(tmp_path / "out")
    _, png = members["train/w_000016_000000.png"]
    tile = np.asarray(Image.open(io.BytesIO(png)))
    assert tile.shape == (16, 16, 3)
    np.testing.assert_array_equal(tile, data[:, 16:32, 0:16].transpose(1, 2, 0))
    meta = json.loads(members["train/w_000016_000000.json"][1])
    assert meta["window"] == {"col": 0, "row": 16, "width": 16, "height": 16}
    assert meta["crs"] == "EPSG:32633"
    assert meta["bounds"] == [500000.0, 6000000.0 - 320, 500160.0, 6000000.0 - 160]
    assert meta["valid_fraction"] == 1.0 and meta["vegetation_method"] == "gli"


def test_stride_overlaps_tiles(tmp_path):
    path = write_raster(tmp_path / "s.tif", forest_rgb(32, 32))
    result = run_etl(local_params(str(path), stride=8), tmp_path / "out", progress=False)
    assert result.filters.candidates == 9  # offsets 0, 8, 16 on each axis


def test_filters_are_counted_in_the_manifest(tmp_path):
    data = forest_rgb(16, 64)
    data[:, :, 16:32] = 255  # tile 2: nodata
    data[:, :, 32:48] = np.array([132, 108, 84], dtype=np.uint8)[:, None, None]  # tile 3: soil
    path = write_raster(tmp_path / "m.tif", data, nodata=255)
    run_etl(local_params(str(path)), tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["filters"]["candidates"] == 4
    assert manifest["filters"]["dropped_invalid"] == 1
    assert manifest["filters"]["dropped_vegetation"] == 1
    assert manifest["filters"]["kept"] == 2
    assert manifest["sources"][0]["dropped_invalid"] == 1


def test_zero_thresholds_disable_the_filters(tmp_path):
    data = np.full((3, 16, 32), 255, dtype=np.uint8)
    path = write_raster(tmp_path / "z.tif", data, nodata=255)
    result = run_etl(local_params(str(path), min_valid_fraction=0, min_vegetation_fraction=0),
                     tmp_path / "out", progress=False)
    assert result.filters.kept == 2


def test_no_surviving_tile_names_the_filter(tmp_path):
    data = np.full((3, 32, 32), 120, dtype=np.uint8)  # grey: no vegetation
    path = write_raster(tmp_path / "grey.tif", data)
    with pytest.raises(UserError, match=r"4 a vegetation fraction under etl.min_vegetation_fraction"):
        run_etl(local_params(str(path)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_split_is_a_stable_function_of_the_key():
    keys = [f"scene_{i:06d}_000000" for i in range(4000)]
    val = [k for k in keys if split_of(k, 0.1) == "val"]
    assert 0.08 < len(val) / len(keys) < 0.12
    assert val == [k for k in keys if split_of(k, 0.1) == "val"]
    # Raising the fraction only moves tiles into val, never out of it.
    assert set(val) <= {k for k in keys if split_of(k, 0.2) == "val"}
    assert all(split_of(k, 0.0) == "train" for k in keys)


def test_adding_imagery_does_not_move_existing_tiles(tmp_path):
    a = write_raster(tmp_path / "a.tif", forest_rgb(64, 64, seed=1))
    b = write_raster(tmp_path / "b.tif", forest_rgb(64, 64, seed=2))
    run_etl(local_params(str(a), val_fraction=0.3), tmp_path / "one", progress=False)
    run_etl(local_params(str(a), str(b), val_fraction=0.3), tmp_path / "two", progress=False)
    one, two = shard_members(tmp_path / "one"), shard_members(tmp_path / "two")
    for name, (_, data) in one.items():
        assert two[name][1] == data


def test_same_inputs_give_byte_identical_output(tmp_path):
    path = write_raster(tmp_path / "d.tif", forest_rgb(64, 64))
    params = local_params(str(path), val_fraction=0.3, shard_size=5, workers=2)
    run_etl(params, tmp_path / "r1", progress=False)
    run_etl(params, tmp_path / "r2", progress=False)
    files = sorted(p.relative_to(tmp_path / "r1") for p in (tmp_path / "r1").rglob("*") if p.is_file())
    assert len(files) > 4
    for rel in files:
        assert (tmp_path / "r1" / rel).read_bytes() == (tmp_path / "r2" / rel).read_bytes(), rel


def test_inline_and_parallel_encoding_agree(tmp_path):
    path = write_raster(tmp_path / "p.tif", forest_rgb(48, 48))
    run_etl(local_params(str(path), workers=1), tmp_path / "one", progress=False)
    run_etl(local_params(str(path), workers=2), tmp_path / "two", progress=False)
    for shard in (tmp_path / "one").rglob("*.tar"):
        assert shard.read_bytes() == (tmp_path / "two" / shard.relative_to(tmp_path / "one")).read_bytes()


def test_manifest_lists_every_shard_with_its_sha256(tmp_path):
    path = write_raster(tmp_path / "h.tif", forest_rgb(64, 64))
    run_etl(local_params(str(path), val_fraction=0.25, shard_size=3), tmp_path / "out", progress=False)
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["tile_size"] == 16
    assert manifest["synthetic"] is False
    listed = {s["file"] for s in manifest["shards"]}
    assert listed == {str(p.relative_to(out)) for p in out.rglob("*.tar")}
    for shard in manifest["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert shard["tiles"] <= 3
        with tarfile.open(out / shard["file"]) as tar:
            assert len(tar.getnames()) == 2 * shard["tiles"]
    for split in ("train", "val"):
        assert manifest["counts"][split] == sum(
            s["tiles"] for s in manifest["shards"] if s["split"] == split)
    assert len(manifest["params_hash"]) == 64
    assert (out / "preview.png").is_file()


def test_tar_headers_are_normalised(tmp_path):
    path = write_raster(tmp_path / "t.tif", forest_rgb(16, 16))
    run_etl(local_params(str(path), val_fraction=0.0), tmp_path / "out", progress=False)
    for info, _ in shard_members(tmp_path / "out").values():
        assert (info.mtime, info.uid, info.gid, info.uname, info.mode) == (0, 0, 0, "", 0o644)


def test_failed_run_keeps_the_previous_output(tmp_path, monkeypatch):
    path = write_raster(tmp_path / "k.tif", forest_rgb(32, 32))
    out = tmp_path / "out"
    run_etl(local_params(str(path)), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    from canopy import tiles

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run

    monkeypatch.setattr(tiles.ShardWriter, "add", explode)
    with pytest.raises(KeyboardInterrupt):
        run_etl(local_params(str(path), stride=8), out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".out.staging-*"))


def test_reads_are_windowed(tmp_path, monkeypatch):
    """Every read covers one row of tiles, never the whole raster."""
    from canopy.etl import tiling

    monkeypatch.setattr(tiling, "MAX_READ_WIDTH", 40)
    path = write_raster(tmp_path / "big.tif", forest_rgb(64, 128))
    from canopy.etl import scene

    shapes = []
    original = scene.SceneReader.read

    def spy(self, window):
        shapes.append((window.height, window.width))
        return original(self, window)

    monkeypatch.setattr(scene.SceneReader, "read", spy)
    result = run_etl(local_params(str(path)), tmp_path / "out", progress=False)
    assert result.filters.candidates == 32
    assert max(h for h, _ in shapes) == 16 and max(w for _, w in shapes) <= 40


def test_the_manifest_holds_the_train_tiles_channel_stats(tmp_path):
    """train_stats: the per-channel mean and std of exactly the train tiles (val left out),
    in the network's [-1, 1] units, as train reads them back."""
    from canopy import tiles

    path = write_raster(tmp_path / "h.tif", forest_rgb(64, 64))
    out = tmp_path / "out"
    run_etl(local_params(str(path), val_fraction=0.25, shard_size=3), out, progress=False)
    manifest = tiles.read_manifest(out, "x")
    train = np.stack(list(tiles.read_tiles(tiles.list_tiles(out, "train"), 16)))
    values = train.reshape(-1, 3).astype(np.float64) / 127.5 - 1
    stats = tiles.train_stats(manifest, out)
    assert manifest["counts"]["val"] > 0
    assert np.allclose(stats["mean"], values.mean(axis=0), atol=1e-6)
    assert np.allclose(stats["std"], values.std(axis=0), atol=1e-6)
    # and their cross-power spectrum, of the same tiles: its DC term is the covariance of the
    # train tiles' mean colours (standardised, times the pixels of a tile)
    spectrum = stats["spectrum"]
    assert spectrum["tile_size"] == 16 and len(spectrum["radial"]) == 12
    z = (train.astype(np.float64) / 127.5 - 1 - values.mean(axis=0)) / values.std(axis=0)
    means = z.mean(axis=(1, 2))
    assert np.allclose(spectrum["radial"][0], 256 * np.cov(means.T, bias=True), rtol=1e-4)


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_output_path_over_the_users_files_is_refused_and_nothing_touched(tmp_path,
                                                                            monkeypatch):
    """`--tiles outside/photos` used to delete the photos, `--tiles "$PWD"` the project."""
    raster = write_raster(tmp_path / "k.tif", forest_rgb(32, 32))
    photos = tmp_path / "outside" / "photos"
    photos.mkdir(parents=True)
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text("seed: 0\n")
    (project / "data").mkdir()
    monkeypatch.chdir(project)
    before = _tree(tmp_path)
    cases = {photos: "(it holds holiday.jpg)",
             project: "(it is the folder canopy runs in, holding data/, params.yaml)",
             tmp_path: "(it contains the folder canopy runs in, holding k.tif, outside/, project/)",
             raster: "(it is a file of", Path("/dev/null"): "(it is a device)"}
    for target, what in cases.items():
        with pytest.raises(UserError) as refused:
            run_etl(local_params(str(raster)), target, progress=False)
        message = str(refused.value)
        assert message.startswith(f"{target} is not a tiles folder that Canopy wrote {what}")
        assert "point paths.tiles (--tiles) at a new or empty folder" in message
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.tif", "outside", "project"]


def test_an_earlier_tiles_folder_or_an_empty_one_is_replaced(tmp_path):
    raster = write_raster(tmp_path / "k.tif", forest_rgb(32, 32))
    out = tmp_path / "out"
    out.mkdir()  # empty: replaced
    run_etl(local_params(str(raster)), out, progress=False)
    run_etl(local_params(str(raster), stride=8), out, progress=False)  # its manifest: replaced
    assert json.loads((out / "manifest.json").read_text())["stride"] == 8
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "manifest.json").write_text('{"format_version": 1, "images": []}')
    with pytest.raises(UserError, match="samples is not a tiles folder"):
        run_etl(local_params(str(raster)), tmp_path / "samples", progress=False)
