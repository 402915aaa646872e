"""`canopy sample` of a conditioned model: sample.condition, sample.guidance, the manifest's
conditions, the grid's rows, reproducibility per (seed, i, condition)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from canopy import weights
from canopy.cli import app
from canopy.model.unet import Unet
from tests.sample.conftest import DIFFUSION, MODEL, write_checkpoint

CONDITION = {"region": ["broadleaf", "conifer", "open"], "month": None}


# an edm model with the spectral skip, one filter per region (model/spectral.py)
SPECTRAL = {"timesteps": 20, "objective": "eps", "loss": "l2", "process": "edm",
            "standardize": True, "timestep_sampling": "lognormal", "preconditioning": "spectral",
            "sigma_data": 1.0}


def _spectral_stats(regions):
    rng = np.random.default_rng(0)

    def spectrum(scale):
        radial = [(np.eye(3) * scale * 50 / (1 + r) ** 2 + 0.2).tolist() for r in range(12)]
        return {"tile_size": 16, "radial": radial}

    return {"mean": [-0.3, -0.2, -0.4], "std": [0.3, 0.25, 0.2], "spectrum": spectrum(1.0),
            "class_stats": [{"mean": rng.uniform(-0.6, 0.0, 3).round(3).tolist(),
                             "std": [0.2, 0.2, 0.15], "spectrum": spectrum(0.5 + k)}
                            for k in range(len(regions))]}


def _workspace(tmp_path, model_condition=CONDITION, diffusion=DIFFUSION, **sample):
    """A conditioned (or, with None, unconditioned) export and params asking `sample`."""
    condition = model_condition
    model = {**MODEL, "condition": condition} if condition else MODEL
    torch.manual_seed(0)
    net = Unet(**model)
    config = {"model": model, "diffusion": diffusion, "schedule": "linear", "seed": 0,
              "tile_size": 16, "step": 7, "params_hash": "x", "data_hash": "y"}
    if diffusion is SPECTRAL:
        config["data_stats"] = _spectral_stats(condition["region"])
    (tmp_path / "models").mkdir(exist_ok=True)
    weights.write_export(tmp_path / "models" / weights.EXPORT_FILE, net.state_dict(), config)
    params_model = {**MODEL, "condition": list(condition or {})}
    params = {"seed": 3, "schedule": "linear", "model": params_model, "diffusion": diffusion,
              "etl": {"tile_size": 16, "stride": 16},
              "paths": {"models": str(tmp_path / "models"), "samples": str(tmp_path / "samples")},
              "sample": {"n": 6, "batch_size": 4, "steps": 3, "device": "cpu", **sample}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _sample(workspace, *args):
    return CliRunner().invoke(app, ["sample", "-q", "--params", str(workspace / "params.yaml"),
                                    *args])


def _images(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("[0-9]*.png"))}


def test_each_class_an_equal_share_recorded_per_image_and_a_grid_row_per_class(tmp_path):
    ws = _workspace(tmp_path, {"region": ["broadleaf", "conifer", "open"]},
                    condition={"region": "each"}, guidance=2.0, grid_images=6)
    result = _sample(ws)
    assert result.exit_code == 0, result.output
    manifest = json.loads((ws / "samples" / "manifest.json").read_text())
    assert manifest["guidance"] == 2.0 and manifest["condition"] == {"region": "each"}
    regions = [record["condition"]["region"] for record in manifest["images"]]
    assert regions == ["broadleaf", "conifer", "open"] * 2
    grid = np.asarray(Image.open(ws / "samples" / "grid.png"))
    assert grid.shape[:2] == (3 * 18 + 2, 2 * 18 + 2)  # 3 rows (classes) of 2, 16 px + 2 pad


@pytest.mark.parametrize("diffusion", [DIFFUSION, SPECTRAL], ids=["vp", "spectral-per-class"])
def test_image_i_is_fixed_by_seed_index_and_condition_whatever_the_batch(tmp_path, diffusion):
    spacing = {"spacing": "karras"} if diffusion is SPECTRAL else {}
    ws = _workspace(tmp_path, diffusion=diffusion, condition={"region": "each", "month": 6},
                    guidance=3.0, **spacing)
    runs = {}
    for n, batch in [(6, 4), (6, 1), (2, 5)]:
        out = ws / f"s-{n}-{batch}"
        result = _sample(ws, "--n", str(n), "--batch-size", str(batch), "--samples", str(out))
        assert result.exit_code == 0, result.output
        runs[(n, batch)] = _images(out)
    assert runs[(6, 4)] == runs[(6, 1)]
    assert runs[(2, 5)] == {k: v for k, v in runs[(6, 4)].items() if int(k[:6]) < 2}
    # the same seed and index under another condition is another image
    _workspace(tmp_path, diffusion=diffusion, condition={"region": "open", "month": 6},
               guidance=3.0, **spacing)
    assert _sample(ws, "--samples", str(ws / "open")).exit_code == 0
    assert _images(ws / "open")["000000.png"] != runs[(6, 4)]["000000.png"]
    assert _images(ws / "open")["000002.png"] == runs[(6, 4)]["000002.png"]  # open both times


def test_guidance_zero_needs_no_condition_and_records_none(tmp_path):
    ws = _workspace(tmp_path, guidance=0.0)
    assert _sample(ws).exit_code == 0
    manifest = json.loads((ws / "samples" / "manifest.json").read_text())
    assert all("condition" not in record for record in manifest["images"])
    assert manifest["guidance"] == 0.0


def test_unconditioned_samples_keep_their_manifest_keys(tmp_path):
    ws = _workspace(tmp_path, None)
    assert _sample(ws).exit_code == 0
    manifest = json.loads((ws / "samples" / "manifest.json").read_text())
    assert "guidance" not in manifest and "condition" not in manifest
    assert set(manifest["images"][0]) == {"file", "sha256"}


@pytest.mark.parametrize("condition, sample, message", [
    (CONDITION, {"condition": {"region": "each"}}, "lacks month"),
    (CONDITION, {"condition": {"region": "pine", "month": 3}}, "'pine' is not a class"),
    (None, {"condition": {"region": "open"}}, "is not conditioned"),
    (None, {"guidance": 2.0}, "is not conditioned"),
    (CONDITION, {"condition": {"month": 13}}, "month 1..12"),
])
def test_a_bad_request_is_one_line_and_exit_2(tmp_path, condition, sample, message):
    ws = _workspace(tmp_path, condition, **sample)
    result = _sample(ws)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (ws / "samples").exists()


def test_a_model_trained_on_other_conditions_than_params_is_refused(tmp_path):
    ws = _workspace(tmp_path, condition={"region": "open", "month": 1})
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["model"]["condition"] = ["region"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    result = _sample(ws)
    assert result.exit_code == 2 and "condition" in result.output


def test_an_unconditioned_export_samples_byte_identically_to_before(tmp_path):
    # the export written by the sample tests' own writer, sampled with and without the new keys
    write_checkpoint(tmp_path / "models")
    params = {"seed": 3, "schedule": "linear", "model": MODEL, "diffusion": DIFFUSION,
              "etl": {"tile_size": 16, "stride": 16},
              "paths": {"models": str(tmp_path / "models"), "samples": str(tmp_path / "a")},
              "sample": {"n": 3, "steps": 3, "device": "cpu"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert _sample(tmp_path).exit_code == 0
    params["sample"].update(guidance=0.0)
    params["paths"]["samples"] = str(tmp_path / "b")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert _sample(tmp_path).exit_code == 0
    assert _images(tmp_path / "a") == _images(tmp_path / "b")


def test_the_command_line_overrides_guidance_and_region(tmp_path):
    ws = _workspace(tmp_path, {"region": ["broadleaf", "conifer", "open"]},
                    condition={"region": "each"})
    result = _sample(ws, "--guidance", "1.5", "--region", "conifer")
    assert result.exit_code == 0, result.output
    manifest = json.loads((ws / "samples" / "manifest.json").read_text())
    assert manifest["guidance"] == 1.5
    assert {r["condition"]["region"] for r in manifest["images"]} == {"conifer"}
