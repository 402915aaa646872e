import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from canopy.cli import app
from canopy.errors import UserError
from canopy.model.unet import Unet
from canopy.train import checkpoint
from canopy.train.loop import train
from canopy.weights import EXPORT_FILE, read_export

from .conftest import tiny_params


def _state(out):
    folder = checkpoint.state_dirs(out / "state")[0]
    return {name: load_file(folder / f"{name}.safetensors") for name in ("model", "ema", "optimizer")}


def _assert_same_state(a, b):
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}/{key} differs"


# The recipes whose resume must stay bit-exact: today's, and each later training option on.
RECIPES = {
    "default": {},
    "schedule": {"lr_decay": "cosine", "lr_decay_fraction": 0.5, "adam_beta2": 0.99,
                 "phema_stds": [0.05, 0.1], "phema_every": 2},
    "crops": {"crop_fraction": 0.7, "crop_sizes": [2, 4], "crop_full_final": 0.25},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_is_exact(tiles, tmp_path, capsys, recipe):
    kw = RECIPES[recipe]
    straight = tiny_params(tiles, tmp_path / "straight", steps=8, checkpoint_every=3, **kw)
    assert train(straight, quiet=True).step == 8

    resumed = tiny_params(tiles, tmp_path / "resumed", steps=8, checkpoint_every=3, **kw)

    def interrupt(step):
        if step == 4:  # between checkpoints: the signal itself must save one
            os.kill(os.getpid(), signal.SIGINT)

    first = train(resumed, quiet=True, on_step=interrupt)
    assert first.interrupted == signal.SIGINT and first.step == 4
    assert checkpoint.state_dirs(tmp_path / "resumed" / "state")[0].name == "step-00000004"
    second = train(resumed, quiet=True)
    assert second.start == 4 and second.step == 8 and second.interrupted is None
    _assert_same_state(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    ema_a = load_file(tmp_path / "straight" / "ema.safetensors")
    ema_b = load_file(tmp_path / "resumed" / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # The metrics history shows each step once.
    rows = (tmp_path / "resumed" / "live" / "plots" / "metrics" / "loss.tsv").read_text().split()
    assert rows[0:2] == ["step", "loss"] and rows[2::2] == ["2", "4", "6", "8"]


def test_other_params_or_data_start_fresh_say_so_and_keep_the_old_state(tiles, tmp_path, capsys):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    capsys.readouterr()
    result = train(tiny_params(tiles, out, steps=6, lr=5e-4), quiet=True)
    assert result.start == 0
    err = capsys.readouterr().err
    assert "starting fresh" in err and "train.lr 0.001 -> 0.0005" in err
    # The step-4 state was moved aside, not deleted.
    assert f"kept in {out / 'state.old-4'}" in err
    assert [p.name for p in checkpoint.state_dirs(out / "state.old-4")] == ["step-00000004"]
    # Keys that do not change what is learnt (steps, log_every, device...) resume.
    result = train(tiny_params(tiles, out, steps=8, lr=5e-4, log_every=1), quiet=True)
    assert result.start == 6
    manifest = json.loads((tiles / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "f" * 64
    (tiles / "manifest.json").write_text(json.dumps(manifest))
    result = train(tiny_params(tiles, out, steps=8, lr=5e-4), quiet=True)
    assert result.start == 0 and "other data" in capsys.readouterr().err
    assert [p.name for p in checkpoint.state_dirs(out / "state.old-8")] == ["step-00000008"]


def test_fresh_deletes_the_state_when_asked(tiles, tmp_path):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    assert train(tiny_params(tiles, out, steps=4, lr=5e-4), quiet=True, fresh=True).start == 0
    assert not list(out.glob("state.old-*"))


@pytest.mark.parametrize("damage", ["delete", "cut"])
def test_a_missing_or_cut_shard_stops_train_and_keeps_the_checkpoint(tiles, tmp_path, damage):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    before = (out / EXPORT_FILE).read_bytes()
    shard = tiles / "train" / "shard-000002.tar"
    if damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(UserError, match=r"shard-000002.tar.*re-run `canopy etl`"):
        train(tiny_params(tiles, out, steps=8), quiet=True)
    assert [p.name for p in checkpoint.state_dirs(out / "state")] == ["step-00000004"]
    assert (out / EXPORT_FILE).read_bytes() == before


def test_a_shard_the_manifest_does_not_list_is_refused(tiles, tmp_path):
    extra = tiles / "train" / "shard-000009.tar"
    extra.write_bytes((tiles / "train" / "shard-000000.tar").read_bytes())
    with pytest.raises(UserError, match="shard-000009.tar is not listed in"):
        train(tiny_params(tiles, tmp_path / "models", steps=2), quiet=True)


def test_corrupt_checkpoint_starts_fresh(tiles, tmp_path, capsys):
    out = tmp_path / "models"
    params = tiny_params(tiles, out, steps=4)
    train(params, quiet=True)
    folder = checkpoint.state_dirs(out / "state")[0]
    blob = bytearray((folder / "model.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(blob))
    capsys.readouterr()
    assert train(tiny_params(tiles, out, steps=6), quiet=True).start == 0
    assert "does not match its sha256" in capsys.readouterr().err
    # Unreadable state.json, and a staging folder left by a kill -9: also no crash.
    folder = checkpoint.state_dirs(out / "state")[0]
    (folder / "state.json").write_text("{")
    (out / "state" / ".step-00000009.staging-x").mkdir()
    assert train(tiny_params(tiles, out, steps=6), quiet=True).start == 0
    assert "unreadable" in capsys.readouterr().err
    assert not (out / "state" / ".step-00000009.staging-x").exists()


def test_mismatched_weights_start_fresh(tiles, tmp_path, capsys):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    folder = checkpoint.state_dirs(out / "state")[0]
    weights = load_file(folder / "model.safetensors")
    weights.pop(next(iter(weights)))
    from safetensors.torch import save

    blob = save(weights)
    (folder / "model.safetensors").write_bytes(blob)
    state = json.loads((folder / "state.json").read_text())
    from canopy.hashing import sha256_bytes

    state["files"]["model.safetensors"] = sha256_bytes(blob)
    (folder / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert train(tiny_params(tiles, out, steps=6), quiet=True).start == 0
    assert "does not fit this model" in capsys.readouterr().err


def test_export_rebuilds_the_network(tiles, tmp_path):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    state, config = read_export(out / EXPORT_FILE)
    assert config["step"] == 4 and config["schedule"] == "linear" and config["tile_size"] == 16
    assert config["diffusion"]["timesteps"] == 100 and config["diffusion"]["objective"] == "eps"
    net = Unet(**config["model"])
    net.load_state_dict(state)
    assert net(torch.zeros(1, 3, 16, 16), torch.tensor([5])).shape == (1, 3, 16, 16)
    grids = sorted(p.name for p in (out / "live" / "plots" / "images" / "samples").iterdir())
    assert grids == ["4.png"]


@pytest.mark.slow
def test_tiny_model_overfits_a_few_tiles(tmp_path):
    from .conftest import write_tiles

    tiles = write_tiles(tmp_path / "tiles", n_train=4, n_val=1, shard_size=4)
    params = tiny_params(
        tiles, tmp_path / "models", steps=300, batch_size=8, lr=3e-3, warmup_steps=20,
        log_every=20, checkpoint_every=1000, preview_images=0, augment=False,
    )
    train(params, quiet=True)
    lines = (tmp_path / "models" / "live" / "plots" / "metrics" / "loss.tsv").read_text().split("\n")
    losses = [float(line.split("\t")[1]) for line in lines[1:] if line]
    assert losses[0] > 5 * losses[-1], losses


def test_cli_errors_are_one_line_and_exit_2(tiles, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "params.yaml"
    bad.write_text("schedule: cosin\n")
    result = runner.invoke(app, ["train", "--params", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule" in lines[0] and "cosin" in lines[0]
    good = tmp_path / "good.yaml"
    good.write_text("etl: {tile_size: 16, stride: 16}\nmodel: {dim: 8, dim_mults: [1, 2]}\n")
    result = runner.invoke(app, ["train", "--params", str(good), "--tiles", str(tmp_path / "none")])
    assert result.exit_code == 2 and "run `canopy etl`" in result.stderr
    args = ["train", "--params", str(good), "--tiles", str(tiles), "--device", "tpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "train.device" in result.stderr


def test_a_killed_exports_temp_file_is_removed_at_the_next_run(tiles, tmp_path):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=2), quiet=True)
    stale = out / ".ema.safetensors.999999999-x1y2z3.tmp"  # a dead process's half export
    stale.write_bytes(b"half")
    train(tiny_params(tiles, out, steps=2), quiet=True)  # nothing to train: still cleans up
    assert not stale.exists()


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_is_one_line_naming_the_folder_and_how_much(tiles, tmp_path, monkeypatch,
                                                               code):
    import errno

    import yaml

    out = tmp_path / "models"
    params = tiny_params(tiles, out, steps=2)
    train(params, quiet=True)
    before = (out / EXPORT_FILE).read_bytes()
    raw = params.model_dump(mode="json")
    raw["train"]["steps"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))

    def full(fd):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(os, "fsync", full)  # the export's write, as the kernel reports it
    result = CliRunner().invoke(app, ["train", "-q", "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"canopy train: error: {out} is full")
    assert "MB were needed" in lines[0] and "MB free" in lines[0]
    assert (out / EXPORT_FILE).read_bytes() == before
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_the_final_step_re_exports_a_missing_or_unreadable_export(tiles, tmp_path, damage):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    good = (out / EXPORT_FILE).read_bytes()
    if damage == "truncate":
        (out / EXPORT_FILE).write_bytes(good[: len(good) // 2])
    else:
        (out / EXPORT_FILE).unlink()
    result = train(tiny_params(tiles, out, steps=4), quiet=True)
    assert result.start == result.step == 4
    assert (out / EXPORT_FILE).read_bytes() == good  # the same bytes as the first export


def test_a_second_train_on_the_same_models_is_refused(tiles, tmp_path):
    """It would resume from the running one's checkpoint and log its steps twice."""
    from tests.conftest import output_locked_by_another_process

    params = tiny_params(tiles, tmp_path / "models", steps=2)
    with output_locked_by_another_process(tmp_path / "models", "canopy train"):
        with pytest.raises(UserError, match="being written by canopy train"):
            train(params, quiet=True)
    assert not (tmp_path / "models").exists()
    train(params, quiet=True)  # once the first is done


def test_verify_sha256_stops_train_on_a_changed_byte_the_size_checks_miss(tiles, tmp_path):
    from canopy import tiles as tiles_format

    location = tiles_format.list_tiles(tiles, "train")[6]  # in shard-000001.tar
    data = bytearray(location.shard.read_bytes())
    data[location.offset + location.size // 2] ^= 0xFF  # same size, same tile count
    location.shard.write_bytes(bytes(data))
    params = tmp_path / "params.yaml"
    params.write_text("etl: {tile_size: 16, stride: 16}\nmodel: {dim: 8, dim_mults: [1, 2]}\n")
    models = tmp_path / "models"
    result = CliRunner().invoke(app, ["train", "-q", "--params", str(params), "--tiles",
                                      str(tiles), "--models", str(models), "--verify-sha256"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"canopy train: error: shard {location.shard} has sha256 ")
    assert line.endswith("re-run `canopy etl`")
    assert not models.exists()


EDM = {"process": "edm", "standardize": True, "timestep_sampling": "lognormal"}


MIXTURE = {"lognormal_mean": [-0.5, 2.5], "lognormal_std": [1.6, 1.0], "lognormal_weights": [0.7, 0.3]}


@pytest.mark.parametrize("diffusion", [{"standardize": True}, EDM, {**EDM, "loss_weighting": "learned"},
                                       {**EDM, **MIXTURE}, {**EDM, "preconditioning": "spectral"},
                                       {**EDM, "preconditioning": "spectral", "mean_prior": "tiles"},
                                       {**EDM, "preconditioning": "spectral", "skip_input": True}],
                         ids=["vp-std", "edm-std", "edm-learned-weighting", "edm-mixture",
                              "edm-spectral", "edm-spectral-tile-means", "edm-skip-input"])
def test_resume_is_exact_for_the_new_processes(tiles, tmp_path, diffusion):
    straight = tiny_params(tiles, tmp_path / "straight", diffusion, {"spacing": "karras"}
                           if "process" in diffusion else None, steps=6, checkpoint_every=3)
    train(straight, quiet=True)
    resumed = tiny_params(tiles, tmp_path / "resumed", diffusion, {"spacing": "karras"}
                          if "process" in diffusion else None, steps=6, checkpoint_every=3)
    train(resumed.model_copy(update={"train": resumed.train.model_copy(update={"steps": 3})}),
          quiet=True)
    assert train(resumed, quiet=True).start == 3
    _assert_same_state(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    if diffusion.get("loss_weighting") == "learned":  # u(sigma) is saved by name and resumed
        folders = [checkpoint.state_dirs(tmp_path / run / "state")[0] for run in ("straight", "resumed")]
        a, b = (load_file(folder / "uncertainty.safetensors") for folder in folders)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert a["linear.weight"].abs().sum() > 0  # it trained


def test_learned_weighting_changes_training_not_the_export_format(tiles, tmp_path):
    fixed = tmp_path / "fixed"
    learned = tmp_path / "learned"
    train(tiny_params(tiles, fixed, EDM, {"spacing": "karras"}, steps=3), quiet=True)
    train(tiny_params(tiles, learned, {**EDM, "loss_weighting": "learned"}, {"spacing": "karras"},
                      steps=3), quiet=True)
    a, config_a = read_export(fixed / EXPORT_FILE)
    b, config_b = read_export(learned / EXPORT_FILE)
    assert a.keys() == b.keys()  # u(sigma) is not in the export
    assert any(not torch.equal(a[k], b[k]) for k in a)  # but it changed the training
    assert "loss_weighting" not in config_a["diffusion"]
    assert config_b["diffusion"]["loss_weighting"] == "learned"


def test_standardised_export_carries_the_stats_and_process(tiles, tmp_path):
    from canopy import tiles as tiles_io
    from canopy.model.process import EDMProcess, build

    out = tmp_path / "models"
    train(tiny_params(tiles, out, EDM, {"spacing": "karras"}, steps=2), quiet=True)
    _, config = read_export(out / EXPORT_FILE)
    stats = tiles_io.train_stats(tiles_io.read_manifest(tiles, "x"), tiles)
    assert config["data_stats"] == {"mean": stats["mean"], "std": stats["std"]}
    assert config["diffusion"]["process"] == "edm" and config["diffusion"]["sigma_data"] == 1.0
    net, process = build(config)
    assert isinstance(process, EDMProcess) and process.data_space is not None
    assert torch.allclose(process.data_space.mean.flatten(), torch.tensor(stats["mean"]))


def test_the_vp_export_of_default_params_records_no_new_keys(tiles, tmp_path):
    """Params without the new keys export the config they exported before (and resume the
    states of before: the params hash is made of the same section)."""
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=1), quiet=True)
    _, config = read_export(out / EXPORT_FILE)
    assert "data_stats" not in config
    assert not {"process", "standardize", "sigma_data", "sigma_min", "sigma_max"} & set(
        config["diffusion"])


def test_standardize_without_stats_in_the_manifest_is_one_clear_error(tmp_path):
    from .conftest import write_tiles

    old = write_tiles(tmp_path / "tiles", stats=False)
    with pytest.raises(UserError, match="standardize needs the train tiles' mean and std.*"
                                        "re-run `canopy etl`"):
        train(tiny_params(old, tmp_path / "models", {"standardize": True}, steps=1), quiet=True)
    # without standardize an old manifest trains as before
    assert train(tiny_params(old, tmp_path / "models2", steps=1), quiet=True).step == 1


def test_the_spectral_export_carries_the_spectrum_it_was_trained_with(tiles, tmp_path):
    from canopy import tiles as tiles_io
    from canopy.model.process import build

    out = tmp_path / "models"
    train(tiny_params(tiles, out, {**EDM, "preconditioning": "spectral"}, {"spacing": "karras"},
                      steps=2), quiet=True)
    _, config = read_export(out / EXPORT_FILE)
    stats = tiles_io.train_stats(tiles_io.read_manifest(tiles, "x"), tiles)
    assert config["data_stats"]["spectrum"] == stats["spectrum"]
    assert config["diffusion"]["preconditioning"] == "spectral"
    _, process = build(config)
    assert process.spectral is not None and process.spectral.tile_size == 16


def test_the_tile_mean_prior_export_carries_the_tiles_means_and_its_bandwidth(tiles, tmp_path):
    from safetensors import safe_open

    from canopy import tiles as tiles_io
    from canopy.model.process import build

    out = tmp_path / "models"
    diffusion = {**EDM, "preconditioning": "spectral", "mean_prior": "tiles"}
    train(tiny_params(tiles, out, diffusion, {"spacing": "karras"}, steps=2), quiet=True)
    _, config = read_export(out / EXPORT_FILE)
    stats = tiles_io.train_stats(tiles_io.read_manifest(tiles, "x"), tiles)
    assert config["data_stats"]["tile_means"] == stats["tile_means"]
    bandwidth = config["data_stats"]["tile_mean_bandwidth"]
    _, process = build(config)
    assert process.spectral.mean_prior.bandwidth == bandwidth > 0
    with safe_open(str(out / EXPORT_FILE), "pt") as handle:
        assert handle.metadata()["format"] == "canopy.model/5"
    # without the tiles' means (a manifest of before etl recorded them): one clear error
    manifest = json.loads((tiles / "manifest.json").read_text())
    del manifest["train_stats"]["tile_means"]
    (tiles / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="mean_prior tiles needs the train tiles' mean colours.*"
                                        "re-run `canopy etl`"):
        train(tiny_params(tiles, tmp_path / "m2", diffusion, {"spacing": "karras"}, steps=1),
              quiet=True)


def test_the_skip_mixture_is_fitted_to_the_train_tiles_recorded_and_resumed_exactly(tmp_path,
                                                                                   capsys):
    from safetensors import safe_open

    from canopy.model.process import build
    from canopy.model.spectral import MixtureSpectralSkip
    from tests.train.conftest import write_tiles

    tiles = write_tiles(tmp_path / "tiles", n_train=24)
    diffusion = {**EDM, "preconditioning": "spectral", "mean_prior": "tiles",
                 "skip_components": 2}
    straight = tiny_params(tiles, tmp_path / "straight", diffusion, {"spacing": "karras"},
                           steps=6, checkpoint_every=3)
    train(straight, quiet=True)
    _, config = read_export(tmp_path / "straight" / EXPORT_FILE)
    mixture = config["data_stats"]["skip_mixture"]
    assert len(mixture["components"]) == 2 and sum(mixture["weights"]) == 24
    assert isinstance(build(config)[1].spectral, MixtureSpectralSkip)
    with safe_open(str(tmp_path / "straight" / EXPORT_FILE), "pt") as handle:
        assert handle.metadata()["format"] == "canopy.model/6"
    resumed = tiny_params(tiles, tmp_path / "resumed", diffusion, {"spacing": "karras"},
                          steps=6, checkpoint_every=3)
    train(resumed.model_copy(update={"train": resumed.train.model_copy(update={"steps": 3})}),
          quiet=True)
    assert train(resumed, quiet=True).start == 3
    _assert_same_state(_state(tmp_path / "straight"), _state(tmp_path / "resumed"))
    # more kinds than the tiles can fit: as many as they do, and it says so
    capsys.readouterr()
    train(tiny_params(tiles, tmp_path / "m4", {**diffusion, "skip_components": 4},
                      {"spacing": "karras"}, steps=1))
    assert ("diffusion.skip_components 4: 24 train tiles fit at most 3 kinds of tile (8 tiles "
            "each); fitting 3") in capsys.readouterr().err
    _, config = read_export(tmp_path / "m4" / EXPORT_FILE)
    assert len(config["data_stats"]["skip_mixture"]["components"]) <= 3


def test_spectral_preconditioning_without_a_spectrum_in_the_manifest_is_one_clear_error(tiles,
                                                                                        tmp_path):
    manifest_path = tiles / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["train_stats"]["spectrum"]  # tiles of before etl measured it
    manifest_path.write_text(json.dumps(manifest))
    params = tiny_params(tiles, tmp_path / "models", {**EDM, "preconditioning": "spectral"},
                         {"spacing": "karras"}, steps=1)
    with pytest.raises(UserError, match="preconditioning spectral needs the train tiles' power "
                                        "spectrum.*re-run `canopy etl`"):
        train(params, quiet=True)


def test_a_network_that_reads_the_skip_is_exported_with_what_rebuilds_it(tiles, tmp_path):
    """Its exact resume is test_resume_is_exact_for_the_new_processes' edm-skip-input."""
    from canopy.model.process import build

    diffusion = {**EDM, "preconditioning": "spectral", "skip_input": True}
    train(tiny_params(tiles, tmp_path / "m", diffusion, {"spacing": "karras"}, steps=2),
          quiet=True)
    state, config = read_export(tmp_path / "m" / EXPORT_FILE)
    assert config["diffusion"]["skip_input"] is True
    assert state["init_conv.weight"].shape[1] == 6
    net, process = build(config)
    net.load_state_dict(state)  # the export alone rebuilds the network it holds
    assert process.skip_input
