"""The optimiser schedule: lr warm-up and decay, Adam's beta2 (train/engine.py)."""

import math

import pytest

from canopy.errors import UserError
from canopy.params import parse_params
from canopy.train.engine import Trainer
from canopy.train.loop import resume_params
from canopy.train.runtime import resolve_runtime

from .conftest import tiny_params


def _trainer(tiles, tmp_path, **train):
    params = tiny_params(tiles, tmp_path / "m", **train)
    return Trainer(params, resolve_runtime(params.train))


def test_constant_after_warm_up_by_default(tiles, tmp_path):
    t = _trainer(tiles, tmp_path, steps=10, lr=1e-3, warmup_steps=4)
    assert [t.lr_at(s) for s in range(10)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3] + [1e-3] * 6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_over_the_last_fraction(tiles, tmp_path, kind):
    t = _trainer(tiles, tmp_path, steps=10, lr=1e-3, warmup_steps=0, lr_decay=kind,
                 lr_decay_fraction=0.4)
    lrs = [t.lr_at(s) for s in range(10)]
    assert lrs[:6] == pytest.approx([1e-3] * 6)  # the decay is the last 4 steps
    done = [0, 0.25, 0.5, 0.75]
    want = [1 - d if kind == "linear" else 0.5 * (1 + math.cos(math.pi * d)) for d in done]
    assert lrs[6:] == pytest.approx([1e-3 * w for w in want])
    assert all(a > b for a, b in zip(lrs[6:], lrs[7:]))


def test_warm_up_and_decay_overlap_take_the_lower(tiles, tmp_path):
    t = _trainer(tiles, tmp_path, steps=4, lr=1.0, warmup_steps=4, lr_decay="linear",
                 lr_decay_fraction=1.0)
    assert [t.lr_at(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.5, 0.25])


def test_beta2_reaches_the_optimizer(tiles, tmp_path):
    t = _trainer(tiles, tmp_path, adam_beta2=0.99)
    assert t.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    assert _trainer(tiles, tmp_path).optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_schedule_keys_enter_the_params_hash_only_off_their_old_values(tiles, tmp_path):
    before = resume_params(tiny_params(tiles, tmp_path))["train"]
    assert not {"lr_decay", "lr_decay_fraction", "adam_beta2", "steps"} & set(before)
    after = resume_params(tiny_params(tiles, tmp_path, lr_decay="linear", adam_beta2=0.99))["train"]
    assert after["lr_decay"] == "linear" and after["adam_beta2"] == 0.99
    assert after["steps"] == 8  # the decay depends on the length of the run


def test_bad_schedule_params_say_what_is_allowed():
    with pytest.raises(UserError, match="lr_decay"):
        parse_params({"train": {"lr_decay": "exp"}})
    with pytest.raises(UserError, match="did you mean 'adam_beta2'"):
        parse_params({"train": {"adam_beta": 0.99}})
    with pytest.raises(UserError, match="adam_beta2"):
        parse_params({"train": {"adam_beta2": 1.0}})

