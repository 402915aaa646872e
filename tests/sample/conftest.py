"""A tiny checkpoint in the format `canopy train` writes (README "models/"), and its params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from canopy.model.unet import Unet

MODEL = {"dim": 8, "init_dim": None, "dim_mults": [1, 2], "channels": 3, "convnext_mult": 2,
         "norm": "group", "norm_groups": 1}
DIFFUSION = {"timesteps": 20, "objective": "eps", "loss": "l2", "min_snr_gamma": None}


def write_checkpoint(models: Path, model: dict = MODEL, tile_size: int = 16, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = Unet(**model)
    config = {"model": model, "diffusion": DIFFUSION, "schedule": "linear", "seed": 0,
              "tile_size": tile_size, "step": 7, "params_hash": "x", "data_hash": "y"}
    models.mkdir(parents=True, exist_ok=True)
    path = models / "ema.safetensors"
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "canopy.model/1",
                                            "config": json.dumps(config, sort_keys=True)})
    return path


def write_params(folder: Path, **sample) -> Path:
    params = {"seed": 3, "schedule": "linear", "model": MODEL, "diffusion": DIFFUSION,
              "etl": {"tile_size": 16, "stride": 16},
              "sample": {"n": 6, "batch_size": 4, "steps": 5, "device": "cpu",
                         "models": str(folder / "models"), "out": str(folder / "samples"), **sample}}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_checkpoint(tmp_path / "models")
    write_params(tmp_path)
    return tmp_path
