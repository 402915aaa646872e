"""Conditioned training: conditions from the tiles' metadata, condition dropout, the export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canopy import weights
from canopy.errors import UserError
from canopy.model.process import build
from canopy.train.data import BatchStream, CropPlan, build_index, train_shards
from canopy.train.loop import train
from tests.tiles import write_tiles as shared_write_tiles
from tests.train.conftest import tile_image, tiny_params

REGIONS = ["conifer", "broadleaf", "open"]


def _region_tiles(root, n_train=12, n_val=3):
    rng = np.random.default_rng(0)
    images = np.stack([tile_image(rng, 16) for _ in range(n_train + n_val)])
    meta = [{"region": REGIONS[i % 3], "acquired": f"2020-0{1 + i % 9}-01"}
            for i in range(n_train + n_val)]
    return shared_write_tiles(root, images[:n_train], images[n_train:], 5,
                              metadata={"train": meta[:n_train], "val": meta[n_train:]})


def test_a_conditioned_model_trains_exports_and_resumes_exactly(tmp_path):
    tiles = _region_tiles(tmp_path / "tiles")
    out = tmp_path / "models"
    params = tiny_params(tiles, out, steps=6, model={"condition": ["month", "region"]})
    assert train(params, quiet=True).step == 6
    state, config = weights.read_export(out / weights.EXPORT_FILE)
    assert config["model"]["condition"] == {"region": sorted(REGIONS), "month": None}
    net, _ = build(config)
    net.load_state_dict(state)  # the export rebuilds its conditioned network
    from safetensors import safe_open

    with safe_open(str(out / weights.EXPORT_FILE), "pt") as handle:
        assert handle.metadata()["format"] == weights.CONDITIONED_FORMAT

    resumed_out = tmp_path / "resumed"
    resumed = tiny_params(tiles, resumed_out, steps=6, model={"condition": ["month", "region"]})

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_params(tiles, resumed_out, steps=6, checkpoint_every=3,
                          model={"condition": ["month", "region"]}), quiet=True, on_step=interrupt)
    assert train(resumed, quiet=True).start == 3
    again, _ = weights.read_export(resumed_out / weights.EXPORT_FILE)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_a_condition_no_tile_has_is_one_clear_error(tmp_path):
    tiles = _region_tiles(tmp_path / "tiles")
    params = tiny_params(tiles, tmp_path / "models", steps=2, model={"condition": ["tree_cover"]})
    with pytest.raises(UserError, match="no train tile's metadata gives it"):
        train(params, quiet=True)


def test_batches_carry_each_tiles_condition_row_also_as_crops(tmp_path):
    tiles = _region_tiles(tmp_path / "tiles")
    index = build_index(train_shards(tiles), tiles)
    rows = np.arange(len(index), dtype=np.float32)[:, None]
    from dataclasses import replace

    index = replace(index, conditions=rows)
    stream = BatchStream(index, 4, seed=0, augment="none")
    item = next(iter(stream))
    assert item["conditions"][:, 0].tolist() == stream.tile_ids(0).astype(float).tolist()
    crops = BatchStream(index, 4, seed=0, augment="none", crop=CropPlan(1.0, (2,), 10))
    assert crops.batch_conditions(0).shape == (16, 1)
    assert crops.batch_conditions(0)[:4, 0].unique().numel() == 1  # a tile's 4 crops


def test_condition_dropout_drops_whole_conditions_at_its_rate(tmp_path):
    from canopy.train.engine import Trainer
    from canopy.train.runtime import resolve_runtime

    tiles = _region_tiles(tmp_path / "tiles")
    params = tiny_params(tiles, tmp_path / "m", model={"condition": ["region"]},
                         condition_dropout=0.3)
    trainer = Trainer(params, resolve_runtime(params.train), condition={"region": ["a", "b"]})
    rows = torch.zeros(4000, 1)
    dropped = trainer._drop_conditions(rows, step=5).isnan()[:, 0]
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    assert torch.equal(dropped, trainer._drop_conditions(rows, step=5).isnan()[:, 0])
    assert not torch.equal(dropped, trainer._drop_conditions(rows, step=6).isnan()[:, 0])


def test_a_spectral_model_conditioned_on_region_has_a_filter_per_region(tmp_path):
    """Its export carries each class's stats in the model's class order, from the manifest's
    regions, and rebuilds one filter per class; tiles of before etl measured regions are one
    clear error."""
    import json

    from canopy import tiles as tiles_io
    from canopy.model.spectral import ClassSpectralSkip

    tiles = _region_tiles(tmp_path / "tiles", n_train=15)
    spectral = {"process": "edm", "standardize": True, "timestep_sampling": "lognormal",
                "preconditioning": "spectral"}
    out = tmp_path / "models"
    train(tiny_params(tiles, out, spectral, {"spacing": "karras"}, steps=2,
                      model={"condition": ["region"]}), quiet=True)
    _, config = weights.read_export(out / weights.EXPORT_FILE)
    regions = tiles_io.train_stats(tiles_io.read_manifest(tiles, "x"), tiles)["regions"]
    assert config["data_stats"]["class_stats"] == [
        {key: regions[name][key] for key in ("mean", "std", "spectrum")}
        for name in sorted(REGIONS)]
    _, process = build(config)
    assert isinstance(process.spectral, ClassSpectralSkip) and len(process.spectral.filters) == 4

    manifest_path = tiles / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["train_stats"]["regions"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="each region's power spectrum.*re-run `canopy etl`"):
        train(tiny_params(tiles, tmp_path / "m2", spectral, {"spacing": "karras"}, steps=1,
                          model={"condition": ["region"]}), quiet=True)
