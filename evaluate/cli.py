"""`canopy evaluate`: data/samples/ + data/tiles/ -> metrics/evaluate.json (DVC metrics)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from canopy.errors import user_errors
from canopy.params import DEFAULT_PARAMS, load_params


def evaluate(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read."),
    samples: Path = typer.Option(Path("data/samples"), "--samples", "-s",
                                 help="Folder of generated NNNNNN.png images."),
    tiles: Path = typer.Option(Path("data/tiles"), "--tiles", "-t",
                               help="etl output folder (manifest.json, train/, val/)."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Metrics JSON (default: evaluate.out in params); the details "
                                  "go beside it as <stem>_details.json."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Score the samples against the held-out val tiles, next to the real-vs-real floor.

    Reads the `evaluate` section of params.yaml (and `seed`). Writes flat scalar metrics to
    OUT: swd, fid and kid (only with local Inception weights), memorised_fraction, the counts
    n_samples and n_real, and each again with a _floor suffix for train tiles against the
    same val tiles. Lower is better for all; read a metric against its floor.
    """
    with user_errors("evaluate"):
        loaded = load_params(params)
        from canopy.evaluate.run import run_evaluate

        target = out if out is not None else Path(loaded.evaluate.out)
        progress = not quiet and sys.stderr.isatty()
        result = run_evaluate(loaded, samples, tiles, target, progress=progress,
                              note=lambda line: print(f"evaluate: {line}", file=sys.stderr))
        m = result.metrics
        parts = [f"swd {m['swd']:.4g} (floor {m['swd_floor']:.4g})"]
        if "fid" in m:
            parts.append(f"fid {m['fid']:.4g} (floor {m['fid_floor']:.4g})")
            parts.append(f"kid {m['kid']:.4g} (floor {m['kid_floor']:.4g})")
        parts.append(f"memorised {m['memorised_fraction']:.1%} "
                     f"(floor {m['memorised_fraction_floor']:.1%})")
        print(f"evaluate: {', '.join(parts)}; {m['n_samples']} samples vs {m['n_real']} val "
              f"tiles (floor: {m['n_samples_floor']} train tiles) -> {result.out}")
