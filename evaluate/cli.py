"""`canopy evaluate`: data/samples/ + data/tiles/ -> metrics/evaluate.json (DVC metrics)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from canopy.distributed import refuse as refuse_distributed
from canopy.errors import user_errors
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides


def evaluate(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read."),
    samples: Path = typer.Option(None, "--samples", "-s",
                                 help="Override paths.samples: folder of generated NNNNNN.png images."),
    tiles: Path = typer.Option(None, "--tiles", "-t",
                               help="Override paths.tiles: etl output folder (manifest.json, "
                                    "train/, val/)."),
    metrics: Path = typer.Option(None, "--metrics", "-m",
                                 help="Override paths.metrics: the folder that receives "
                                      "evaluate.json and evaluate_details.json."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verify_sha256: bool = typer.Option(
        False, "--verify-sha256",
        help="Check each tile shard's sha256 against the manifest first "
             "(evaluate.verify_shards: sha256)."),
) -> None:
    """Score the samples against the held-out val tiles, next to the real-vs-real floor.

    Reads the `evaluate` section of params.yaml (and `seed`). Writes flat scalar metrics to
    METRICS/evaluate.json: swd, fid and kid (only with local Inception weights), c2st_accuracy
    (a classifier's held-out accuracy, 0.5 = indistinguishable), memorised_fraction, the counts
    n_samples and n_real, and each again with a _floor suffix for train tiles against the
    same val tiles. Lower is better for all; read a metric against its floor.
    """
    with user_errors("evaluate"):
        refuse_distributed("evaluate")
        loaded = with_overrides(load_params(params), "paths", {
            "samples": _text(samples), "tiles": _text(tiles), "metrics": _text(metrics)})
        if verify_sha256:
            loaded = with_overrides(loaded, "evaluate", {"verify_shards": "sha256"})
        from canopy.evaluate.run import METRICS_FILE, run_evaluate

        paths = loaded.paths
        target = Path(paths.metrics) / METRICS_FILE
        progress = not quiet and sys.stderr.isatty()
        result = run_evaluate(loaded, Path(paths.samples), Path(paths.tiles), target, progress=progress,
                              note=lambda line: print(f"evaluate: {line}", file=sys.stderr))
        m = result.metrics
        parts = [f"swd {m['swd']:.4g} (floor {m['swd_floor']:.4g})"]
        if "fid" in m:
            parts.append(f"fid {m['fid']:.4g} (floor {m['fid_floor']:.4g})")
            parts.append(f"kid {m['kid']:.4g} (floor {m['kid_floor']:.4g})")
        if "c2st_accuracy" in m:
            parts.append(f"c2st {m['c2st_accuracy']:.3f} (floor {m['c2st_accuracy_floor']:.3f})")
        parts.append(f"memorised {m['memorised_fraction']:.1%} "
                     f"(floor {m['memorised_fraction_floor']:.1%})")
        print(f"evaluate: {', '.join(parts)}; {m['n_samples']} samples vs {m['n_real']} val "
              f"tiles (floor: {m['n_samples_floor']} train tiles) -> {result.out}")


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
