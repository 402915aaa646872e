"""`canopy sample`: models/ -> data/samples/ (generated tiles, manifest, grid)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from canopy.distributed import is_main_process
from canopy.errors import user_errors
from canopy.model.registry import SCHEDULERS
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides

# The params sections this stage reads (besides seed, schedule and paths): model and diffusion
# to refuse weights that params.yaml no longer describes. The sweep scores with evaluate's SWD.
PARAMS_SECTIONS = ("model", "diffusion", "sample")
SWEEP_PARAMS_SECTIONS = (*PARAMS_SECTIONS, "evaluate")


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
    ema_std: float = typer.Option(None, "--ema-std",
                                  help="Override sample.ema_std: the post-hoc EMA of this "
                                       "relative std (from models/phema/)."),
    guidance: float = typer.Option(None, "--guidance",
                                   help="Override sample.guidance (conditioned models): 0 "
                                        "unconditional, 1 conditional, > 1 guided."),
    autoguidance: float = typer.Option(None, "--autoguidance",
                                       help="Override sample.autoguidance: guide the model "
                                            "with its own earlier weights (1 off, > 1 on)."),
    region: str = typer.Option(None, "--region",
                               help="Override sample.condition.region (conditioned models): "
                                    "a region's name, or `each` for an equal share of each."),
    models: Path = typer.Option(None, "--models", help="Override paths.models (train's output)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Generate sample.n forest tiles from the EMA weights that `canopy train` wrote.

    Image i depends only on (seed, i, its condition, checkpoint, sampler settings): not on the
    batch size or on how many images are asked for, and the same command writes byte-identical
    files. Writes OUT/000000.png ..., OUT/manifest.json (sha256 of each image, settings,
    checkpoint hash, each image's condition) and OUT/grid.png (one row per condition).
    """
    with user_errors("sample"):
        loaded = load_params(params, PARAMS_SECTIONS)
        overrides = {"n": n, "sampler": sampler, "steps": steps, "eta": eta, "spacing": spacing,
                     "batch_size": batch_size, "weights": weights, "ema_std": ema_std,
                     "guidance": guidance, "autoguidance": autoguidance,
                     "condition": {**loaded.sample.condition, "region": region}
                     if region is not None else None}
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


ema_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                      help="Post-hoc EMA: choose the EMA of the samples after training.")


@ema_app.command("sweep")
def ema_sweep(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read."),
    stds: str = typer.Option(None, "--stds",
                             help="Comma-separated relative stds to score "
                                  "(default 0.02,0.03,0.05,0.07,0.1,0.13,0.16,0.2,0.25)."),
    n: int = typer.Option(256, "--n", min=2, help="Samples per std."),
    models: Path = typer.Option(None, "--models", help="Override paths.models (train's output)."),
    tiles: Path = typer.Option(None, "--tiles", help="Override paths.tiles (etl's output)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Score post-hoc EMA stds (sample.ema_std) on the val tiles with SWD and name the best.

    Each std's EMA is rebuilt from models/phema/ (train.phema_stds), sampled n times with the
    sample section's settings and scored against the val tiles, beside the export's own EMA
    and the real-vs-real floor. Writes nothing.
    """
    with user_errors("ema sweep"):
        loaded = load_params(params, SWEEP_PARAMS_SECTIONS)
        loaded = with_overrides(loaded, "paths", {"models": str(models) if models else None,
                                                  "tiles": str(tiles) if tiles else None})
        from canopy.sample.sweep import DEFAULT_STDS, print_report, sweep

        try:
            chosen = [float(s) for s in stds.split(",")] if stds else list(DEFAULT_STDS)
        except ValueError:
            from canopy.errors import UserError

            raise UserError(f"--stds must be comma-separated numbers, got {stds!r}") from None
        result = sweep(loaded, chosen, n, Path(loaded.paths.models), Path(loaded.paths.tiles),
                       progress=not quiet and sys.stderr.isatty())
        print_report(result, as_json)
