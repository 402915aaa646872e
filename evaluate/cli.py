"""`canopy evaluate`: data/samples/ + data/tiles/ -> metrics/evaluate.json (DVC metrics)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from canopy.distributed import refuse as refuse_distributed
from canopy.errors import user_errors
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides

# The params sections this stage reads (besides seed and paths): the only ones it checks.
PARAMS_SECTIONS = ("evaluate",)


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
    METRICS/evaluate.json: swd, fid, kid, and on the same Inception features (only with local
    weights) c2st_features_accuracy, precision and recall; c2st_accuracy (a pixel classifier's
    held-out accuracy, 0.5 = indistinguishable), tile_spread (how much the samples differ from
    each other in overall colour, over the val tiles' spread: 1 = as varied), memorised_fraction
    (samples near a train tile), memorised_structured_fraction (those that are not plain tiles,
    which match any plain train tile of their colour), plain_fraction, the counts n_samples and
    n_real, each again with a _floor suffix for train tiles against the same val tiles, and
    95% bootstrap intervals (_lo, _hi). Read a metric against its floor; `trusted` is 0 (and a
    line says so) when too few images were compared.
    """
    with user_errors("evaluate"):
        refuse_distributed("evaluate")
        loaded = with_overrides(load_params(params, PARAMS_SECTIONS), "paths", {
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
        parts = []
        if "c2st_features_accuracy" in m:
            parts.append(f"c2st on features {_with_interval(m, 'c2st_features_accuracy', 3)}")
        for name in ("precision", "recall"):
            if name in m:
                parts.append(f"{name} {_with_interval(m, name, 3)}")
        ratio = f"{m['swd_ratio']:.3g}"
        if "swd_ratio_lo" in m:
            ratio += f" [{m['swd_ratio_lo']:.3g}, {m['swd_ratio_hi']:.3g}]"
        parts.append(f"swd {m['swd']:.4g} (floor {m['swd_floor']:.4g}, ratio {ratio})")
        if "fid" in m:
            parts.append(f"fid {m['fid']:.4g} (floor {m['fid_floor']:.4g})")
            parts.append(f"kid {m['kid']:.4g} (floor {m['kid_floor']:.4g})")
        if "c2st_accuracy" in m:
            parts.append(f"c2st {m['c2st_accuracy']:.3f} (floor {m['c2st_accuracy_floor']:.3f})")
        if "tile_spread" in m:
            parts.append(f"tile spread {m['tile_spread']:.3g} (floor {m['tile_spread_floor']:.3g})")
        parts.append(f"memorised {m['memorised_fraction']:.1%} "
                     f"(floor {m['memorised_fraction_floor']:.1%}), with structure "
                     f"{m['memorised_structured_fraction']:.1%} "
                     f"(floor {m['memorised_structured_fraction_floor']:.1%})")
        parts.append(f"plain tiles {m['plain_fraction']:.1%} "
                     f"(floor {m['plain_fraction_floor']:.1%})")
        print(f"evaluate: {', '.join(parts)}; {m['n_samples']} samples vs {m['n_real']} val "
              f"tiles (floor: {m['n_samples_floor']} train tiles) -> {result.out}")


def _with_interval(m: dict, name: str, digits: int) -> str:
    """`0.98 [0.95, 1] (floor 0.52)`: the value, its interval when there is one, its floor."""
    text = f"{m[name]:.{digits}g}"
    if f"{name}_lo" in m:
        text += f" [{m[f'{name}_lo']:.{digits}g}, {m[f'{name}_hi']:.{digits}g}]"
    return f"{text} (floor {m[f'{name}_floor']:.{digits}g})"


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)
