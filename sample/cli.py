"""`canopy sample`: models/ -> data/samples/ (generated tiles, manifest, grid)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from canopy.distributed import is_main_process
from canopy.errors import user_errors
from canopy.model.registry import SCHEDULERS
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides


def sample(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read."),
    n: int = typer.Option(None, "--n", help="Override sample.n: images to generate."),
    samples: Path = typer.Option(None, "--samples",
                                 help="Override paths.samples: the output folder (replaced atomically)."),
    sampler: str = typer.Option(None, "--sampler",
                                help=f"Override sample.sampler: {' | '.join(SCHEDULERS)}."),
    steps: int = typer.Option(None, "--steps", help="Override sample.steps (ddim, dpmpp2m)."),
    eta: float = typer.Option(None, "--eta", help="Override sample.eta (ddim)."),
    spacing: str = typer.Option(None, "--spacing",
                                help="Override sample.spacing (ddim, dpmpp2m): trailing | quadratic."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override sample.batch_size."),
    weights: str = typer.Option(None, "--weights", help="Override sample.weights: ema | raw."),
    models: Path = typer.Option(None, "--models", help="Override paths.models (train's output)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Generate sample.n forest tiles from the EMA weights that `canopy train` wrote.

    Image i depends only on (seed, i, checkpoint, sampler settings): not on the batch size or
    on how many images are asked for, and the same command writes byte-identical files.
    Writes OUT/000000.png ..., OUT/manifest.json (sha256 of each image, settings, checkpoint
    hash) and OUT/grid.png.
    """
    with user_errors("sample"):
        loaded = load_params(params)
        overrides = {"n": n, "sampler": sampler, "steps": steps, "eta": eta, "spacing": spacing,
                     "batch_size": batch_size, "weights": weights}
        loaded = with_overrides(loaded, "sample", overrides)
        loaded = with_overrides(loaded, "paths", {"samples": str(samples) if samples else None,
                                                  "models": str(models) if models else None})
        from canopy.sample.run import run_sample

        settings = loaded.sample
        result = run_sample(loaded, Path(loaded.paths.samples), Path(loaded.paths.models),
                            progress=not quiet and sys.stderr.isatty())
        if is_main_process():  # under torchrun rank 0 speaks for all
            print(f"sample: {result.n} images ({settings.sampler}, {result.steps} steps, "
                  f"{result.device} {result.precision}) -> {result.out}")
