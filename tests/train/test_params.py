import pytest

from canopy.errors import UserError
from canopy.params import parse_params


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"lr": -1e-4}}, "train.lr: Input should be greater than 0"),
        ({"model": {"dim": 63}}, "dim must be an even number"),
        ({"model": {"dim": 64, "norm_groups": 3}}, "norm_groups=3 does not divide"),
        ({"model": {"norm": "batch"}}, "model.norm: Input should be 'group' or 'layer'"),
        ({"diffusion": {"objective": "x0"}}, "diffusion.objective: Input should be 'eps' or 'v'"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"model": {"kernel_size": 4}}, "model.kernel_size: Input should be 3, 5, 7 or 9"),
        ({"model": {"mlp_kernel_size": 5}}, "model.mlp_kernel_size: Input should be 1 or 3"),
        ({"model": {"dim": 16, "dim_mults": [1, 2], "mid_attention_heads": 3}},
         "mid_attention_heads=3 does not divide the middle's 32 channels"),
        ({"train": {"num_workers": -1}}, "num_workers must be 'auto' or 0..64"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
        ({"train": {"bach_size": 8}}, "train.bach_size: unknown key; did you mean 'batch_size'?"),
    ],
)
def test_bad_params_fail_at_load_time(raw, message):
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_defaults_are_the_reference_design():
    p = parse_params({})
    assert p.model.unet_kwargs() == {
        "dim": 64, "init_dim": None, "dim_mults": [1, 2, 4, 8], "channels": 3,
        "convnext_mult": 2, "norm": "group", "norm_groups": 1,
    }
    assert p.diffusion.timesteps == 1000 and p.diffusion.objective == "eps"
    assert p.model.downsample_factor == 8


def test_kernel_size_is_recorded_only_away_from_its_default():
    # Weights written before model.kernel_size existed have no such key: at 7 they must keep
    # matching (sample's shape check, the resume hash), and any other size must be recorded.
    assert "kernel_size" not in parse_params({"model": {"kernel_size": 7}}).model.unet_kwargs()
    assert parse_params({"model": {"kernel_size": 3}}).model.unet_kwargs()["kernel_size"] == 3
    assert "mlp_kernel_size" not in parse_params({}).model.unet_kwargs()
    assert "mid_attention_heads" not in parse_params({}).model.unet_kwargs()
    assert parse_params({"model": {"mid_attention_heads": 2}}).model.unet_kwargs()[
        "mid_attention_heads"] == 2
    assert parse_params({"model": {"mlp_kernel_size": 1}}).model.unet_kwargs()[
        "mlp_kernel_size"] == 1
