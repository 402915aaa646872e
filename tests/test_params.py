"""params.yaml: one schema; typos and bad values fail at load time naming key and choices."""

from __future__ import annotations

import re

import pytest
import yaml

from canopy.errors import UserError
from canopy.params import load_params, parse_params
from tests.conftest import REPO_ROOT


def error_of(raw) -> str:
    with pytest.raises(UserError) as info:
        parse_params(raw)
    return str(info.value)


def test_repository_params_file_is_the_offline_demo():
    """The committed params.yaml must run with no network and no credentials."""
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.etl.source == "synthetic"


def test_defaults_follow_the_spec():
    params = parse_params({})
    assert (params.seed, params.schedule) == (0, "linear")
    assert (params.etl.tile_size, params.etl.stride, params.etl.shard_size) == (128, 128, 1000)
    assert params.etl.sentinelhub.base_url == "https://sh.dataspace.copernicus.eu"


@pytest.mark.parametrize("raw, expected", [
    ({"schedule": "cosin"}, "schedule: Input should be 'linear', 'cosine' or 'sigmoid' (got 'cosin')"),
    ({"etl": {"tile_sise": 64}}, "etl.tile_sise: unknown key; did you mean 'tile_size'?"),
    ({"sed": 1}, "sed: unknown key; did you mean 'seed'?"),
    ({"etl": {"source": "modis"}}, "etl.source: Input should be 'sentinelhub', 'stac', 'local' or 'synthetic'"),
    ({"etl": {"min_valid_fraction": 1.5}}, "etl.min_valid_fraction: Input should be less than or equal to 1"),
    ({"etl": {"stride": 256}}, "etl.stride (256) is larger than etl.tile_size (128)"),
    ({"etl": {"local": {"bands": [1, 2]}}}, "etl.local.bands: give exactly 3 bands"),
    ({"etl": {"local": {"bands": [0, 1, 2]}}}, "band indexes are 1-based"),
    ({"etl": {"sentinelhub": {"aois": [{"name": "a", "bbox": [1, 2, 3, 4], "time": ["2024-01-01", "2024-01-02"], "max_clod": 0.1}]}}},
     "etl.sentinelhub.aois.0.max_clod: unknown key; did you mean 'max_cloud'?"),
    ({"etl": {"sentinelhub": {"aois": [{"name": "a", "bbox": [1, 2, 3, 4], "time": ["2024-01-01", "2024-01-02"]}] * 2}}},
     "AOI names must be unique"),
    ({"etl": {"tile_size": 100, "stride": 100}}, "etl.tile_size 100 is not divisible by 8"),
])
def test_bad_params_name_the_key(raw, expected):
    assert expected in error_of(raw)


@pytest.mark.parametrize("section, key, target", [
    ("train", "data", "paths.tiles"), ("train", "out", "paths.models"),
    ("sample", "models", "paths.models"), ("sample", "out", "paths.samples"),
    ("evaluate", "out", "paths.metrics"),
])
def test_an_artifact_path_key_that_moved_says_where(section, key, target):
    assert error_of({section: {key: "x"}}).startswith(f"params: {section}.{key}: moved to {target}")


def test_paths_name_each_artifact_once():
    paths = parse_params({}).paths
    assert (paths.tiles, paths.models, paths.samples, paths.metrics) == (
        "data/tiles", "models", "data/samples", "metrics")
    assert "paths.tiles: String should have at least 1 character" in error_of(
        {"paths": {"tiles": ""}})


def test_errors_are_one_line():
    message = error_of({"schedule": "x", "etl": {"tile_sise": 1, "source": "y"}})
    assert "\n" not in message
    assert message.count(";") >= 2


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("etl: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_params(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_params(listed)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_params_are_valid(path):
    params = load_params(path)
    demo = load_params(REPO_ROOT / "params.yaml")
    if params.etl.source == "synthetic":
        # A variant of the offline demo (params-conditioned.yaml): params.yaml's budget
        assert params.model.unet_kwargs() == demo.model.unet_kwargs()
        assert params.train.steps == demo.train.steps
        # ... and its recipe (the spectral skip: one filter per region for a model
        # conditioned on region, model/spectral.py), less the tile-mean prior, where
        # sampling starts, the skip's mixture of kinds (no per-region form yet) and the
        # network reading the skip, which were not measured on it
        unmeasured = {"mean_prior", "sigma_max", "network_sigma_max", "skip_components",
                      "skip_input"}
        assert params.diffusion.model_dump(exclude=unmeasured) == demo.diffusion.model_dump(
            exclude=unmeasured)
        return
    if path.stem.endswith("-cpu"):
        # Real imagery on one CPU: params.yaml's network and recipe, as measured on NEON
        assert params.model.unet_kwargs() == demo.model.unet_kwargs()
        assert params.diffusion == demo.diffusion
        assert params.train.steps >= demo.train.steps
        return
    # Real runs on a GPU: a network of at least the 64 px NEON recipe's size, 4 levels deep
    assert params.model.dim >= 32 and params.model.dim_mults == [1, 2, 4, 8]


@pytest.mark.parametrize("text, expected", [
    ("seed: 1\nseed: 2\n", "key 'seed' is given twice"),
    ("train: {steps: 5, lr: 0.1, steps: 6}\n", "key 'steps' is given twice"),
    ("a: &x [1, 2]\nb: *x\n", "aliases (*x) are not allowed"),
    # An alias bomb: refused at its first alias, before anything is expanded.
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "aliases (*a) are not allowed"),
])
def test_duplicate_keys_and_aliases_are_refused_in_one_line(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_params(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("data", ["seed: 1\n".encode("utf-16"), b"seed: \xff\xfe 1\n"])
def test_params_that_are_not_utf8_are_one_line(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    with pytest.raises(UserError, match=r"params.yaml: not UTF-8 text \(byte \d+") as err:
        load_params(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("raw, expected", [
    ({"seed": True}, "seed: expected an integer, got true"),
    ({"model": {"dim": "8"}}, "model.dim: expected an integer, got the text '8'"),
    ({"train": {"steps": 1e30}}, "train.steps: expected an integer, got 1e+30"),
    ({"train": {"steps": 8.0}}, "train.steps: expected an integer, got 8.0"),
    ({"train": {"grad_clip": float("inf")}}, "train.grad_clip: Input should be a finite number"),
    ({"train": {"lr": float("nan")}}, "train.lr: Input should be a finite number"),
    ({"train": {"lr": "1e-3"}}, "train.lr: expected a number, got the text '1e-3'"),
])
def test_values_pydantic_would_convert_are_refused(raw, expected):
    assert expected in error_of(raw)


def test_an_integer_for_a_number_is_still_fine():
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0


def test_the_yaml_spellings_are_refused_too(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: true\ntrain: {grad_clip: .inf, steps: 1.0e+30}\nmodel: {dim: '8'}\n")
    with pytest.raises(UserError) as err:
        load_params(path)
    message = str(err.value)
    assert all(key in message for key in ("seed:", "train.grad_clip:", "train.steps:",
                                          "model.dim:")) and "\n" not in message


def test_a_deeply_nested_file_is_one_line_quickly(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(UserError, match="nested more than 50 levels deep") as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("schedule: " + "x" * 2_000_000 + "\n")
    with pytest.raises(UserError, match=r"is 2000011 bytes; a params file is at most"):
        load_params(path)


def test_a_long_bad_value_is_shown_as_a_short_excerpt():
    message = error_of({"schedule": "x" * 100_000})
    assert len(message) < 400 and "(100002 characters)" in message


@pytest.mark.parametrize("raw, expected", [(True, "all"), (False, "none"), ("transpose", "transpose"),
                                           ("all", "all"), ("none", "none")])
def test_augment_names_its_symmetries_and_keeps_the_booleans(raw, expected):
    assert parse_params({"train": {"augment": raw}}).train.augment == expected


def test_an_unknown_augment_names_the_choices():
    assert "train.augment: Input should be 'none', 'transpose' or 'all'" in error_of(
        {"train": {"augment": "flip"}})


@pytest.mark.parametrize("raw, expected", [
    ({"diffusion": {"process": "edm", "timestep_sampling": "lognormal"}},
     "sample.spacing quadratic does not fit diffusion.process edm: use karras"),
    ({"sample": {"spacing": "karras"}}, "sample.spacing karras does not fit diffusion.process vp"),
    ({"sample": {"sampler": "heun"}}, "sample.sampler heun needs a continuous process"),
    ({"diffusion": {"process": "edm"}, "sample": {"spacing": "karras"}},
     "process edm trains with timestep_sampling lognormal"),
    ({"diffusion": {"procss": "edm"}}, "diffusion.procss: unknown key; did you mean 'process'?"),
    ({"diffusion": {"sigma_data": 0}}, "sigma_data must be 'auto' or in (0, 100]"),
    ({"diffusion": {"process": "flow"}}, "diffusion.process: Input should be 'vp' or 'edm'"),
    ({"diffusion": {"loss_weighting": "learned"}}, "loss_weighting learned needs process edm"),
    ({"diffusion": {"lognormal_mean": [-0.5, 2.5], "lognormal_std": [1.6, 1.0]}},
     "a mixture of noise levels (lists in lognormal_mean, lognormal_std) needs process edm"),
    ({"diffusion": {"process": "edm", "timestep_sampling": "lognormal", "lognormal_mean": [0, 2]},
      "sample": {"spacing": "karras"}},
     "lognormal_mean and lognormal_std need the same number of entries"),
    ({"diffusion": {"process": "edm", "timestep_sampling": "lognormal", "lognormal_mean": [0, 2],
                    "lognormal_std": [1, 1], "lognormal_weights": [1, 0]},
      "sample": {"spacing": "karras"}}, "lognormal_weights needs one positive weight per entry"),
    ({"diffusion": {"lognormal_weights": [1, 2]}},
     "lognormal_weights needs lists in lognormal_mean and lognormal_std"),
    ({"diffusion": {"lognormal_std": [1.0, 0]}}, "diffusion.lognormal_std: must be in (0, 10]"),
    ({"diffusion": {"loss_weighting": "adaptive"}},
     "diffusion.loss_weighting: Input should be 'fixed' or 'learned'"),
    ({"diffusion": {"preconditioning": "spectral"}}, "preconditioning spectral needs process edm"),
    ({"diffusion": {"process": "edm", "timestep_sampling": "lognormal",
                    "preconditioning": "spectral"}, "sample": {"spacing": "karras"}},
     "preconditioning spectral needs standardize: true"),
    ({"diffusion": {"preconditioning": "wiener"}},
     "diffusion.preconditioning: Input should be 'scalar' or 'spectral'"),
])
def test_process_settings_that_do_not_fit_are_refused(raw, expected):
    assert expected in error_of(raw)


def test_a_continuous_process_takes_more_sampling_steps_than_timesteps():
    params = parse_params({"diffusion": {"process": "edm", "timestep_sampling": "lognormal",
                                         "timesteps": 10},
                           "sample": {"spacing": "karras", "steps": 20, "sampler": "heun"}})
    assert params.sample.steps == 20


def test_every_key_the_docs_set_with_dvc_exp_run_is_in_params_yaml():
    """`dvc exp run -S key=value` fails ("Could not override") for a key params.yaml lacks; the
    docs' commands must run as written (a new key takes `+key=value`)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    keys = {(page.name, key) for page in pages
            for key in re.findall(r"-S ([a-z_][a-z_.]*)=", page.read_text())}
    assert keys, "the docs give no -S overrides: the pattern has gone stale"
    for page, key in sorted(keys):
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, (
                f"{page}: `-S {key}=...` names a key params.yaml lacks")
            node = node[part]
