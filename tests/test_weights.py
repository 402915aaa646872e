"""canopy/weights.py: the export the writer makes, the reader gets back; other files are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from canopy import weights
from canopy.errors import UserError

CONFIG = {"model": {"dim": 8}, "tile_size": 16, "schedule": "linear", "step": 3}


def test_the_reader_gets_back_what_the_writer_wrote(tmp_path):
    state = {"a.weight": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2)}  # a.t(): strided
    path = tmp_path / weights.EXPORT_FILE
    weights.write_export(path, state, CONFIG)
    loaded, config = weights.read_export(path)
    assert config == CONFIG and weights.read_export_config(path) == CONFIG
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], state[name]) for name in state)


@pytest.mark.parametrize("model, diffusion, expected", [
    ({"dim": 8}, {}, "canopy.model/2"),
    ({"dim": 8}, {"preconditioning": "spectral"}, "canopy.model/2"),
    ({"dim": 8, "condition": {"region": ["a"]}}, {}, "canopy.model/3"),
    ({"dim": 8, "mid_attention_heads": 2}, {}, "canopy.model/4"),
    ({"dim": 8, "condition": {"region": ["a"]}, "mid_attention_heads": 1}, {}, "canopy.model/4"),
    ({"dim": 8}, {"preconditioning": "spectral", "mean_prior": "tiles"}, "canopy.model/5"),
    ({"dim": 8, "mid_attention_heads": 2}, {"mean_prior": "tiles"}, "canopy.model/5"),
    ({"dim": 8}, {"network_sigma_max": 80.0}, "canopy.model/5"),
    ({"dim": 8}, {"skip_components": 16, "mean_prior": "tiles"}, "canopy.model/6"),
    ({"dim": 8}, {"skip_components": 16, "skip_input": True}, "canopy.model/7"),
])
def test_an_export_takes_the_oldest_format_that_builds_it_rightly(tmp_path, model, diffusion,
                                                                 expected):
    """A canopy that predates attention refuses such an export in one line instead of failing
    to build it, and one that predates the tile-mean prior instead of sampling without it;
    the others keep their format."""
    from safetensors import safe_open

    path = tmp_path / weights.EXPORT_FILE
    config = {**CONFIG, "model": model, "diffusion": diffusion}
    weights.write_export(path, {"b": torch.ones(2)}, config)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["format"] == expected
    assert weights.read_export_config(path) == config


def test_a_file_of_another_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / weights.EXPORT_FILE
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "canopy.model/99"})
    with pytest.raises(UserError, match="is not a Canopy model .*'canopy.model/99'") as err:
        weights.read_export_config(path)
    assert "\n" not in str(err.value)
    path.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="it is corrupt"):
        weights.read_export_config(path)
    with pytest.raises(UserError, match="not found: train a model first"):
        weights.read_export_config(tmp_path / "none.safetensors")


def test_the_newest_state_holds_the_raw_weights(tmp_path):
    for step in (9, 10):
        folder = tmp_path / weights.STATE_DIR / weights.step_dir_name(step)
        folder.mkdir(parents=True)
        save_file({"x": torch.zeros(1)}, str(folder / weights.RAW_WEIGHTS_FILE))
    assert weights.latest_raw_weights(tmp_path).parent.name == "step-00000010"
    with pytest.raises(UserError, match="use sample.weights: ema"):
        weights.latest_raw_weights(tmp_path / "empty")


WRITE_ONE = """
import sys, torch
from canopy import weights
state = {name: torch.full((3,), float(i)) for i, name in enumerate("abcdefgh")}
weights.write_export(sys.argv[1], state, {"model": {"dim": 8}, "tile_size": 16, "step": 1,
                                          "seed": 0, "schedule": "linear", "z": 1, "a": 2})
"""


def test_the_same_export_gives_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its header by a per-process hash: without canonical bytes every run
    wrote another file (and another checkpoint sha256 into the samples manifest)."""
    import subprocess
    import sys

    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", WRITE_ONE, str(path)], check=True)
    assert len({path.read_bytes() for path in paths}) == 1
    loaded, config = weights.read_export(paths[0])
    assert config["a"] == 2 and torch.equal(loaded["h"], torch.full((3,), 7.0))
