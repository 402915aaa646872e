"""bench/gpu_mfu.py: the GPU measurement script, checked on the CPU before GPU time is spent."""

from __future__ import annotations

import json
import subprocess
import sys

import gpu_mfu
import torch

from canopy.params import parse_params
from canopy.train.engine import Trainer
from canopy.train.runtime import resolve_runtime
from tests.bench.conftest import as_on_the_gpu_machine
from tests.conftest import REPO_ROOT

SHAPE = gpu_mfu.Shape(dim=8, dim_mults=(1, 2), size=16)


def schema_params():
    return parse_params({"model": {"dim": SHAPE.dim, "dim_mults": list(SHAPE.dim_mults)},
                         "train": {"device": "cpu", "precision": "fp32", "compile": "off"}})


def test_bench_params_are_the_schema_defaults():
    """The script rebuilds what Trainer reads without pydantic: it must stay the product's."""
    schema, mirrored = schema_params(), gpu_mfu.bench_params(SHAPE)
    assert mirrored.model.unet_kwargs() == schema.model.unet_kwargs()
    assert (mirrored.seed, mirrored.schedule) == (schema.seed, schema.schedule)
    for name, value in vars(mirrored.diffusion).items():
        assert getattr(schema.diffusion, name) == value, name
    for name, value in vars(mirrored.train).items():
        assert getattr(schema.train, name) == value, name


def test_the_script_runs_the_products_training_step():
    """Same initial weights, same batch, one step each: the same weights and EMA after it."""
    schema = schema_params()
    product = Trainer(schema, resolve_runtime(schema.train))
    dev = gpu_mfu.Device(torch.device("cpu"), None, product.runtime.channels_last, None)
    plan = gpu_mfu.SMOKE_PLAN
    assert plan.shape == SHAPE
    script = gpu_mfu.make_trainer(plan, dev, batch=2, compile_mode=None)
    images = gpu_mfu.uint8_batch(2, SHAPE.size, pin=False)
    for trainer in (product, script):
        trainer.step(images, gpu_mfu.FIRST_STEP)
    for name, value in product.model.state_dict().items():
        assert torch.equal(value, script.model.state_dict()[name]), name
    for name, value in product.ema.model.state_dict().items():
        assert torch.equal(value, script.ema.model.state_dict()[name]), name


AS_ON_THE_GPU_MACHINE = as_on_the_gpu_machine("gpu_mfu.py")


def test_smoke_run_measures_everything(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", AS_ON_THE_GPU_MACHINE, "--smoke", "--device", "cpu",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "gpu_mfu.json").read_text())
    assert data["flops"]["training_gflop"] > data["flops"]["forward_gflop"] > 0
    train = [row for row in data["train"] if "error" not in row]
    assert len(train) == len(data["train"])
    assert {row["batch"] for row in train} == {2, 4}
    assert {row["variant"] for row in train} == {"product", "fused-off", "tf32", "repeat"}
    assert all(row["images_per_s"] > 0 and row["mfu"] is None for row in train)  # CPU: no peak
    profiled = [row for row in train if "profile" in row]
    assert {row["batch"] for row in profiled} == {2, 4}
    assert all(row["profile"]["top"] and row["parts_ms"]["forward_backward"] > 0
               for row in profiled)
    assert [row["sampler"] for row in data["sampling"]] == ["ddim", "dpmpp2m"]
    assert data["batch_invariance"]["equal"] is True
    assert [row["workers"] for row in data["loader"]] == [0, 1]
    assert all(row["images_per_s"] > 0 for row in data["loader"])
    assert not data["skipped"]
    assert "batch invariance of sampling" in (out / "gpu_mfu.txt").read_text()
