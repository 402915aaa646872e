"""Post-hoc EMA: the power-function profiles kept while training, their snapshots, and the
reconstruction of other stds from them (canopy/phema.py, train/ema.py)."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from canopy import phema
from canopy.cli import app
from canopy.errors import UserError
from canopy.params import parse_params
from canopy.train import checkpoint
from canopy.train.ema import PowerFunctionEMA
from canopy.train.loop import resume_params, train

from .conftest import tiny_params


def test_std_and_exponent_round_trip():
    for std in (0.01, 0.05, 0.1, 0.2):
        assert phema.exp_to_std(phema.std_to_exp(std)) == pytest.approx(std, rel=1e-9)
    # EDM2's two profiles: gamma of about 16.97 and 6.94
    assert phema.std_to_exp(0.05) == pytest.approx(16.97, abs=0.01)
    assert phema.std_to_exp(0.10) == pytest.approx(6.94, abs=0.01)


def _track(trajectory, stds, every):
    """Run PowerFunctionEMA over a weight trajectory; snapshots as (step, [state per std])."""
    net = torch.nn.Linear(3, 2)
    ema = PowerFunctionEMA(net, stds)
    snaps = []
    for t, w in enumerate(trajectory, start=1):
        with torch.no_grad():
            net.weight.copy_(w[:6].reshape(2, 3))
            net.bias.copy_(w[6:])
        ema.update(net, t)
        if t % every == 0:
            snaps.append((t, [{k: v.clone() for k, v in s.items()} for s in ema.states()]))
    return snaps


def test_profile_is_the_power_function_average():
    """The tracked EMA of std s is sum_t w_t t^gamma / sum_t t^gamma (EDM2 eq. 121-127)."""
    rng = np.random.default_rng(0)
    steps = 300
    traj = torch.tensor(rng.normal(size=(steps, 8)).cumsum(0), dtype=torch.float32)
    (_, states), = _track(traj, [0.1], steps)
    gamma = float(phema.std_to_exp(0.1))
    weights = np.arange(1, steps + 1, dtype=np.float64) ** gamma
    expected = (traj.double().numpy() * weights[:, None]).sum(0) / weights.sum()
    got = torch.cat([states[0]["weight"].flatten(), states[0]["bias"]]).double().numpy()
    # The discrete update approximates the continuous profile to O(gamma / t)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


def test_reconstruction_matches_a_profile_that_was_tracked(tmp_path):
    """Snapshots of 0.05 and 0.10 rebuild the EMA of 0.15 (tracked alongside, never saved)
    far closer than either saved profile is to it."""
    rng = np.random.default_rng(1)
    steps, every = 400, 20
    traj = torch.tensor(rng.normal(size=(steps, 8)).cumsum(0), dtype=torch.float32)
    snaps = _track(traj, [0.05, 0.10, 0.15], every)
    for step, states in snaps:
        phema.write_snapshot(tmp_path / "phema", step, [0.05, 0.10], states[:2])
    rebuilt, at = phema.reconstruct(tmp_path, 0.15)
    assert at == steps
    target = snaps[-1][1][2]
    err = max((rebuilt[k] - target[k]).abs().max().item() for k in target)
    nearest = max((snaps[-1][1][1][k] - target[k]).abs().max().item() for k in target)
    assert err < 0.1 * nearest, (err, nearest)
    # Asking for a saved std gives (nearly) that profile back.
    same, _ = phema.reconstruct(tmp_path, 0.10)
    assert max((same[k] - snaps[-1][1][1][k]).abs().max().item() for k in same) < 1e-3


def test_reconstruction_is_deterministic_and_at_an_earlier_step(tmp_path):
    rng = np.random.default_rng(2)
    traj = torch.tensor(rng.normal(size=(100, 8)), dtype=torch.float32)
    for step, states in _track(traj, [0.05, 0.1], 10):
        phema.write_snapshot(tmp_path / "phema", step, [0.05, 0.1], states)
    a, _ = phema.reconstruct(tmp_path, 0.07)
    b, _ = phema.reconstruct(tmp_path, 0.07)
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, at = phema.reconstruct(tmp_path, 0.07, at_step=50)
    assert at == 50
    with pytest.raises(UserError, match="no post-hoc EMA snapshot at step 55"):
        phema.reconstruct(tmp_path, 0.07, at_step=55)


def test_params_check_the_stds():
    base = {"train": {"phema_stds": [0.05, 0.1]}}
    assert parse_params(base).train.phema_stds == [0.05, 0.1]
    for bad, words in (([0.05], "two stds"), ([0.05, 0.5], "between 0 and"),
                       ([0.1, 0.1], "repeats")):
        with pytest.raises(UserError, match=words):
            parse_params({"train": {"phema_stds": bad}})
    with pytest.raises(UserError, match="did you mean 'ema_std'"):
        parse_params({"sample": {"ema_sdt": 0.1}})
    with pytest.raises(UserError, match="sample.weights: ema"):
        parse_params({"sample": {"ema_std": 0.1, "weights": "raw"}})


def test_off_by_default_leaves_the_params_hash_as_before(tiles, tmp_path):
    """States written before phema_stds existed resume: at [] it is not a resume key."""
    off = resume_params(tiny_params(tiles, tmp_path))
    assert "phema_stds" not in off["train"]
    on = resume_params(tiny_params(tiles, tmp_path, phema_stds=[0.05, 0.1]))
    assert on["train"]["phema_stds"] == [0.05, 0.1]


def _snapshots(out):
    return {path.name: path.read_bytes() for _, path in phema.snapshot_files(out / "phema")}


def test_training_writes_snapshots_and_resumes_them_exactly(tiles, tmp_path):
    kw = {"steps": 8, "checkpoint_every": 3, "phema_stds": [0.05, 0.1], "phema_every": 2}
    straight = tiny_params(tiles, tmp_path / "straight", **kw)
    train(straight, quiet=True)
    names = sorted(_snapshots(tmp_path / "straight"))
    assert names == [phema.snapshot_name(s) for s in (2, 4, 6, 8)]

    resumed = tiny_params(tiles, tmp_path / "resumed", **kw)

    def interrupt(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    assert train(resumed, quiet=True, on_step=interrupt).step == 5
    # A snapshot a killed run wrote after its checkpoint is dropped on resume.
    phema.write_snapshot(tmp_path / "resumed" / "phema", 6, [0.05, 0.1],
                         [{"x": torch.zeros(1)}, {"x": torch.zeros(1)}])
    assert train(resumed, quiet=True).start == 5
    assert _snapshots(tmp_path / "straight") == _snapshots(tmp_path / "resumed")
    folder = checkpoint.state_dirs(tmp_path / "resumed" / "state")[0]
    state = json.loads((folder / "state.json").read_text())
    assert sorted(state["files"]) == ["ema.safetensors", "model.safetensors",
                                      "optimizer.safetensors", "phema.safetensors"]
    a = load_file(checkpoint.state_dirs(tmp_path / "straight" / "state")[0] / "phema.safetensors")
    b = load_file(folder / "phema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_without_profiles_says_how_to_resume_it(tiles, tmp_path, capsys):
    out = tmp_path / "models"
    train(tiny_params(tiles, out, steps=4), quiet=True)
    capsys.readouterr()
    result = train(tiny_params(tiles, out, steps=6, phema_stds=[0.05, 0.1]), quiet=True)
    assert result.start == 0
    err = capsys.readouterr().err
    assert "train.phema_stds [] -> [0.05, 0.1]" in err and "set them back to resume" in err


def test_sample_ema_std_rebuilds_and_records_it(tiles, tmp_path):
    models = tmp_path / "models"
    params = tiny_params(tiles, models, steps=6, phema_stds=[0.05, 0.1], phema_every=2)
    train(params, quiet=True)
    raw = params.model_dump(mode="json")
    raw["sample"] = {"n": 3, "batch_size": 2, "steps": 3, "device": "cpu", "precision": "fp32"}
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw))
    runner = CliRunner()
    outs = {}
    for name, extra in (("export", []), ("a", ["--ema-std", "0.08"]), ("b", ["--ema-std", "0.08"]),
                        ("c", ["--ema-std", "0.2"])):
        result = runner.invoke(app, ["sample", "-q", "-p", str(path), "--samples",
                                     str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        outs[name] = json.loads((tmp_path / name / "manifest.json").read_text())
    assert outs["a"] == outs["b"]  # byte-identical for the same std
    assert outs["a"]["checkpoint"]["file"] == "ema_std-0.08"
    assert outs["a"]["checkpoint"]["sha256"] != outs["c"]["checkpoint"]["sha256"]
    assert outs["a"]["images"] != outs["export"]["images"]


def test_sample_ema_std_without_snapshots_is_one_line(tiles, tmp_path):
    models = tmp_path / "models"
    params = tiny_params(tiles, models, steps=2)
    train(params, quiet=True)
    raw = params.model_dump(mode="json")
    raw["sample"] = {"n": 1, "steps": 2, "device": "cpu", "ema_std": 0.1}
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["sample", "-q", "-p", str(path), "--samples",
                                      str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "no post-hoc EMA snapshots" in result.output and "train.phema_stds" in result.output


def test_ema_sweep_scores_each_std_and_names_the_best(tiles, tmp_path):
    models = tmp_path / "models"
    params = tiny_params(tiles, models, steps=6, phema_stds=[0.05, 0.1], phema_every=2)
    train(params, quiet=True)
    raw = params.model_dump(mode="json")
    raw["sample"] = {"steps": 2, "device": "cpu", "precision": "fp32"}
    raw["evaluate"] = {"swd_min_resolution": 8, "swd_patches_per_image": 8,
                       "swd_projections": 8, "swd_repeats": 1}
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["ema", "sweep", "-q", "-p", str(path), "--n", "4",
                                      "--stds", "0.05,0.15", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [row["ema_std"] for row in out["swd"]] == [None, 0.05, 0.15]
    assert out["step"] == 6 and out["n_samples"] == 4
    best = min(out["swd"][1:], key=lambda row: row["swd"])
    assert out["best_ema_std"] == best["ema_std"]
    assert len({row["swd"] for row in out["swd"]}) == 3  # the stds give other weights
    bad = CliRunner().invoke(app, ["ema", "sweep", "-q", "-p", str(path), "--stds", "0.5"])
    assert bad.exit_code == 2 and "between 0 and" in bad.output


def test_without_profiles_the_snapshot_folder_says_so(tmp_path):
    """DVC warns of an empty output folder at every run: with phema off the folder holds a
    note instead, which readers skip, and which goes once profiles are kept."""
    from canopy import phema

    folder = tmp_path / phema.FOLDER
    folder.mkdir()
    phema.mark_folder(folder, [])
    assert [p.name for p in folder.iterdir()] == [phema.OFF_NOTE]
    assert phema.snapshot_files(folder) == []
    phema.mark_folder(folder, [0.05, 0.1])
    assert not any(folder.iterdir())


def test_the_sweep_samples_an_edm_model_as_canopy_sample_does(tiles, tmp_path, monkeypatch):
    """The sweep's export row is scored on the images `canopy sample` writes: under edm the
    preconditioning wraps the network (without it the sweep scored noise)."""
    import numpy as np
    from PIL import Image

    from canopy.params import parse_params
    from canopy.sample import sweep as sweep_module
    from canopy.sample.run import run_sample

    models = tmp_path / "models"
    edm = {"process": "edm", "objective": "v", "timestep_sampling": "lognormal"}
    params = tiny_params(tiles, models, diffusion=edm, sample={"spacing": "karras"}, steps=4,
                         phema_stds=[0.05, 0.1], phema_every=2)
    train(params, quiet=True)
    raw = params.model_dump(mode="json")
    raw["sample"] = {"n": 4, "batch_size": 4, "steps": 3, "spacing": "karras",
                     "device": "cpu", "precision": "fp32", "grid_images": 0}
    raw["evaluate"] = {"swd_min_resolution": 8, "swd_patches_per_image": 8,
                       "swd_projections": 8, "swd_repeats": 1}
    chosen = parse_params(raw)
    drawn = []
    real_generate = sweep_module.generate
    monkeypatch.setattr(sweep_module, "generate",
                        lambda *a, **k: drawn.append(real_generate(*a, **k)) or drawn[-1])
    sweep_module.sweep(chosen, [0.05], 4, models, tiles)
    run_sample(chosen, tmp_path / "samples", models, progress=False)
    written = np.stack([np.asarray(Image.open(tmp_path / "samples" / f"{i:06d}.png"))
                        for i in range(4)])
    assert np.array_equal(drawn[0].numpy(), written)
