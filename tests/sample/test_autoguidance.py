"""Autoguidance (sample.autoguidance): the model guided by its own earlier weights, rebuilt
from the post-hoc EMA snapshots (model/sampling.py, sample/checkpoint.py load_guide)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from canopy.cli import app
from canopy.errors import UserError
from canopy.model.registry import make_scheduler
from canopy.model.sampling import _autoguided_forward, noise_to_signal, sample_images
from canopy.params import parse_params
from canopy.sample.checkpoint import load_checkpoint, load_guide
from canopy.train.loop import train

from ..train.conftest import tiny_params, write_tiles


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny shapes: one torch thread (see tests/conftest.py)."""


@pytest.fixture
def trained(tmp_path):
    """A tiny model trained 6 steps with post-hoc EMA snapshots at steps 2, 4 and 6, and a
    params file that samples it."""
    models = tmp_path / "models"
    params = tiny_params(write_tiles(tmp_path / "tiles"), models, steps=6,
                         phema_stds=[0.05, 0.1], phema_every=2)
    train(params, quiet=True)
    raw = params.model_dump(mode="json")
    raw["sample"] = {"n": 3, "batch_size": 2, "steps": 3, "device": "cpu", "precision": "fp32"}
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw))
    return tmp_path, path


def _sample(folder, params, name, *extra):
    result = CliRunner().invoke(app, ["sample", "-q", "-p", str(params), "--samples",
                                      str(folder / name), *extra])
    return result, folder / name / "manifest.json"


def test_autoguided_samples_are_reproducible_recorded_and_differ(trained):
    folder, params = trained
    outs = {}
    for name, extra in (("off", []), ("a", ["--autoguidance", "2"]),
                        ("b", ["--autoguidance", "2"]), ("c", ["--autoguidance", "3"])):
        result, manifest = _sample(folder, params, name, *extra)
        assert result.exit_code == 0, result.output
        outs[name] = json.loads(manifest.read_text())
    assert "autoguidance" not in outs["off"]  # off: the manifest is as before
    assert outs["a"] == outs["b"]  # the same settings, byte-identical images
    guide = outs["a"]["autoguidance"]
    # guide_at 0.25 of step 6 is 1.5: the nearest snapshot before the export is step 2
    assert guide["weight"] == 2.0 and guide["ema_std"] == 0.1
    assert guide["sigma_min"] == 0.0 and guide["sigma_max"] is None
    assert guide["guide"]["step"] == 2 and guide["guide"]["file"] == "ema_std-0.1-step-2"
    assert outs["a"]["checkpoint"] == outs["off"]["checkpoint"]  # the model itself is unchanged
    assert outs["a"]["images"] != outs["off"]["images"]
    assert outs["a"]["images"] != outs["c"]["images"]


def test_the_guide_is_the_snapshot_nearest_to_guide_at(trained):
    folder, _ = trained
    models = folder / "models"
    assert load_guide(models, 6, 0.25, 0.1).config["step"] == 2
    assert load_guide(models, 6, 0.6, 0.1).config["step"] == 4
    assert load_guide(models, 6, 0.99, 0.1).config["step"] == 4  # never the export's own step
    a, b = load_guide(models, 6, 0.6, 0.1), load_checkpoint(models, "ema", 0.1, at_step=4)
    assert a.sha256 == b.sha256
    with pytest.raises(UserError, match="no snapshot before the export's step 2"):
        load_guide(models, 2, 0.5, 0.1)


def test_without_snapshots_autoguidance_says_what_to_do(tmp_path):
    models = tmp_path / "models"
    params = tiny_params(write_tiles(tmp_path / "tiles"), models, steps=2)
    train(params, quiet=True)
    raw = params.model_dump(mode="json")
    raw["sample"] = {"n": 1, "steps": 2, "device": "cpu", "autoguidance": 2.0}
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw))
    result, manifest = _sample(tmp_path, path, "s")
    assert result.exit_code == 2 and not manifest.exists()
    assert "sample.autoguidance needs post-hoc EMA snapshots" in result.output
    assert "train.phema_stds" in result.output and "Traceback" not in result.output


def test_autoguidance_is_the_extrapolation_from_the_guide():
    net = lambda x, t: x * 3.0  # noqa: E731
    guide = lambda x, t: x * 1.0  # noqa: E731
    x = torch.ones(2, 3, 4, 4)
    out = _autoguided_forward(net, guide, 2.5)(x, torch.tensor([1.0]))
    assert torch.equal(out, torch.full_like(x, 1.0 + 2.5 * (3.0 - 1.0)))


def _model_and_guide(folder):
    """The trained model's checkpoint, its denoiser and the denoiser of its guide at step 4."""
    checkpoint = load_checkpoint(folder / "models")
    guide = load_guide(folder / "models", 6, 0.5, 0.1)
    return (checkpoint, checkpoint.diffusion.denoiser(checkpoint.net),
            guide.diffusion.denoiser(guide.net))


def test_a_guide_equal_to_the_model_changes_nothing_and_images_stay_batch_invariant(trained):
    checkpoint, net, guide_net = _model_and_guide(trained[0])
    sampler = make_scheduler("dpmpp2m", checkpoint.diffusion, steps=3, eta=0.0,
                             spacing="karras" if hasattr(checkpoint.diffusion, "sigma_data")
                             else "quadratic")
    shape, cpu = checkpoint.image_shape, torch.device("cpu")
    plain = sample_images(net, sampler, [5, 6, 7], shape, cpu)
    same = sample_images(net, sampler, [5, 6, 7], shape, cpu, guide=net, autoguidance=2.0)
    assert torch.equal(plain, same)  # D + w (D - D) = D
    batch = sample_images(net, sampler, [5, 6, 7], shape, cpu, guide=guide_net, autoguidance=2.0)
    alone = sample_images(net, sampler, [6], shape, cpu, guide=guide_net, autoguidance=2.0)
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch, plain)


def test_guidance_acts_only_on_the_noise_levels_of_its_interval(trained):
    checkpoint, net, guide_net = _model_and_guide(trained[0])
    sampler = make_scheduler("ddim", checkpoint.diffusion, steps=4, eta=0.0, spacing="trailing")
    sigmas = [noise_to_signal(checkpoint.diffusion, t) for t, _ in sampler.pairs()]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[-1] > 0

    def draw(interval):
        return sample_images(net, sampler, [1, 2], checkpoint.image_shape, torch.device("cpu"),
                             guide=guide_net, autoguidance=2.0, guide_sigmas=interval)

    plain = sample_images(net, sampler, [1, 2], checkpoint.image_shape, torch.device("cpu"))
    everywhere = draw((0.0, float("inf")))
    assert torch.equal(draw((sigmas[0] * 2, float("inf"))), plain)  # no step in the interval
    assert torch.equal(draw((sigmas[-1], sigmas[0])), everywhere)  # the bounds are inclusive
    middle = draw((sigmas[2], sigmas[1]))
    assert not torch.equal(middle, plain) and not torch.equal(middle, everywhere)


def test_noise_to_signal_is_edms_sigma_for_both_processes():
    from canopy.model.process import build_process, process_config

    vp = build_process(process_config({"process": "vp", "timesteps": 1000}, "linear", None))
    alpha_bar = float(vp.alphas_cumprod[500])
    assert noise_to_signal(vp, 500) == pytest.approx(((1 - alpha_bar) / alpha_bar) ** 0.5)
    assert noise_to_signal(vp, 0) < 0.02 < 80 < noise_to_signal(vp, 999)
    edm = build_process(process_config({"process": "edm"}, "linear", None))
    assert noise_to_signal(edm, 2.5) == 2.5


@pytest.mark.parametrize("key, value, message", [
    ("guide_sigma_max", 0.5, "sample.guide_sigma_max .0.5. is below sample.guide_sigma_min"),
    ("autoguidance", 0.5, "sample.autoguidance"),
    ("guide_at", 1.0, "sample.guide_at"),
    ("guide_ema_std", 0.5, "sample.guide_ema_std must be between 0 and"),
])
def test_params_refuse_bad_autoguidance_settings(key, value, message):
    sample = {key: value, "guide_sigma_min": 1.0} if key == "guide_sigma_max" else {key: value}
    with pytest.raises(UserError, match=message):
        parse_params({"sample": sample}, source="params.yaml")
