"""A tiny checkpoint written with the export writer `canopy train` uses (docs/contract.md,
models/), and its params."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from canopy import weights
from canopy.model.process import build_network
from canopy.model.unet import Unet

MODEL = {"dim": 8, "init_dim": None, "dim_mults": [1, 2], "channels": 3, "convnext_mult": 2,
         "norm": "group", "norm_groups": 1}
DIFFUSION = {"timesteps": 20, "objective": "eps", "loss": "l2", "min_snr_gamma": None}


def write_checkpoint(models: Path, model: dict = MODEL, tile_size: int = 16, seed: int = 0,
                     diffusion: dict = DIFFUSION, data_stats: dict | None = None,
                     adjust: Callable[[Unet], None] | None = None) -> Path:
    """`adjust`: changes the fresh network's weights before they are written (e.g. a layer that
    starts at zero, given weights as if trained)."""
    torch.manual_seed(seed)
    net = build_network(model, diffusion.get("skip_input", False))
    if adjust is not None:
        adjust(net)
    config = {"model": model, "diffusion": diffusion, "schedule": "linear", "seed": 0,
              "tile_size": tile_size, "step": 7, "params_hash": "x", "data_hash": "y"}
    if data_stats is not None:
        config["data_stats"] = data_stats
    path = models / weights.EXPORT_FILE
    weights.write_export(path, net.state_dict(), config)
    return path


def write_params(folder: Path, diffusion: dict = DIFFUSION, model: dict = MODEL, **sample) -> Path:
    params = {"seed": 3, "schedule": "linear", "model": model, "diffusion": diffusion,
              "etl": {"tile_size": 16, "stride": 16},
              "paths": {"models": str(folder / "models"), "samples": str(folder / "samples")},
              "sample": {"n": 6, "batch_size": 4, "steps": 5, "device": "cpu", **sample}}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_checkpoint(tmp_path / "models")
    write_params(tmp_path)
    return tmp_path
