"""`canopy etl`: imagery -> data/tiles/ (shards, manifest, preview)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from canopy.errors import user_errors
from canopy.params import DEFAULT_PARAMS, load_params, with_overrides

# The params sections this stage reads (besides seed and paths): the only ones it checks.
PARAMS_SECTIONS = ("etl",)


def etl(
    params: Path = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="params.yaml to read."),
    tiles: Path = typer.Option(None, "--tiles",
                               help="Override paths.tiles: the output folder (replaced "
                                    "atomically at the end)."),
    source: str = typer.Option(None, "--source",
                               help="Override etl.source: stac | sentinelhub | local | synthetic."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Fetch or read forest imagery and cut it into tile_size PNG tiles in tar shards.

    Reads the `etl` section of params.yaml (and `seed`). Writes TILES/train/*.tar,
    TILES/val/*.tar, TILES/manifest.json and TILES/preview.png (TILES: paths.tiles). A failed
    or interrupted run leaves the previous TILES untouched.
    """
    with user_errors("etl"):
        loaded = load_params(params, PARAMS_SECTIONS)
        loaded = with_overrides(loaded, "etl", {"source": source})
        loaded = with_overrides(loaded, "paths", {"tiles": None if tiles is None else str(tiles)})
        out = Path(loaded.paths.tiles)
        from canopy.etl.pipeline import run_etl

        progress = not quiet and sys.stderr.isatty()
        result = run_etl(loaded, out, progress=progress)
        label = " [SYNTHETIC demo data, not real imagery]" if result.synthetic else ""
        f = result.filters
        print(
            f"etl: {f.kept} tiles (train {result.counts['train']}, val {result.counts['val']}) "
            f"from {result.scenes} scene(s) -> {out}{label}; dropped {f.dropped_invalid} for "
            f"valid fraction, {f.dropped_vegetation} for vegetation fraction"
            + (f", {f.dropped_tree_cover} for tree cover" if loaded.etl.min_tree_cover else ""),
        )
        if result.skipped:
            print(_skipped_warning(result.skipped), file=sys.stderr)
        if result.counts["val"] == 0 and loaded.etl.val_fraction > 0:
            print("etl: warning: no tile fell into val; evaluate needs val tiles "
                  "(add imagery or raise etl.val_fraction)", file=sys.stderr)


def _skipped_warning(skipped: list[dict], shown: int = 3) -> str:
    """One line naming the rasters left out for being smaller than a tile (the first few)."""
    names = [f"{Path(entry['files'][0]).name} ({entry['width']}x{entry['height']})"
             for entry in skipped[:shown]]
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (f"etl: warning: left out {len(skipped)} raster(s) {skipped[0]['reason']}: "
            f"{', '.join(names)}{more} (listed in the manifest's filters.skipped_scenes)")
