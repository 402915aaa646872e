"""`canopy sample`: reproducible sets, the files it writes, clear errors."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from canopy.cli import app
from tests.sample.conftest import MODEL, write_checkpoint, write_params


def sample(workspace, *args):
    return CliRunner().invoke(app, ["sample", "-q", "--params", str(workspace / "params.yaml"), *args])


def images(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("[0-9]*.png"))}


def test_writes_images_manifest_and_grid(workspace):
    result = sample(workspace)
    assert result.exit_code == 0, result.output
    out = workspace / "samples"
    files = images(out)
    assert list(files) == [f"{i:06d}.png" for i in range(6)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n"] == 6 and manifest["seed"] == 3 and manifest["sampler"] == "ddim"
    assert manifest["steps"] == 5 and manifest["timestep_spacing"] == "quadratic"
    assert manifest["channels_last"] is True  # auto: on for CPU
    assert manifest["checkpoint"]["sha256"] == hashlib.sha256(
        (workspace / "models" / "ema.safetensors").read_bytes()).hexdigest()
    for record in manifest["images"]:
        assert hashlib.sha256(files[record["file"]]).hexdigest() == record["sha256"]
    assert (out / "grid.png").is_file()


@pytest.mark.parametrize("channels_last", ["on", "off"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sampler, eta",
                         [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("dpmpp2m", 0.0)])
def test_image_i_does_not_depend_on_batch_size_or_n(workspace, precision, sampler, eta,
                                                   channels_last):
    write_params(workspace, precision=precision, sampler=sampler, eta=eta,
                 channels_last=channels_last)
    runs = {}
    for n, batch in [(6, 4), (6, 1), (3, 5)]:
        out = workspace / f"s-{n}-{batch}"
        result = sample(workspace, "--n", str(n), "--batch-size", str(batch), "--samples", str(out))
        assert result.exit_code == 0, result.output
        runs[(n, batch)] = images(out)
    assert runs[(6, 4)] == runs[(6, 1)]
    assert runs[(3, 5)] == {k: v for k, v in runs[(6, 4)].items() if int(k[:6]) < 3}
    assert len(set(runs[(6, 4)].values())) == 6  # six different images


def test_rerun_is_byte_identical_and_seed_matters(workspace):
    assert sample(workspace, "--samples", str(workspace / "a")).exit_code == 0
    assert sample(workspace, "--samples", str(workspace / "b")).exit_code == 0
    a, b = workspace / "a", workspace / "b"
    for name in ["manifest.json", "grid.png", *images(a)]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    params = (workspace / "params.yaml").read_text().replace("seed: 3", "seed: 4")
    (workspace / "params.yaml").write_text(params)
    assert sample(workspace, "--samples", str(workspace / "c")).exit_code == 0
    assert images(workspace / "c") != images(a)


def test_ddpm_takes_every_timestep(workspace):
    result = sample(workspace, "--sampler", "ddpm", "--n", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((workspace / "samples" / "manifest.json").read_text())
    assert manifest["steps"] == 20 and manifest["sampler"] == "ddpm"


def test_dpmpp2m_is_recorded_and_differs_from_ddim(workspace):
    assert sample(workspace, "--samples", str(workspace / "ddim")).exit_code == 0
    result = sample(workspace, "--sampler", "dpmpp2m")
    assert result.exit_code == 0, result.output
    assert "(dpmpp2m, 5 steps" in result.output
    manifest = json.loads((workspace / "samples" / "manifest.json").read_text())
    assert manifest["sampler"] == "dpmpp2m" and manifest["steps"] == 5
    assert manifest["timestep_spacing"] == "quadratic" and manifest["eta"] == 0.0
    ddim, dpm = images(workspace / "ddim"), images(workspace / "samples")
    assert list(ddim) == list(dpm) and all(ddim[name] != dpm[name] for name in ddim)


def test_spacing_is_recorded_and_changes_the_images(workspace):
    assert sample(workspace, "--samples", str(workspace / "quadratic")).exit_code == 0  # the default
    for sampler in ("ddim", "dpmpp2m"):
        out = workspace / f"trailing-{sampler}"
        result = sample(workspace, "--sampler", sampler, "--spacing", "trailing", "--samples", str(out))
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["timestep_spacing"] == "trailing" and manifest["steps"] == 5
    trailing, quadratic = images(workspace / "trailing-ddim"), images(workspace / "quadratic")
    assert all(trailing[name] != quadratic[name] for name in trailing)


def test_a_batch_starts_clean_after_an_interrupted_one(workspace):
    """DPM-Solver++ carries the last x0 estimate from step to step: the scheduler that runs
    batch after batch must not let an interrupted batch's history into the next one."""
    import torch

    from canopy.model.registry import make_scheduler
    from canopy.model.scheduler import Scheduler
    from canopy.sample.checkpoint import load_checkpoint
    from canopy.sample.generate import generate

    checkpoint = load_checkpoint(workspace / "models")
    fresh, used = (make_scheduler("dpmpp2m", checkpoint.diffusion, steps=5, eta=0.0,
                                  spacing="trailing") for _ in range(2))
    x = torch.randn(2, *checkpoint.image_shape)
    for t, t_prev in used.pairs()[:2]:  # a batch stopped after two steps (an error, a Ctrl-C)
        x = used.step(torch.randn_like(x), t, t_prev, x)

    def first_two_images(sampler: Scheduler) -> torch.Tensor:
        return generate(checkpoint.net, sampler, [0, 1], 3, checkpoint.image_shape,
                        torch.device("cpu"), None)

    assert torch.equal(first_two_images(used), first_two_images(fresh))


def corrupt(workspace):
    path = workspace / "models" / "ema.safetensors"
    path.write_bytes(path.read_bytes()[:300])


def other_shape(workspace):
    """Weights of a wider network under a config that says dim 8."""
    write_checkpoint(workspace / "tmp", model={**MODEL, "dim": 16})
    (workspace / "tmp" / "ema.safetensors").replace(workspace / "wide.safetensors")
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(workspace / "models" / "ema.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(workspace / "wide.safetensors")),
              str(workspace / "models" / "ema.safetensors"), metadata=metadata)
    assert _json.loads(metadata["config"])["model"]["dim"] == 8


def _rewrite_export(workspace, tensors=None, **config_changes):
    """The export with some tensors or config keys replaced, its metadata otherwise kept (the
    checksum too: as an edit or a damaged disk would leave it)."""
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = workspace / "models" / "ema.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    config = _json.loads(metadata["config"])
    for dotted, value in config_changes.items():
        *parents, key = dotted.split("__")
        section = config
        for parent in parents:
            section = section[parent]
        section[key] = value
    metadata["config"] = _json.dumps(config)
    save_file({**load_file(str(path)), **(tensors or {})}, str(path), metadata=metadata)


def flipped_bytes(workspace):
    """Bytes flipped inside the tensor data: the header still parses."""
    path = workspace / "models" / "ema.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def nan_weights(workspace):
    """NaN in the weights of an export whose checksum matches them (training diverged)."""
    from canopy import weights as weights_io
    from canopy.sample.checkpoint import load_checkpoint

    path = workspace / "models" / "ema.safetensors"
    config = weights_io.read_export_config(path)
    state = load_checkpoint(workspace / "models").net.state_dict()
    name = next(iter(state))
    state[name] = state[name].clone().fill_(float("nan"))
    weights_io.write_export(path, state, config)


def samples_over(target):
    """--samples pointed at something that is not a samples folder."""
    def prepare(workspace):
        (workspace / "data" / "tiles").mkdir(parents=True)
        (workspace / "data" / "tiles" / "manifest.json").write_text("{}")
        (workspace / "notes.txt").write_text("my notes")
    return prepare


BAD = {
    "flipped bytes in the weights": (flipped_bytes, [], "is damaged: its tensors do not match"),
    "NaN weights": (nan_weights, [], "NaN or infinite value(s)"),
    "an edited export config (a huge network)": (
        lambda w: _rewrite_export(w, model__dim=2048), [],
        "its config is invalid (model.dim: Input should be less than or equal to 1024)"),
    "an edited export config (negative tile size)": (
        lambda w: _rewrite_export(w, tile_size=-32), [],
        "its config is invalid (tile_size: -32, expected an integer in 8..4096)"),
    "an edited export config (another width)": (
        lambda w: _rewrite_export(w, model__dim=16), [], "was trained with other settings"),
    "--samples over the data folder": (
        samples_over("data"), ["--samples", "data"],
        "data is not a samples folder that Canopy wrote (it holds tiles/): refusing to replace "
        "it; point paths.samples (--samples) at a new or empty folder"),
    "--samples over a file": (samples_over("notes.txt"), ["--samples", "notes.txt"],
                              "notes.txt is not a samples folder that Canopy wrote (it is a file "
                              "of 8 bytes)"),
    "missing checkpoint": (lambda w: (w / "models" / "ema.safetensors").unlink(), [],
                           "not found: train a model first"),
    "corrupt checkpoint": (corrupt, [], "corrupt"),
    "other model shape": (other_shape, [], "weights of another model shape"),
    "n <= 0": (None, ["--n", "0"], "sample.n"),
    "steps > timesteps": (None, ["--steps", "50"], "exceeds"),
    "unknown sampler": (None, ["--sampler", "euler"], "'ddpm', 'ddim', 'dpmpp2m' or 'heun' (got 'euler')"),
    "unknown spacing": (None, ["--spacing", "leading"], "'quadratic', 'trailing' or 'karras' (got 'leading')"),
    "eta with dpmpp2m": (None, ["--sampler", "dpmpp2m", "--eta", "0.5"],
                         "sample.eta (0.5) must be 0 with sample.sampler dpmpp2m"),
    "params changed since training": (
        lambda w: (w / "params.yaml").write_text((w / "params.yaml").read_text().replace(
            "schedule: linear", "schedule: cosine")), [], "re-run `canopy train`"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gives_one_line_and_exit_code_2(workspace, case, monkeypatch):
    prepare, args, expected = BAD[case]
    if prepare:
        prepare(workspace)
    monkeypatch.chdir(workspace)  # relative --samples paths are the workspace's
    result = sample(workspace, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("canopy sample: error: "), result.stderr
    assert expected in lines[0]
    assert not (workspace / "samples").exists()


def test_a_wrong_samples_path_leaves_what_is_there(workspace, monkeypatch):
    """The data loss the guard prevents: `--samples data` used to replace data/ (tiles and
    all) with the samples, and `--samples notes.txt` the file with a folder."""
    samples_over("data")(workspace)
    monkeypatch.chdir(workspace)
    for target in ("data", "notes.txt"):
        assert sample(workspace, "--samples", target).exit_code == 2
    assert (workspace / "data" / "tiles" / "manifest.json").read_text() == "{}"
    assert (workspace / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in workspace.iterdir()) == ["data", "models", "notes.txt",
                                                           "params.yaml"]


def test_samples_replace_an_earlier_samples_folder_or_an_empty_one(workspace):
    assert sample(workspace).exit_code == 0
    assert sample(workspace, "--n", "2").exit_code == 0  # its manifest says it is samples
    assert len(images(workspace / "samples")) == 2
    (workspace / "empty").mkdir()
    assert sample(workspace, "--samples", str(workspace / "empty"), "--n", "1").exit_code == 0
    assert len(images(workspace / "empty")) == 1


def test_non_finite_images_are_refused_not_written_black():
    import torch

    from canopy.errors import UserError
    from canopy.model.process import build_process
    from canopy.model.registry import make_scheduler
    from canopy.sample.generate import generate
    from tests.sample.conftest import DIFFUSION

    class Diverged(torch.nn.Module):
        def forward(self, x, t):
            return torch.full_like(x, float("nan"))

    process = build_process({"diffusion": DIFFUSION, "schedule": "linear"})
    scheduler = make_scheduler("ddim", process, steps=3, eta=0.0, spacing="trailing")
    with pytest.raises(UserError, match=r"NaN or infinite values for image\(s\) \[4, 5\]"):
        generate(Diverged(), scheduler, [4, 5], 0, (3, 8, 8), torch.device("cpu"), None)


def test_a_full_disk_is_one_line_naming_the_folder_and_the_old_samples_are_kept(
        workspace, monkeypatch):
    import errno

    from canopy import samples as samples_format

    assert sample(workspace).exit_code == 0
    before = images(workspace / "samples")

    def full(folder, index, image):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a plain write() raises it

    monkeypatch.setattr(samples_format, "write_image", full)
    result = sample(workspace)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"canopy sample: error: {workspace} is full")
    assert images(workspace / "samples") == before


SPECTRUM = {"tile_size": 16, "radial": [[[p, 0.8 * p, 0.7 * p], [0.8 * p, p, 0.8 * p],
                                          [0.7 * p, 0.8 * p, p]]
                                         for p in (400.0, 20.0, 6.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1,
                                                   0.1, 0.1, 0.1)]}


# tile means in two clusters of colour, [-1, 1] units
TILE_MEANS = [[-0.7 + 0.01 * (i % 5), -0.5 + 0.01 * (i % 3), -0.8] for i in range(10)] + [
    [-0.1 + 0.01 * (i % 5), -0.2 + 0.01 * (i % 3), -0.4] for i in range(10)]


def _edm_workspace(tmp_path, preconditioning="scalar", mean_prior="gaussian", mixture=False,
                   skip_input=False, **sample):
    """A tiny export of the continuous process on standardised data, and its params;
    `mixture`: a skip of two kinds of tile (diffusion.skip_components); `skip_input`: a
    network that reads the skip's estimate too."""
    from tests.sample.conftest import DIFFUSION

    diffusion = {**DIFFUSION, "process": "edm", "standardize": True, "sigma_data": 1.0,
                 "timestep_sampling": "lognormal", "preconditioning": preconditioning}
    stats = {"mean": [-0.4, -0.3, -0.6], "std": [0.3, 0.25, 0.2]}
    if preconditioning == "spectral":
        stats["spectrum"] = SPECTRUM
    if mean_prior == "tiles":  # with the network bounded in level, as params.yaml has it
        diffusion.update(mean_prior="tiles", sigma_max=300.0, network_sigma_max=80.0)
        stats.update(tile_means=TILE_MEANS, tile_mean_bandwidth=0.2)
    if mixture:
        diffusion["skip_components"] = 2
        stats["skip_mixture"] = {"weights": [3, 1], "components": [
            {"mean": [-0.5, -0.4, -0.6], "std": [0.3, 0.25, 0.2], "spectrum": SPECTRUM},
            {"mean": [0.2, 0.3, 0.1], "std": [0.1, 0.1, 0.1], "spectrum": SPECTRUM}]}
    if skip_input:
        diffusion["skip_input"] = True
    write_checkpoint(tmp_path / "models", diffusion=diffusion, data_stats=stats)
    write_params(tmp_path, diffusion=diffusion, spacing="karras", **sample)
    return tmp_path


@pytest.mark.parametrize("sampler, eta", [("heun", 0.0), ("dpmpp2m", 0.0), ("ddim", 1.0),
                                          ("ddpm", 0.0)])
def test_the_continuous_process_samples_reproducibly_whatever_the_batch(tmp_path, sampler, eta):
    workspace = _edm_workspace(tmp_path, sampler=sampler, eta=eta, precision="fp32")
    runs = {}
    for n, batch in [(4, 3), (4, 1), (4, 3)]:
        out = workspace / f"s-{len(runs)}-{n}-{batch}"
        result = sample(workspace, "--n", str(n), "--batch-size", str(batch), "--samples", str(out))
        assert result.exit_code == 0, result.output
        runs[(len(runs), batch)] = images(out)
    first, one_by_one, again = runs.values()
    assert first == one_by_one == again and len(set(first.values())) == 4
    manifest = json.loads((workspace / "s-0-4-3" / "manifest.json").read_text())
    assert manifest["timestep_spacing"] == "karras" and manifest["sampler"] == sampler


def _four_images_at_batch_3_and_1(workspace):
    """The images of `canopy sample --n 4` at batch sizes 3 and 1, each run's {file: bytes}."""
    runs = []
    for batch in (3, 1):
        out = workspace / f"s-{batch}"
        result = sample(workspace, "--n", "4", "--batch-size", str(batch), "--samples", str(out))
        assert result.exit_code == 0, result.output
        runs.append(images(out))
    return runs


def test_a_spectral_export_samples_reproducibly_whatever_the_batch(tmp_path):
    workspace = _edm_workspace(tmp_path, "spectral", sampler="dpmpp2m", precision="fp32")
    runs = _four_images_at_batch_3_and_1(workspace)
    assert runs[0] == runs[1] and len(set(runs[0].values())) == 4
    scalar = _edm_workspace(tmp_path / "scalar", sampler="dpmpp2m", precision="fp32")
    assert sample(scalar, "--n", "4", "--samples", str(scalar / "s")).exit_code == 0
    assert images(scalar / "s") != runs[0]  # the same weights, another denoiser


def test_an_export_with_the_tile_mean_prior_samples_reproducibly_whatever_the_batch(tmp_path):
    workspace = _edm_workspace(tmp_path, "spectral", "tiles", sampler="dpmpp2m",
                               precision="fp32")
    runs = _four_images_at_batch_3_and_1(workspace)
    assert runs[0] == runs[1] and len(set(runs[0].values())) == 4
    gaussian = _edm_workspace(tmp_path / "gaussian", "spectral", sampler="dpmpp2m",
                              precision="fp32")
    assert sample(gaussian, "--n", "4", "--samples", str(gaussian / "s")).exit_code == 0
    assert images(gaussian / "s") != runs[0]  # the same weights, another prior


def test_an_export_with_the_skip_mixture_samples_reproducibly_whatever_the_batch(tmp_path):
    workspace = _edm_workspace(tmp_path, "spectral", "tiles", mixture=True, sampler="dpmpp2m",
                               precision="fp32")
    runs = _four_images_at_batch_3_and_1(workspace)
    assert runs[0] == runs[1] and len(set(runs[0].values())) == 4
    single = _edm_workspace(tmp_path / "single", "spectral", "tiles", sampler="dpmpp2m",
                            precision="fp32")
    assert sample(single, "--n", "4", "--samples", str(single / "s")).exit_code == 0
    assert images(single / "s") != runs[0]  # the same weights, another skip


def test_a_network_that_reads_the_skip_samples_reproducibly_whatever_the_batch(tmp_path):
    from safetensors import safe_open

    workspace = _edm_workspace(tmp_path, "spectral", "tiles", mixture=True, skip_input=True,
                               sampler="dpmpp2m", precision="fp32")
    runs = _four_images_at_batch_3_and_1(workspace)
    assert runs[0] == runs[1] and len(set(runs[0].values())) == 4
    with safe_open(str(workspace / "models" / "ema.safetensors"), "pt") as handle:
        assert handle.metadata()["format"] == "canopy.model/7"
        assert handle.get_tensor("init_conv.weight").shape[1] == 6


@pytest.mark.parametrize("changes", [
    {"data_stats__skip_mixture": None},
    {"data_stats__skip_mixture__weights": [3]},
    {"data_stats__skip_mixture__weights": [3, 0]},
    {"data_stats__skip_mixture__components": [{"mean": [0.0] * 3, "std": [0.1] * 3}] * 2}])
def test_an_export_with_a_damaged_skip_mixture_is_refused(tmp_path, changes):
    workspace = _edm_workspace(tmp_path, "spectral", mixture=True, sampler="dpmpp2m",
                               precision="fp32")
    _rewrite_export(workspace, **changes)
    result = sample(workspace)
    assert result.exit_code == 2
    assert "its config is invalid (data_stats.skip_mixture: skip_components needs" in result.stderr


@pytest.mark.parametrize("changes, where", [
    ({"data_stats__tile_means": [[0.1, 0.2, 0.3]] * 7}, "data_stats.tile_means"),
    ({"data_stats__tile_means": [[0.1, 0.2, 3.0]] * 8}, "data_stats.tile_means"),
    ({"data_stats__tile_mean_bandwidth": 0.0}, "data_stats.tile_mean_bandwidth"),
    ({"data_stats__tile_mean_bandwidth": "wide"}, "data_stats.tile_mean_bandwidth")])
def test_an_export_with_a_damaged_tile_mean_prior_is_refused(tmp_path, changes, where):
    workspace = _edm_workspace(tmp_path, "spectral", "tiles", sampler="dpmpp2m",
                               precision="fp32")
    _rewrite_export(workspace, **changes)
    result = sample(workspace)
    assert result.exit_code == 2
    assert f"its config is invalid ({where}:" in result.stderr


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_export_with_mid_attention_samples_the_same_bits_whatever_the_batch(tmp_path,
                                                                              precision):
    """Attention mixes a tile's pixels, never the batch's images: image i stays fixed."""
    model = {**MODEL, "mid_attention_heads": 2}

    def trained_attention(net):  # its output projection starts at zero: give it weights
        torch.nn.init.normal_(net.mid_attention.out.weight, std=0.3)

    write_checkpoint(tmp_path / "models", model=model, adjust=trained_attention)
    write_params(tmp_path, model=model, precision=precision)
    runs = _four_images_at_batch_3_and_1(tmp_path)
    assert runs[0] == runs[1] and len(set(runs[0].values())) == 4


def test_a_spectral_export_without_its_spectrum_is_refused(tmp_path):
    workspace = _edm_workspace(tmp_path, "spectral", sampler="dpmpp2m", precision="fp32")
    _rewrite_export(workspace, data_stats={"mean": [-0.4, -0.3, -0.6], "std": [0.3, 0.25, 0.2]})
    result = sample(workspace)
    assert result.exit_code == 2
    assert "its config is invalid (data_stats.spectrum: preconditioning spectral needs" in result.stderr
