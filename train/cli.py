"""`canopy train`: tiles -> models (see train/loop.py and docs/contract.md "models/")."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from canopy.errors import user_errors
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides

# The params sections this stage reads (besides seed, schedule and paths): the only ones it
# checks.
PARAMS_SECTIONS = ("model", "diffusion", "train")


def train(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no progress bar or status lines"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="override train.steps"),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="override train.batch_size"
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="override train.device (auto|cuda|mps|cpu)"
    ),
    tiles: Optional[Path] = typer.Option(None, "--tiles",
                                         help="override paths.tiles (the etl output to train on)"),
    models: Optional[Path] = typer.Option(None, "--models",
                                          help="override paths.models (the output folder)"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore any checkpoint and start over"),
    verify_sha256: bool = typer.Option(
        False, "--verify-sha256",
        help="check each shard's sha256 against the manifest first (train.verify_shards: sha256)"),
) -> None:
    """Train the diffusion model on the tiles (paths.tiles) and write paths.models.

    Re-running with the same params and data resumes from the last checkpoint in
    MODELS/state/; with other params or data it starts fresh, says why and
    moves the old state aside to MODELS/state.old-<step>. Ctrl-C or SIGTERM
    saves a checkpoint, then exits.
    """
    with user_errors("train"):
        from canopy.train.loop import train

        overrides = {"steps": steps, "batch_size": batch_size, "device": device,
                     "verify_shards": "sha256" if verify_sha256 else None}
        loaded = with_overrides(load_params(params, PARAMS_SECTIONS), "train", overrides)
        loaded = with_overrides(loaded, "paths", {"tiles": _text(tiles), "models": _text(models)})
        result = train(loaded, quiet=quiet, fresh=fresh)
        if result.interrupted is not None:
            raise typer.Exit(128 + result.interrupted)


def _text(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)
