"""`canopy evaluate` on conditioned samples: condition accuracy against its floor, and SWD and
C2ST per region."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from canopy import samples
from canopy.cli import app
from tests.evaluate.synthetic import forest_images
from tests.tiles import write_tiles

FAST = {"swd_patches_per_image": 16, "swd_projections": 16, "swd_repeats": 1, "c2st_steps": 5,
        "c2st_folds": 2, "bootstrap_replicates": 0, "trust_min_images": 2,
        "memorisation_size": 8, "fid": False, "condition_steps": 60}


def _tinted(n, seed, region):
    images = forest_images(n, 16, seed=seed).astype(np.int16)
    shift = {"green": (-40, 40, -40), "brown": (50, 0, -30)}[region]
    return np.clip(images + np.array(shift), 0, 255).astype(np.uint8)


def _write_samples(folder, images, regions):
    folder.mkdir(parents=True, exist_ok=True)
    records = [samples.write_image(folder, i, image, {"region": r})
               for i, (image, r) in enumerate(zip(images, regions))]
    samples.write_manifest(folder, samples.SamplesManifest(
        n=len(records), seed=0, sampler="test", steps=1, eta=0.0, timestep_spacing="test",
        weights="ema", checkpoint=samples.CheckpointRecord("test.safetensors", "", None),
        tile_size=16, device="cpu", precision="fp32", channels_last=False, images=records,
        guidance=1.0, condition={"region": "each"}))


@pytest.fixture
def workspace(tmp_path):
    regions = ["green", "brown"]
    train = np.concatenate([_tinted(24, 1 + k, r) for k, r in enumerate(regions)])
    val = np.concatenate([_tinted(6, 5 + k, r) for k, r in enumerate(regions)])
    meta = {"train": [{"region": r} for r in regions for _ in range(24)],
            "val": [{"region": r} for r in regions for _ in range(6)]}
    write_tiles(tmp_path / "tiles", train, val, shard_size=20, metadata=meta)
    return tmp_path


def _evaluate(workspace, sample_regions, asked_regions, name):
    images = np.concatenate([_tinted(8, 9 + k, r) for k, r in enumerate(sample_regions)])
    asked = [r for r in asked_regions for _ in range(8)]
    _write_samples(workspace / name, images, asked)
    (workspace / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "evaluate": FAST}))
    result = CliRunner().invoke(app, [
        "evaluate", "-q", "--params", str(workspace / "params.yaml"),
        "--samples", str(workspace / name), "--tiles", str(workspace / "tiles"),
        "--metrics", str(workspace / f"m-{name}")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / f"m-{name}" / "evaluate.json").read_text())
    details = json.loads((workspace / f"m-{name}" / "evaluate_details.json").read_text())
    return metrics, details


def test_samples_of_the_asked_region_score_high_and_mislabelled_ones_low(workspace):
    right, details = _evaluate(workspace, ["green", "brown"], ["green", "brown"], "right")
    assert right["condition_accuracy_floor"] >= 0.9  # the classifier tells the regions apart
    assert right["condition_accuracy"] >= 0.9
    assert right["condition_accuracy_ratio"] == pytest.approx(
        right["condition_accuracy"] / right["condition_accuracy_floor"], rel=1e-4)
    assert details["conditioned"]["regions"] == ["brown", "green"]
    for region in ("green", "brown"):
        assert {f"swd_region_{region}", f"swd_region_{region}_floor",
                f"c2st_accuracy_region_{region}"} <= set(right)
    assert "swd" in right and "c2st_accuracy" in right  # beside the unconditional metrics

    wrong, _ = _evaluate(workspace, ["green", "brown"], ["brown", "green"], "wrong")
    assert wrong["condition_accuracy"] <= 0.1
    assert wrong["condition_accuracy_floor"] == right["condition_accuracy_floor"]
    # each region's samples are the other region's: far from its val tiles
    assert wrong["swd_region_green"] > 2 * right["swd_region_green"]


def test_unconditioned_samples_get_no_condition_metrics(workspace):
    images = _tinted(8, 3, "green")
    folder = workspace / "plain"
    folder.mkdir()
    for i, image in enumerate(images):
        samples.write_image(folder, i, image)
    (workspace / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "evaluate": FAST}))
    result = CliRunner().invoke(app, ["evaluate", "-q", "--params", str(workspace / "params.yaml"),
                                      "--samples", str(folder), "--tiles",
                                      str(workspace / "tiles"), "--metrics", str(workspace / "m")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / "m" / "evaluate.json").read_text())
    assert not any(key.startswith("condition") or "_region_" in key for key in metrics)


def test_samples_asked_for_a_region_no_tile_has_are_refused(workspace):
    images = _tinted(4, 3, "green")
    _write_samples(workspace / "odd", images, ["blue"] * 4)
    (workspace / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "evaluate": FAST}))
    result = CliRunner().invoke(app, ["evaluate", "-q", "--params", str(workspace / "params.yaml"),
                                      "--samples", str(workspace / "odd"), "--tiles",
                                      str(workspace / "tiles"), "--metrics", str(workspace / "m")])
    assert result.exit_code == 2 and "region 'blue'" in result.output


class _Oracle:
    """A classifier that names class 0 for dark images, 1 for bright ones."""

    def predict(self, images):
        return (images.reshape(len(images), -1).mean(axis=1) > 127).astype(np.int64)


def test_the_accuracy_weighs_each_class_alike():
    from canopy.evaluate.conditioned import balanced_interval, condition_accuracy

    dark, bright = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    samples = np.concatenate([dark] * 4 + [bright] * 4)
    asked = np.array([0, 0, 0, 0, 1, 1, 0, 0])  # class 1 asked twice, both right
    val = np.concatenate([dark] * 9 + [dark])  # nine of class 0 named right, the one of 1 wrong
    val_labels = np.array([0] * 9 + [1])
    result = condition_accuracy(_Oracle(), ["a", "b"], samples, asked, val, val_labels)
    assert result.floor == 0.5  # not 0.9: class 1 counts as much as class 0
    assert result.accuracy == pytest.approx((4 / 6 + 1.0) / 2)
    assert result.confusion == [[4, 2], [0, 2]]
    interval = balanced_interval(result.correct_floor, val_labels, np.random.default_rng(0), 200)
    assert interval.low <= 0.5 <= interval.high
