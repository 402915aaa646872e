"""The `sample` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from canopy.model.condition import CLASS_KINDS, ConditionKind
from canopy.model.registry import SCHEDULERS
from canopy.schema import Auto, StrictModel

# The registry's names, in its order: the error for an unknown one lists them all.
SamplerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


class SampleParams(StrictModel):
    n: int = Field(64, ge=1, le=1_000_000)  # images to generate
    batch_size: int = Field(16, ge=1, le=4096)  # images per network call (memory/speed only)
    # ddpm: ancestral, all diffusion.timesteps steps (Ho et al. 2020); ddim: `steps` steps at
    # `spacing` with `eta` (Song et al. 2021); dpmpp2m: `steps` steps of DPM-Solver++(2M) at
    # the same spacing, deterministic (Lu et al. 2022).
    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1)  # ddim and dpmpp2m; ddpm always takes every timestep
    eta: float = Field(0.0, ge=0.0, le=1.0)  # ddim only: 0 deterministic, 1 DDPM-like noise
    # Timesteps of ddim and dpmpp2m, both from T-1: quadratic = dense at low noise, down to
    # t = 0 (Song et al. 2021, D.2), sharper fine detail (measured: docs/benchmarks.md "sample");
    # trailing = evenly spaced (Lin et al. 2024), the last update from t = T/steps - 1.
    # karras: EDM's noise levels (rho = 7), the only spacing of a continuous process (edm).
    spacing: Literal["quadratic", "trailing", "karras"] = "quadratic"
    weights: Literal["ema", "raw"] = "ema"  # raw: the latest training state's raw weights
    # Post-hoc EMA (canopy/phema.py): the EMA of this relative std (e.g. 0.05: the average
    # over about the last 5% of training), rebuilt from the snapshots in models/phema/ that
    # train.phema_stds made; null = the export's own EMA (train.ema_decay). Changing it re-runs
    # sample and evaluate only; `canopy ema sweep` scores a range of stds on the val tiles.
    ema_std: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto: CUDA, then MPS, then CPU
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # as train.precision
    channels_last: Auto = "auto"  # as train.channels_last: auto = on for CUDA and CPU
    grid_images: int = Field(64, ge=0, le=1024)  # images in grid.png
    dist_timeout_s: int = Field(120, ge=1, le=86_400)  # under torchrun, as train.dist_timeout_s
    # A conditioned model (model.condition) only. Classifier-free guidance (Ho & Salimans
    # 2022): 0 = unconditional, 1 = conditional, > 1 = guided (stronger adherence to the
    # condition, less diversity; 0 and 1 cost one network call a step, others two).
    guidance: float = Field(1.0, ge=0.0, le=20.0)
    # Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of
    # Itself"): D = D_guide + w (D - D_guide), where the guide is the same network earlier in
    # its training: the post-hoc EMA of relative std guide_ema_std at the snapshot nearest to
    # guide_at x the export's step, rebuilt from models/phema/ (train.phema_stds). The guide
    # makes the model's own errors, more strongly; w > 1 moves each step away from them.
    # 1 = off (one network call a step), > 1 two calls. Any model, conditioned or not.
    autoguidance: float = Field(1.0, ge=1.0, le=20.0)
    guide_at: float = Field(0.25, gt=0.0, lt=1.0)  # the guide's step, as a share of the export's
    guide_ema_std: float = Field(0.1, gt=0.0)  # the guide's post-hoc EMA std
    # The noise levels that autoguidance acts on (guidance in a limited interval, Kynkaanniemi
    # et al. 2024): the steps whose sigma (EDM's, noise over signal in the model's data units)
    # lies in [guide_sigma_min, guide_sigma_max] are guided, the others take the model alone;
    # null = no upper limit.
    guide_sigma_min: float = Field(0.0, ge=0.0)  # the lowest noise level guided
    guide_sigma_max: float | None = Field(None, gt=0.0)  # the highest; null = no upper limit
    # What to ask for, one value per kind the model is conditioned on: region a class name,
    # a list of them or `each` (image i takes class i mod the classes: an equal share, and the
    # grid one row per condition); month 1..12, lat and lon in degrees, gsd in metres, tree_cover 0..1.
    condition: dict[ConditionKind, str | float | list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _condition_values(self) -> SampleParams:
        for kind, value in self.condition.items():
            if kind in CLASS_KINDS:
                if isinstance(value, float) or value == []:
                    raise ValueError(f"sample.condition.{kind}: give a class name, a list of "
                                     f"them or each, got {value!r}")
            elif not isinstance(value, float):
                raise ValueError(f"sample.condition.{kind}: give a number, got {value!r}")
        month = self.condition.get("month")
        if month is not None and not (1 <= month <= 12 and month == int(month)):
            raise ValueError(f"sample.condition.month: give a month 1..12, got {month!r}")
        return self

    @model_validator(mode="after")
    def _ema_std_fits(self) -> SampleParams:
        if self.ema_std is not None:
            from canopy.phema import check_std

            check_std(self.ema_std, "sample.ema_std")
            if self.weights != "ema":
                raise ValueError("sample.ema_std rebuilds an EMA: it needs sample.weights: ema "
                                 "(or set sample.ema_std: null for the raw weights)")
        return self

    @model_validator(mode="after")
    def _guide_std_fits(self) -> SampleParams:
        from canopy.phema import check_std

        check_std(self.guide_ema_std, "sample.guide_ema_std")
        if self.guide_sigma_max is not None and self.guide_sigma_max < self.guide_sigma_min:
            raise ValueError(f"sample.guide_sigma_max ({self.guide_sigma_max}) is below "
                             f"sample.guide_sigma_min ({self.guide_sigma_min}): give an interval "
                             "lo <= hi, or guide_sigma_max: null for no upper limit")
        return self

    @property
    def guide_sigmas(self) -> tuple[float, float]:
        """[guide_sigma_min, guide_sigma_max] with no upper limit as infinity."""
        hi = float("inf") if self.guide_sigma_max is None else self.guide_sigma_max
        return (self.guide_sigma_min, hi)

    @model_validator(mode="after")
    def _eta_fits_sampler(self) -> SampleParams:
        if SCHEDULERS[self.sampler].fixed_eta == 0 and self.eta != 0:
            with_eta = " or ".join(name for name, entry in SCHEDULERS.items()
                                   if entry.fixed_eta is None)
            raise ValueError(
                f"sample.eta ({self.eta}) must be 0 with sample.sampler {self.sampler}, which is "
                f"deterministic: set sample.eta to 0, or use sample.sampler {with_eta} for eta > 0"
            )
        return self
