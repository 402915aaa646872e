"""The `local` source: GeoTIFF/COG, PNG or JPEG files (or stacks of single-band files)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from canopy.errors import UserError
from etl.params import BandRef, EtlParams
from etl.scene import BandSource, SceneSpec, open_raster, slug

GLOB_CHARS = set("*?[")


def local_scenes(params: EtlParams) -> list[SceneSpec]:
    """One SceneSpec per file, or per stacked list of single-band files, in params order."""
    local = params.local
    scenes: list[SceneSpec] = []
    for entry in local.paths:
        if isinstance(entry, list):
            scenes.append(_stacked_scene(entry, params))
        else:
            scenes.extend(_file_scene(path, params) for path in expand(entry))
    return _unique_ids(scenes)


def expand(pattern: str) -> list[str]:
    """A literal path, or a glob expanded in sorted order; nothing found is an error."""
    if GLOB_CHARS & set(pattern):
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise UserError(f"etl.local.paths: the glob {pattern!r} matches no file")
        return matches
    if not Path(pattern).is_file():
        raise UserError(f"etl.local.paths: {pattern}: no such file")
    return [pattern]


def _file_scene(path: str, params: EtlParams) -> SceneSpec:
    with open_raster(path) as dataset:
        names = _band_names(dataset)
        rgb = tuple(BandSource(path, _band_index(ref, names, path)) for ref in params.local.bands)
        nir = None
        if params.local.nir_band is not None:
            nir = BandSource(path, _band_index(params.local.nir_band, names, path, key="nir_band"))
        dtype = np.dtype(dataset.dtypes[rgb[0].band - 1])
        acquired = dataset.tags().get("TIFFTAG_DATETIME")
    return _spec(Path(path).stem, rgb, nir, dtype, params, acquired)


def _stacked_scene(paths: list[str], params: EtlParams) -> SceneSpec:
    """Band i of the scene is band 1 of file i (e.g. Landsat [B3.TIF, B2.TIF, B1.TIF])."""
    if not paths:
        raise UserError("etl.local.paths: an empty list entry; list the band files to stack")
    names, dtypes = [], []
    for path in paths:
        if GLOB_CHARS & set(path):
            raise UserError(f"etl.local.paths: {path!r}: stacked band files must be listed one "
                            "by one (the order defines the bands), not as a glob")
        with open_raster(path) as dataset:
            if dataset.count != 1:
                raise UserError(f"{path} has {dataset.count} bands; a stacked list entry "
                                "takes single-band files")
            description = dataset.descriptions[0]
            names.append(description or Path(path).stem.rsplit("_", 1)[-1])
            dtypes.append(np.dtype(dataset.dtypes[0]))
    where = f"the stack {paths}"
    rgb = tuple(BandSource(paths[_band_index(ref, names, where) - 1], 1) for ref in params.local.bands)
    nir = None
    if params.local.nir_band is not None:
        nir = BandSource(paths[_band_index(params.local.nir_band, names, where, key="nir_band") - 1], 1)
    stem = _common_prefix([Path(p).stem for p in paths]) or Path(paths[0]).stem
    return _spec(stem, rgb, nir, dtypes[0], params, None)


def _spec(stem: str, rgb, nir, dtype: np.dtype, params: EtlParams, acquired) -> SceneSpec:
    return SceneSpec(
        scene_id=slug(stem),
        source="local",
        rgb=rgb,
        nir=nir,
        scale_mode=_scale_mode(params.local.scale, dtype),
        reflectance_range=params.reflectance_range,
        acquired=acquired,
    )


def _scale_mode(scale: str, dtype: np.dtype) -> str:
    """`auto`: 8-bit is display-ready, float is reflectance, other integers are raw DN."""
    if scale != "auto":
        return scale
    if dtype == np.uint8:
        return "none"
    return "reflectance" if dtype.kind == "f" else "percentile"


def _band_names(dataset) -> list[str | None]:
    return list(dataset.descriptions)


def _band_index(ref: BandRef, names: list[str | None], where: str, key: str = "bands") -> int:
    count = len(names)
    if isinstance(ref, int):
        if ref > count:
            if count == 1 and key == "bands":
                raise UserError(
                    f"{where} has a single band but etl.local.bands asks for red, green and "
                    "blue; give an RGB raster, or stack single-band files as a list entry"
                )
            raise UserError(f"etl.local.{key}: band {ref} is out of range: {where} has "
                            f"{count} band(s) (1..{count})")
        return ref
    lowered = [(name or "").lower() for name in names]
    if ref.lower() in lowered:
        return lowered.index(ref.lower()) + 1
    known = ", ".join(name for name in names if name) or "none (use 1-based indexes)"
    raise UserError(f"etl.local.{key}: no band named {ref!r} in {where}; band names: {known}")


def _common_prefix(stems: list[str]) -> str:
    prefix = stems[0]
    for stem in stems[1:]:
        while not stem.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("_-. ")


def _unique_ids(scenes: list[SceneSpec]) -> list[SceneSpec]:
    """Two files with the same stem get -2, -3... in params order (stable across runs)."""
    from dataclasses import replace

    seen: dict[str, int] = {}
    unique = []
    for scene in scenes:
        count = seen.get(scene.scene_id, 0) + 1
        seen[scene.scene_id] = count
        unique.append(scene if count == 1 else replace(scene, scene_id=f"{scene.scene_id}-{count}"))
    return unique
