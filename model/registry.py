"""The samplers by name: what `sample.sampler` accepts, and how to build one.

Plain Python (no torch import), so that params validation stays cheap for every command: an
entry names its Scheduler class (model/scheduler.py) by import path, imported only when a
scheduler is built. A new sampler is its own module and one line in SCHEDULERS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from canopy.model.diffusion import GaussianDiffusion
    from canopy.model.scheduler import Scheduler


@dataclass(frozen=True)
class SchedulerEntry:
    target: str  # "module:Class"
    # The eta it always samples with, whatever sample.eta says (0: deterministic, so
    # sample.eta must be 0 too); None: sample.eta applies.
    fixed_eta: float | None = None

    def load(self) -> type[Scheduler]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


SCHEDULERS: dict[str, SchedulerEntry] = {
    "ddpm": SchedulerEntry("canopy.model.ddpm:DDPMScheduler", fixed_eta=1.0),
    "ddim": SchedulerEntry("canopy.model.ddim:DDIMScheduler"),
    "dpmpp2m": SchedulerEntry("canopy.model.dpmsolver:DPMSolverMultistepScheduler", fixed_eta=0.0),
    # EDM's 2nd-order Heun (continuous processes only): `steps` noise levels, 2 steps - 1 calls
    "heun": SchedulerEntry("canopy.model.heun:HeunScheduler", fixed_eta=0.0),
}


def make_scheduler(
    name: str, diffusion: GaussianDiffusion, *, steps: int, eta: float, spacing: str
) -> Scheduler:
    """The scheduler `name` for these sample settings (each uses the ones it needs)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SCHEDULERS)}")
    scheduler_class = SCHEDULERS[name].load()
    return scheduler_class.from_settings(diffusion, steps=steps, eta=eta, spacing=spacing)
