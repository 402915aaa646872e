"""The `local` source: GeoTIFF/COG, PNG or JPEG files (or stacks of single-band files)."""

from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from canopy.errors import UserError
from canopy.etl.params import BandRef, EtlParams, LocalEntry
from canopy.etl.scene import BandSource, SceneSpec, open_raster, slug
from canopy.params import CanopyParams

GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class EntrySettings:
    bands: list[BandRef]
    nir_band: BandRef | None
    scale: str
    name: str | None = None  # the tiles' region; None: the scene id


def scenes(params: CanopyParams, workdir: Path, *, progress: bool) -> list[SceneSpec]:
    """The source's scenes; files are read where they are, so `workdir` and `progress` go unused."""
    return local_scenes(params.etl)


def local_scenes(params: EtlParams) -> list[SceneSpec]:
    """One SceneSpec per file, or per stacked list of single-band files, in params order."""
    scenes: list[SceneSpec] = []
    for entry in params.local.paths:
        files, settings = _entry_settings(entry, params)
        if isinstance(files, list):
            scenes.append(_stacked_scene(files, settings, params))
        else:
            scenes.extend(_file_scene(path, settings, params) for path in expand(files))
    return _unique_ids(scenes)


def _entry_settings(entry, params: EtlParams) -> tuple[str | list[str], EntrySettings]:
    local = params.local
    defaults = EntrySettings(local.bands, local.nir_band, local.scale)
    if not isinstance(entry, LocalEntry):
        return entry, defaults
    return entry.files, EntrySettings(
        bands=entry.bands if entry.bands is not None else defaults.bands,
        nir_band=entry.nir_band if entry.nir_band is not None else defaults.nir_band,
        scale=entry.scale if entry.scale is not None else defaults.scale,
        name=entry.name,
    )


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


def _file_scene(path: str, settings: EntrySettings, params: EtlParams) -> SceneSpec:
    with open_raster(path) as dataset:
        names = list(dataset.descriptions)
        rgb = tuple(BandSource(path, _band_index(ref, names, path)) for ref in settings.bands)
        nir = None
        if settings.nir_band is not None:
            nir = BandSource(path, _band_index(settings.nir_band, names, path, key="nir_band"))
        dtype = np.dtype(dataset.dtypes[rgb[0].band - 1])
        acquired = dataset.tags().get("TIFFTAG_DATETIME")
    return _spec(Path(path).stem, rgb, nir, dtype, settings, params, acquired)


def _stacked_scene(paths: list[str], settings: EntrySettings, params: EtlParams) -> SceneSpec:
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
            # Name a stacked band by its description, else by the file name's last part
            # (LT5..._B3.TIF -> "B3"), so `bands: [B3, B2, B1]` works for Landsat.
            names.append(dataset.descriptions[0] or Path(path).stem.rsplit("_", 1)[-1])
            dtypes.append(np.dtype(dataset.dtypes[0]))
    where = f"the stack {paths}"

    def pick(ref: BandRef, key: str = "bands") -> BandSource:
        return BandSource(paths[_band_index(ref, names, where, key) - 1], 1)

    rgb = tuple(pick(ref) for ref in settings.bands)
    nir = pick(settings.nir_band, "nir_band") if settings.nir_band is not None else None
    stem = _common_stem([Path(p).stem for p in paths])
    return _spec(stem, rgb, nir, dtypes[0], settings, params, None)


def _spec(stem, rgb, nir, dtype, settings: EntrySettings, params: EtlParams, acquired) -> SceneSpec:
    return SceneSpec(
        scene_id=slug(stem),
        source="local",
        rgb=rgb,
        nir=nir,
        scale_mode=_scale_mode(settings.scale, dtype),
        reflectance_range=params.reflectance_range,
        acquired=acquired,
        region=settings.name,
    )


def _scale_mode(scale: str, dtype: np.dtype) -> str:
    """`auto`: 8-bit is display-ready, float is reflectance, other integers are raw DN."""
    if scale != "auto":
        return scale
    if dtype == np.uint8:
        return "none"
    return "reflectance" if dtype.kind == "f" else "percentile"


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


def _common_stem(stems: list[str]) -> str:
    """The shared part of stacked file names, cut at a separator: LT5..._B3, _B2 -> LT5..."""
    prefix = stems[0]
    for stem in stems[1:]:
        while not stem.startswith(prefix):
            prefix = prefix[:-1]
    if len(stems) > 1 and prefix != stems[0]:
        cut = max(prefix.rfind(sep) for sep in "_-. ")
        prefix = prefix[:cut] if cut > 0 else prefix
    return prefix or stems[0]


def _unique_ids(scenes: list[SceneSpec]) -> list[SceneSpec]:
    """Two files with the same stem get -2, -3... in params order (stable across runs)."""
    seen: dict[str, int] = {}
    unique = []
    for scene in scenes:
        count = seen.get(scene.scene_id, 0) + 1
        seen[scene.scene_id] = count
        unique.append(scene if count == 1 else replace(scene, scene_id=f"{scene.scene_id}-{count}"))
    return unique
