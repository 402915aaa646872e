"""The condition path of the U-Net (model/condition.py) and classifier-free guidance in the
sampling loop (model/sampling.py)."""

from __future__ import annotations

import math

import pytest
import torch

from canopy.model.condition import ordered_kinds
from canopy.model.condition_embedding import ConditionEmbedding, guided
from canopy.model.ddim import DDIMScheduler
from canopy.model.process import EDMProcess, build_process
from canopy.model.sampling import sample_images
from canopy.model.unet import Unet

SHAPE = {"dim": 8, "dim_mults": (1, 2)}
CONDITION = {"region": ["a", "b", "c"], "month": None, "lat": None}
NAN = float("nan")


def test_an_unconditioned_network_is_built_as_before():
    torch.manual_seed(0)
    plain = Unet(**SHAPE).state_dict()
    torch.manual_seed(0)
    conditioned = Unet(**SHAPE, condition=CONDITION).state_dict()
    # the same initial weights for every shared key: the condition modules are built last
    assert all(torch.equal(plain[k], conditioned[k]) for k in plain)
    assert {k.split(".")[0] for k in conditioned if k not in plain} == {"condition"}
    torch.manual_seed(0)
    assert list(Unet(**SHAPE, condition={}).state_dict()) == list(plain)


def test_a_new_conditioned_network_without_a_condition_is_the_plain_network():
    """Every kind's "absent" embedding starts at zero, so the unconditional model (guidance 0)
    starts as the unconditioned network does, not under a random offset."""
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0])
    torch.manual_seed(0)
    plain = Unet(**SHAPE).eval()
    torch.manual_seed(0)
    conditioned = Unet(**SHAPE, condition=CONDITION).eval()
    with torch.no_grad():
        assert torch.equal(conditioned(x, t), plain(x, t))
        assert not torch.equal(conditioned(x, t, torch.tensor([[0.0, NAN, NAN]])), plain(x, t))


def test_the_condition_changes_the_output_and_nan_means_none():
    torch.manual_seed(0)
    net = Unet(**SHAPE, condition=CONDITION).eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10.0])
    a = net(x, t, torch.tensor([[0.0, 6.0, 45.0]]))
    b = net(x, t, torch.tensor([[1.0, 6.0, 45.0]]))
    none = net(x, t, torch.tensor([[NAN, NAN, NAN]]))
    assert not torch.allclose(a, b)
    assert torch.equal(net(x, t), none)  # no condition given = every kind absent


def test_cyclic_kinds_wrap_around():
    emb = ConditionEmbedding({"month": None, "lon": None}, 16)
    december, january = emb(torch.tensor([[12.0, 0.0]])), emb(torch.tensor([[13.0, 0.0]]))
    assert torch.allclose(emb(torch.tensor([[1.0, 0.0]])), january, atol=1e-5)
    assert torch.allclose(emb(torch.tensor([[1.0, 180.0]])), emb(torch.tensor([[1.0, -180.0]])),
                          atol=1e-5)
    assert not torch.allclose(december, january)


def test_absent_values_give_finite_gradients():
    torch.manual_seed(0)
    net = Unet(**SHAPE, condition=CONDITION)
    cond = torch.tensor([[0.0, 6.0, 45.0], [NAN, NAN, NAN], [2.0, NAN, -10.0]])
    net(torch.randn(3, 3, 16, 16), torch.tensor([1.0, 2.0, 3.0]), cond).square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_a_condition_for_an_unconditioned_network_is_refused():
    with pytest.raises(ValueError, match="not conditioned"):
        Unet(**SHAPE)(torch.randn(1, 3, 16, 16), torch.tensor([1.0]), torch.zeros(1, 1))


def test_kinds_take_one_order_and_unknown_ones_are_named():
    assert ordered_kinds(["lat", "month", "region"]) == ["region", "month", "lat"]
    with pytest.raises(ValueError, match="unknown condition 'colour'"):
        ordered_kinds(["colour"])


def test_guidance_combines_linearly():
    u, c = torch.tensor([1.0]), torch.tensor([3.0])
    assert guided(u, c, 0.0) == 1.0 and guided(u, c, 1.0) == 3.0 and guided(u, c, 2.0) == 5.0


class _Recorder(torch.nn.Module):
    """A network whose output is its condition's first value (NaN -> -1), so the guided mix
    is visible; it records each call's condition rows."""

    channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[torch.Tensor] = []

    def forward(self, x, t, cond=None):
        self.calls.append(cond.clone())
        value = cond[:, :1].nan_to_num(-1.0).reshape(-1, 1, 1, 1)
        return torch.zeros_like(x) + value


def _scheduler():
    return DDIMScheduler(build_process({"diffusion": {"timesteps": 20}, "schedule": "linear"}),
                         2, eta=0.0, spacing="trailing")


@pytest.mark.parametrize("guidance, calls_per_group", [(0.0, None), (1.0, 1), (3.0, 2)])
def test_guided_sampling_calls_once_per_condition_group(guidance, calls_per_group):
    net = _Recorder()
    cond = torch.tensor([[0.0], [1.0], [0.0]])
    sample_images(net, _scheduler(), [1, 2, 3], (3, 8, 8), torch.device("cpu"),
                  conditions=cond, guidance=guidance)
    per_step = [call for call in net.calls]  # fp32 CPU: one call per image and group
    if guidance == 0:
        assert all(torch.isnan(call).all() for call in per_step)
        return
    rows = [call.shape[0] for call in per_step]
    assert set(rows) == {1}  # each condition is one row, broadcast
    conditional = [call for call in per_step if not torch.isnan(call).all()]
    assert len(per_step) == calls_per_group * len(conditional)


def test_an_image_does_not_depend_on_the_other_conditions_in_its_batch():
    torch.manual_seed(0)
    net = Unet(**SHAPE, condition={"region": ["a", "b"]}).eval()
    process = EDMProcess(sigma_data=0.5)
    denoiser = process.denoiser(net)
    from canopy.model.heun import HeunScheduler

    def draw(seeds, cond):
        return sample_images(denoiser, HeunScheduler(process, 3), seeds, (3, 16, 16),
                             torch.device("cpu"), conditions=torch.tensor(cond), guidance=2.0)

    alone = draw([7], [[1.0]])
    mixed = draw([5, 7, 9], [[0.0], [1.0], [0.0]])
    assert torch.equal(alone[0], mixed[1])
    assert not torch.equal(draw([7], [[0.0]])[0], alone[0])


def test_a_conditioned_network_pickles():
    import pickle

    net = Unet(**SHAPE, condition=CONDITION)
    again = pickle.loads(pickle.dumps(net))
    assert again.condition.kinds == ["region", "month", "lat"]


def test_fourier_features_cover_coarse_and_fine_scales():
    from canopy.model.condition import FOURIER_FREQUENCIES
    from canopy.model.condition_embedding import _frequencies

    lat = _frequencies("lat")
    assert len(lat) == FOURIER_FREQUENCIES and math.isclose(float(lat[0]), math.pi / 2, rel_tol=1e-6)
    assert float(lat[-1]) / float(lat[0]) == 2.0 ** (FOURIER_FREQUENCIES - 1)
