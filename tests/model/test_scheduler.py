"""Every registered scheduler keeps the interface that the one sampling loop relies on, and the
registry is what `sample.sampler` accepts."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import torch

from canopy.model.diffusion import GaussianDiffusion, make_betas
from canopy.model.process import EDMProcess
from canopy.model.registry import SCHEDULERS, make_scheduler
from canopy.model.scheduler import Scheduler
from canopy.model.spacing import SPACINGS
from canopy.sample.params import SampleParams

TIMESTEPS = 20
SIGMA_MAX = 80.0
CONTINUOUS_ONLY = ("heun",)
# (name, eta, spacing): the discrete process's spacings, and karras for the continuous one
SETTINGS = [(name, eta, spacing) for name in SCHEDULERS for eta in (0.0, 1.0)
            for spacing in (*SPACINGS, "karras")
            if not (SCHEDULERS[name].fixed_eta == 0 and eta != 0)
            and not (name in CONTINUOUS_ONLY and spacing != "karras")]


def build(name: str, eta: float = 0.0, spacing: str = "quadratic") -> Scheduler:
    if spacing == "karras":
        diffusion = EDMProcess(sigma_data=0.5, sigma_max=SIGMA_MAX)
    else:
        diffusion = GaussianDiffusion(make_betas("linear", TIMESTEPS))
    return make_scheduler(name, diffusion, steps=5, eta=eta, spacing=spacing)


def test_a_continuous_only_sampler_refuses_the_discrete_process():
    with pytest.raises(ValueError, match="continuous process"):
        make_scheduler("heun", GaussianDiffusion(make_betas("linear", TIMESTEPS)), steps=5,
                       eta=0.0, spacing="quadratic")


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n not in CONTINUOUS_ONLY])
def test_a_continuous_process_steps_at_karras_spacing(name):
    with pytest.raises(ValueError, match="set sample.spacing to karras"):
        make_scheduler(name, EDMProcess(), steps=5, eta=0.0, spacing="quadratic")


@pytest.mark.parametrize("name", ["ddim", "dpmpp2m"])
def test_the_discrete_process_refuses_karras_spacing(name):
    with pytest.raises(ValueError, match="unknown timestep spacing 'karras'"):
        make_scheduler(name, GaussianDiffusion(make_betas("linear", TIMESTEPS)), steps=5,
                       eta=0.0, spacing="karras")


def test_the_sampler_param_accepts_exactly_the_registered_names():
    assert typing.get_args(SampleParams.model_fields["sampler"].annotation) == tuple(SCHEDULERS)
    for name in SCHEDULERS:
        assert SampleParams(sampler=name).sampler == name


def test_the_registry_and_the_params_do_not_import_torch():
    """Params validation runs for every command: it must stay cheap."""
    code = ("import sys, canopy.model.registry, canopy.sample.params; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match="use one of ddpm, ddim, dpmpp2m, heun"):
        build("euler")


@pytest.mark.parametrize("name", [n for n, e in SCHEDULERS.items() if e.fixed_eta == 0])
def test_a_deterministic_scheduler_refuses_eta(name):
    with pytest.raises(ValueError, match="deterministic: eta must be 0"):
        build(name, eta=0.5)


@pytest.mark.parametrize("name, eta, spacing", SETTINGS)
def test_steps_descend_from_the_noisiest_timestep_to_the_clean_image(name, eta, spacing):
    scheduler = build(name, eta, spacing)
    assert isinstance(scheduler, Scheduler)
    ts = scheduler.timesteps
    noisiest = SIGMA_MAX if spacing == "karras" else TIMESTEPS - 1
    assert ts[0] == noisiest
    if name == "heun":  # each level after the first twice: the Euler step, its correction
        levels = ts[::2]
        assert ts[1::2] == levels[1:] and all(a > b > 0 for a, b in zip(levels, levels[1:]))
    else:
        assert all(a > b >= 0 for a, b in zip(ts, ts[1:]))
    pairs = scheduler.pairs()
    assert [t for t, _ in pairs] == ts
    assert [t_prev for _, t_prev in pairs] == [*ts[1:], scheduler.final_time]
    assert scheduler.final_time == (0.0 if spacing == "karras" else -1)


@pytest.mark.parametrize("name, eta, spacing", SETTINGS)
def test_eta_and_spacing_are_what_the_registry_and_settings_say(name, eta, spacing):
    scheduler = build(name, eta, spacing)
    fixed = SCHEDULERS[name].fixed_eta
    assert scheduler.eta == (eta if fixed is None else fixed)
    assert scheduler.spacing in (spacing, "all")
    assert scheduler.init_noise_sigma == (SIGMA_MAX if spacing == "karras" else 1.0)
    if scheduler.spacing == "all":
        assert scheduler.timesteps == list(range(TIMESTEPS - 1, -1, -1))


@pytest.mark.parametrize("name, eta, spacing", SETTINGS)
def test_a_step_takes_noise_exactly_where_it_needs_it(name, eta, spacing):
    """Noise is required where needs_noise says so and ignored elsewhere; the last step (to
    the clean image) and every step of an eta-0 run take none."""
    scheduler = build(name, eta, spacing)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    out, noise = torch.randn_like(x), torch.randn(x.shape, generator=g)
    pairs = scheduler.pairs()
    assert not scheduler.needs_noise(*pairs[-1])
    assert any(scheduler.needs_noise(*p) for p in pairs) == (scheduler.eta > 0)
    for t, t_prev in pairs:
        if t == t_prev:
            continue  # heun's correction needs the Euler step before it
        scheduler.reset()  # each step on its own: a first step
        with_noise = scheduler.step(out, t, t_prev, x, noise)
        scheduler.reset()
        if scheduler.needs_noise(t, t_prev):
            with pytest.raises(ValueError, match="noise"):
                scheduler.step(out, t, t_prev, x)
        else:
            assert torch.equal(scheduler.step(out, t, t_prev, x), with_noise)


@pytest.mark.parametrize("name, eta, spacing", SETTINGS)
def test_reset_makes_a_run_repeatable(name, eta, spacing):
    scheduler = build(name, eta, spacing)

    def run(stop_after: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, 4, 4, generator=g)
        for i, (t, t_prev) in enumerate(scheduler.pairs()):
            noise = torch.randn(x.shape, generator=g) if scheduler.needs_noise(t, t_prev) else None
            x = scheduler.step(torch.tanh(x), t, t_prev, x, noise)
            if i == stop_after:
                break
        return x

    first = run()
    run(stop_after=1)  # interrupted
    scheduler.reset()
    assert torch.equal(run(), first)
