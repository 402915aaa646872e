"""Conditions of tiles and of requested samples (docs/conditioning.md).

The one place that turns a tile's metadata (its shard's `<key>.json`, canopy/tiles.py) into
the values a conditioned model sees, and a `sample.condition` request into the condition of
each image. What the values mean and how the network embeds them: model/condition.py.

A tile's values, each None where the metadata cannot give it:

  region      `region` where etl wrote it (the AOI name, the local entry's name, the synthetic
              scene kind); else the scene id (tiles written before etl wrote regions)
  month       `acquired`'s month (ISO 2019-06-01..., or TIFF's 2019:06:01 ...)
  lat, lon    the centre of `bounds`, from `crs` to WGS84 degrees
  gsd         `gsd` where etl wrote it; else the window's width on the ground over its pixels
              (metres; a geographic CRS's degrees at about 111.32 km each)
  tree_cover  `tree_cover` where etl wrote it (0..1)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from canopy.errors import UserError

METRES_PER_DEGREE = 111_320.0
EACH = "each"  # sample.condition: an equal share of every class
_MONTH = re.compile(r"^\d{4}[-:](\d{2})")


def tile_values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """{kind: value or None} for every kind of model/condition.py's CONDITION_KINDS (module
    docstring); lat and lon need the CRS transform of tiles_values. Imports nothing of the
    model package: evaluate reads regions with it."""
    return {
        "region": _text(metadata.get("region")) or _text(metadata.get("scene")),
        "month": _month(metadata.get("acquired")),
        "lat": None,
        "lon": None,
        "gsd": _number(metadata.get("gsd")),
        "tree_cover": _number(metadata.get("tree_cover")),
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _month(acquired: Any) -> int | None:
    match = _MONTH.match(acquired) if isinstance(acquired, str) else None
    month = int(match.group(1)) if match else 0
    return month if 1 <= month <= 12 else None


def tiles_values(metadatas: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """tile_values of each tile, with lat, lon (and gsd where etl did not write it) from its
    bounds and CRS: one coordinate transform per CRS for all its tiles."""
    rows = [tile_values(m) for m in metadatas]
    by_crs: dict[str, list[int]] = {}
    for i, metadata in enumerate(metadatas):
        bounds = metadata.get("bounds")
        if isinstance(metadata.get("crs"), str) and _is_bounds(bounds):
            by_crs.setdefault(metadata["crs"], []).append(i)
    for crs, indices in by_crs.items():
        _place(rows, metadatas, crs, indices)
    return rows


def _is_bounds(bounds: Any) -> bool:
    return (isinstance(bounds, list) and len(bounds) == 4
            and all(_number(v) is not None for v in bounds))


def _place(rows: list[dict[str, Any]], metadatas: Sequence[Mapping[str, Any]], crs: str,
           indices: list[int]) -> None:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform

    try:
        source = CRS.from_user_input(crs)
        geographic = source.is_geographic
        unit = 1.0 if geographic else float(source.linear_units_factor[1])
    except (CRSError, ValueError):
        return  # an unknown CRS: no place for those tiles
    boxes = np.array([metadatas[i]["bounds"] for i in indices], dtype=np.float64)
    xs, ys = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    lons, lats = transform(source, "EPSG:4326", xs.tolist(), ys.tolist())
    for j, i in enumerate(indices):
        rows[i]["lat"], rows[i]["lon"] = round(lats[j], 6), round(lons[j], 6)
        width = (metadatas[i].get("window") or {}).get("width")
        if rows[i]["gsd"] is None and isinstance(width, int) and width > 0:
            ground = boxes[j, 2] - boxes[j, 0]
            metres = ground * (METRES_PER_DEGREE * math.cos(math.radians(lats[j]))
                               if geographic else unit)
            rows[i]["gsd"] = round(metres / width, 6)


# --- what a model is conditioned on -----------------------------------------------------------

def model_condition(kinds: Sequence[str], values: Sequence[Mapping[str, Any]]
                    ) -> dict[str, list[str] | None]:
    """The `condition` of a network's config: each kind with its class names (sorted, from the
    train tiles' values) or None for continuous kinds. Refuses a kind no train tile has."""
    from canopy.model.condition import CLASS_KINDS, ordered_kinds

    condition: dict[str, list[str] | None] = {}
    for kind in ordered_kinds(kinds):
        present = [v[kind] for v in values if v[kind] is not None]
        if not present:
            raise UserError(f"model.condition asks for {kind!r}, but no train tile's metadata "
                            f"gives it ({_where(kind)}): drop it from model.condition")
        condition[kind] = sorted(set(present)) if kind in CLASS_KINDS else None
    return condition


def _where(kind: str) -> str:
    return {
        "region": "region or scene", "month": "acquired", "lat": "bounds and crs",
        "lon": "bounds and crs", "gsd": "gsd, or bounds and window",
        "tree_cover": "tree_cover, which etl writes for sources that measure it",
    }[kind]


def condition_rows(condition: Mapping[str, Sequence[str] | None],
                   values: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(N, kinds) float32 rows as the network takes them: a class as its index in the model's
    class names, a continuous value as it is; NaN where a tile lacks it (or its class is not
    one the model knows)."""
    from canopy.model.condition import ordered_kinds

    kinds = ordered_kinds(list(condition))
    rows = np.full((len(values), len(kinds)), np.nan, dtype=np.float32)
    for j, kind in enumerate(kinds):
        names = condition[kind]
        lookup = {name: float(k) for k, name in enumerate(names)} if names else None
        for i, v in enumerate(values):
            value = v.get(kind)
            if value is None:
                continue
            rows[i, j] = lookup.get(value, np.nan) if lookup is not None else float(value)
    return rows


def absent_counts(rows: np.ndarray, kinds: Sequence[str]) -> dict[str, int]:
    """How many rows lack each kind (NaN)."""
    return {kind: int(np.isnan(rows[:, j]).sum()) for j, kind in enumerate(kinds)}


# --- what a sample run asks for ----------------------------------------------------------------

def requested(condition: Mapping[str, Sequence[str] | None], request: Mapping[str, Any],
              indices: Sequence[int]) -> list[dict[str, Any]]:
    """The condition of each image `indices` for `sample.condition` `request`: a class name,
    `each` (image i takes class i mod the number of classes: an equal share, and image i's
    condition never depends on how many images are asked for) or a list of names (the same
    among those); a number for a continuous kind. Every kind of the model must be asked."""
    from canopy.model.condition import ordered_kinds

    kinds = ordered_kinds(list(condition))
    extra = sorted(set(request) - set(kinds))
    if extra:
        raise UserError(f"sample.condition asks for {extra[0]!r}, which this model is not "
                        f"conditioned on (its model.condition: {kinds or 'none'})")
    missing = [kind for kind in kinds if kind not in request]
    if missing:
        raise UserError(f"sample.condition lacks {', '.join(missing)}: this model is "
                        f"conditioned on {', '.join(kinds)}; give each (e.g. region: each), "
                        "or set sample.guidance: 0 for unconditioned samples")
    choices = {kind: _choices(kind, condition[kind], request[kind]) for kind in kinds}
    return [{kind: options[i % len(options)] for kind, options in choices.items()}
            for i in indices]


def _choices(kind: str, names: Sequence[str] | None, asked: Any) -> list[Any]:
    if names is None:  # a continuous kind
        if _number(asked) is None:
            raise UserError(f"sample.condition.{kind}: give a number, got {asked!r}")
        return [float(asked)]
    if asked == EACH:
        return list(names)
    listed = asked if isinstance(asked, list) else [asked]
    unknown = [name for name in listed if name not in names]
    if unknown or not listed:
        raise UserError(f"sample.condition.{kind}: {unknown[0] if unknown else asked!r} is not "
                        f"a class of this model; use one of {', '.join(names)}, a list of "
                        f"them, or {EACH}")
    return list(listed)
