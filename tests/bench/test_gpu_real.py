"""bench/gpu_real.py: real imagery trained, sampled and scored on a lent GPU in one command,
checked on the CPU before GPU time is spent."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import gpu_real
import numpy as np
import pytest

from canopy import tiles
from canopy.params import load_params, parse_params
from tests.bench.conftest import as_on_the_gpu_machine
from tests.conftest import REPO_ROOT
from tests.tiles import write_tiles


def test_the_recipe_is_params_yamls_with_the_schemas_defaults():
    """The script rebuilds what Trainer reads without pydantic: its diffusion, augmentation and
    sampler must be params.yaml's (the product's recipe), and every train key it does not
    choose the schema's default."""
    product = load_params(REPO_ROOT / "params.yaml")
    assert {key: getattr(product.diffusion, key) for key in gpu_real.PRODUCT_DIFFUSION} \
        == gpu_real.PRODUCT_DIFFUSION
    assert gpu_real.PRODUCT_AUGMENT == product.train.augment
    assert gpu_real.PRODUCT_TIME_MODULATION == product.model.time_modulation
    assert gpu_real.SAMPLER == {"name": product.sample.sampler, "steps": product.sample.steps,
                                "eta": product.sample.eta, "spacing": product.sample.spacing}
    fields = type(product.train).model_fields
    for recipe in gpu_real.GPU_RECIPES:
        mirrored = gpu_real.recipe_params(recipe)
        checked = parse_params({"schedule": mirrored.schedule,
                                "diffusion": dict(vars(mirrored.diffusion)),
                                "sample": {"spacing": gpu_real.SAMPLER["spacing"]}})
        for name, value in vars(mirrored.diffusion).items():
            assert getattr(checked.diffusion, name) == value, name
        for name in ("weight_decay", "grad_clip", "ema_every", "lr_decay", "lr_decay_fraction",
                     "adam_beta2"):
            assert getattr(mirrored.train, name) == fields[name].default, name
        assert mirrored.train.phema_stds == []  # the script keeps its own EMAs side by side
        kwargs = mirrored.model.unet_kwargs()
        assert (kwargs["dim"], kwargs["dim_mults"]) == (recipe.dim, list(recipe.dim_mults))
        assert kwargs["time_modulation"] == product.model.time_modulation


def test_quarters_are_the_parents_four_corners_in_the_parents_split(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    val = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    src = write_tiles(tmp_path / "src", train, val)
    dst = gpu_real.quarter_tiles(src, tmp_path / "dst")
    manifest = tiles.read_manifest(dst, point_at="x")
    assert manifest["tile_size"] == 8
    # the quarters hold the parents' train pixels: the same stats for standardising the data
    want_stats = tiles.ChannelStats()
    for parent in train:
        for r in range(2):
            for c in range(2):
                want_stats.add(parent[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8])
    assert tiles.train_stats(manifest, dst)["spectrum"]["tile_size"] == 8
    assert tiles.train_stats(manifest, dst) == want_stats.to_json()
    for split, parents in (("train", train), ("val", val)):
        got = gpu_real.read_split(dst, split)
        assert len(got) == 4 * len(parents)
        want = np.stack([p[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
                         for p in parents for r in range(2) for c in range(2)])
        np.testing.assert_array_equal(got, want)


def test_packed_samples_respect_the_file_limits(tmp_path, monkeypatch):
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    one = len(gpu_real.samples_io.encode_image(images[0]))
    monkeypatch.setattr(gpu_real, "TAR_LIMIT", 3 * (one + 1024) + 2048)
    files, packed = gpu_real.pack_samples(images, tmp_path, "x", max_files=2)
    assert files == ["samples-x-0.tar", "samples-x-1.tar"] and packed == 6
    names = []
    for name in files:
        assert (tmp_path / name).stat().st_size <= gpu_real.TAR_LIMIT + 10240
        with tarfile.open(tmp_path / name) as tar:
            names += tar.getnames()
    assert names == [f"{i:06d}.png" for i in range(6)]


def test_draw_samples_the_denoiser_as_canopy_sample_does():
    """Under EDM's process the samplers take D(x; sigma), the network in its preconditioning:
    draw() must wrap it as `canopy sample` does, not sample the bare network."""
    from types import SimpleNamespace

    import torch

    from canopy.model.process import build_process, process_config
    from canopy.model.registry import make_scheduler
    from canopy.model.unet import Unet
    from canopy.sample.generate import generate

    torch.manual_seed(0)
    net = Unet(dim=8, dim_mults=(1, 2)).eval()
    trainer = SimpleNamespace(diffusion=build_process(process_config({"process": "edm"},
                                                                     "linear", None)))
    dev = SimpleNamespace(device=torch.device("cpu"), amp_dtype=None, channels_last=False)
    drawn = gpu_real.draw(net, trainer, 2, 16, dev)
    sampler = dict(gpu_real.SAMPLER)
    scheduler = make_scheduler(sampler.pop("name"), trainer.diffusion, **sampler)
    cpu = torch.device("cpu")
    expected = generate(trainer.diffusion.denoiser(net), scheduler, [0, 1], 0, (3, 16, 16), cpu,
                        None).numpy()
    bare = generate(net, scheduler, [0, 1], 0, (3, 16, 16), cpu, None).numpy()
    assert np.array_equal(drawn, expected) and not np.array_equal(drawn, bare)


AS_ON_THE_GPU_MACHINE = as_on_the_gpu_machine("gpu_real.py")


@pytest.mark.slow
def test_smoke_run_trains_samples_and_scores_both_sizes(tmp_path):
    rng = np.random.default_rng(2)
    src = write_tiles(tmp_path / "tiles", rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", AS_ON_THE_GPU_MACHINE, "--smoke", "--skip-mfu", "--tiles",
         str(src), "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "gpu_real.json").read_text())
    assert [run["recipe"]["name"] for run in data["runs"]] == ["smoke-small", "smoke-full"]
    for run in data["runs"]:
        assert run["train"]["steps"] >= run["recipe"]["min_steps"]
        assert run["train"]["loss_curve"] and run["train"]["images_per_s"] > 0
        assert set(run["select"]["swd_by_ema_decay"]) == {str(d) for d in run["recipe"]["ema_decays"]}
        assert run["final"]["packed"] == run["recipe"]["samples"]
        guided = run["select"]["autoguidance"]
        assert 0 < run["train"]["guide_step"] <= run["train"]["steps"] and guided["swd"] > 0
        assert guided["kept"] == (guided["swd"] < min(run["select"]["swd_by_ema_decay"].values()))
        with tarfile.open(out / run["final"]["files"][0]) as tar:
            assert len(tar.getnames()) == run["recipe"]["samples"]
    assert "smoke-full" in (out / "gpu_real.log").read_text()
