"""The `synthetic` source: procedural forest-like scenes for the offline demo.

NOT real imagery. It exists so the whole pipeline runs on a fresh machine with no network and
no credentials; the manifest and the tile metadata say `synthetic`. The scenes mimic an
overhead view of a forest: tree crowns lit from one side with cast shadows, denser and sparser
stands, clearings of bare ground and grass, and a meandering river, all from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from canopy.etl.params import EtlParams
from canopy.etl.scene import BandSource, SceneSpec, raster_write_errors
from canopy.params import CanopyParams
from canopy.seeding import Stream, numpy_rng

SUN = np.array([-0.6, -0.6, 0.55])  # light from the upper left, as in most orthophotos


@dataclass(frozen=True)
class Kind:
    """A kind of synthetic forest (`etl.synthetic.kinds`; each tile's `region`): what a model
    conditioned on it must learn to tell apart. `mixed` is the demo's original scene."""

    mean_radius: float = 7.0  # crown radius, px
    palette: tuple[tuple[int, int, int], ...] = (
        (52, 84, 40), (40, 74, 44), (66, 96, 48), (34, 62, 36), (74, 98, 54))
    cover: tuple[float, float] = (1.9, -0.2)  # keep a crown where a * density + b > U(0, 1)
    cone: bool = False  # conical crowns (a sharp apex) rather than domes
    grass: float = 0.0  # extra share of grass over bare soil in the clearings


KINDS: dict[str, Kind] = {
    "mixed": Kind(),
    # large, round, bright yellow-green crowns, a closed canopy
    "broadleaf": Kind(mean_radius=10.0, palette=((92, 122, 46), (104, 132, 52), (84, 114, 40),
                                                 (112, 138, 60)), cover=(2.2, 0.1)),
    # small, dark blue-green conical crowns, dense
    "conifer": Kind(mean_radius=4.5, palette=((26, 52, 40), (22, 46, 38), (32, 58, 46),
                                              (20, 42, 34)), cover=(2.0, 0.0), cone=True),
    # scattered crowns over grass: open woodland
    "open": Kind(mean_radius=6.0, palette=((58, 82, 42), (48, 72, 40), (66, 90, 46)),
                 cover=(0.5, -0.1), grass=0.5),
}


def scenes(params: CanopyParams, workdir: Path, *, progress: bool) -> list[SceneSpec]:
    """The source's scenes, drawn from the top-level seed (rendering draws no progress bar)."""
    return synthetic_scenes(params.etl, params.seed, workdir)


def synthetic_scenes(params: EtlParams, seed: int, workdir: Path) -> list[SceneSpec]:
    """Render `params.synthetic.scenes` scenes into 3-band 8-bit GeoTIFFs under `workdir`."""
    cfg = params.synthetic
    scenes = []
    for index in range(cfg.scenes):
        rng = numpy_rng(seed, Stream.SYNTHETIC_SCENE, index)
        kind = cfg.kinds[index % len(cfg.kinds)]  # scene i is kind i mod the kinds
        image = render_forest(rng, cfg.height, cfg.width, KINDS[kind])
        path = workdir / f"synthetic-{index:03d}.tif"
        _write_tiff(path, image)
        scenes.append(SceneSpec(
            scene_id=f"synthetic-{index:03d}",
            source="synthetic",
            rgb=(BandSource(str(path), 1), BandSource(str(path), 2), BandSource(str(path), 3)),
            scale_mode="none",
            origin=(f"synthetic:seed={seed}:scene={index:03d}",),
            extra={"note": "procedurally generated demo scene, not real imagery",
                   "kind": kind},
            region=kind,
        ))
    return scenes


def render_forest(rng: np.random.Generator, height: int, width: int,
                  kind: Kind = KINDS["mixed"]) -> np.ndarray:
    """An HxWx3 uint8 overhead forest scene of `kind`."""
    density = smooth_noise(rng, height, width, cells=6)  # where stands are dense or open
    river = _river_mask(rng, height, width)
    crowns_height, crown_tint = _crowns(rng, height, width, density, river, kind)

    ground = _ground(rng, height, width, kind.grass)
    shade = _hillshade(crowns_height)
    shadow = _cast_shadow(crowns_height)
    canopy = crowns_height > 0

    image = ground * (1.0 - 0.55 * shadow[..., None])
    foliage = crown_tint * (0.35 + 0.85 * shade[..., None])
    image = np.where(canopy[..., None], foliage, image)
    water = np.array([38.0, 62.0, 70.0]) + 8.0 * smooth_noise(rng, height, width, 40)[..., None]
    image = np.where((river & ~canopy)[..., None], water, image)
    image += rng.normal(0.0, 2.5, image.shape)  # sensor noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid resized smoothly (bicubic)."""
    grid_h = max(2, int(np.ceil(height * cells / max(height, width))) + 1)
    grid_w = max(2, int(np.ceil(width * cells / max(height, width))) + 1)
    coarse = rng.random((grid_h, grid_w), dtype=np.float32)
    image = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def _ground(rng, height, width, more_grass: float = 0.0) -> np.ndarray:
    soil = np.array([132.0, 108.0, 84.0])
    grass = np.array([96.0, 118.0, 60.0])
    mix = smooth_noise(rng, height, width, 12)[..., None] ** 2  # clearings mostly bare soil
    if more_grass:
        mix = more_grass + (1 - more_grass) * mix
    texture = 10.0 * (smooth_noise(rng, height, width, 90)[..., None] - 0.5)
    return soil * (1 - mix) + grass * mix + texture


def _river_mask(rng, height, width) -> np.ndarray:
    """A meandering band across the scene (present in about half of the scenes)."""
    if rng.random() < 0.5:
        return np.zeros((height, width), dtype=bool)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.15) * width
    centre = width * rng.uniform(0.3, 0.7) + amplitude * np.sin(rows / height * 3 * np.pi + phase)
    half_width = rng.uniform(0.015, 0.04) * width
    return np.abs(cols - centre) < half_width


def _crowns(rng, height, width, density, river, kind: Kind = KINDS["mixed"]):
    """Tree crowns as hemispheres (or cones): a height field and a per-crown tint."""
    crowns_height = np.zeros((height, width), dtype=np.float32)
    tint = np.zeros((height, width, 3), dtype=np.float32)
    mean_radius = kind.mean_radius
    count = int(height * width / (np.pi * mean_radius**2) * 1.3)
    ys = rng.uniform(0, height, count)
    xs = rng.uniform(0, width, count)
    a, b = kind.cover
    keep = rng.random(count) < np.clip(a * density[ys.astype(int), xs.astype(int)] + b, 0, 1)
    keep &= ~river[ys.astype(int), xs.astype(int)]
    radii = rng.gamma(6.0, mean_radius / 6.0, count).clip(min(3.0, mean_radius / 2), 16.0)
    palette = np.array(kind.palette, float)
    colours = palette[rng.integers(0, len(palette), count)] * rng.uniform(0.85, 1.15, (count, 1))
    for y, x, r, colour in zip(ys[keep], xs[keep], radii[keep], colours[keep]):
        _stamp_crown(crowns_height, tint, y, x, r, colour, kind.cone)
    return crowns_height, tint


def _stamp_crown(height_field, tint, y, x, r, colour, cone: bool = False) -> None:
    y0, y1 = max(0, int(y - r)), min(height_field.shape[0], int(y + r) + 1)
    x0, x1 = max(0, int(x - r)), min(height_field.shape[1], int(x + r) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    if cone:  # twice as tall as wide: a bright sunlit flank and a dark one
        dome = 2 * np.clip(r - np.sqrt((yy - y) ** 2 + (xx - x) ** 2), 0.0, None)
    else:
        dome = r * np.sqrt(np.clip(1.0 - ((yy - y) ** 2 + (xx - x) ** 2) / r**2, 0.0, None))
    patch = height_field[y0:y1, x0:x1]
    higher = dome > patch  # taller crowns occlude lower ones
    patch[higher] = dome[higher]
    tint[y0:y1, x0:x1][higher] = colour


def _hillshade(height_field: np.ndarray) -> np.ndarray:
    """Lambertian shading of the crown surface under SUN, in [0, 1]."""
    gy, gx = np.gradient(height_field)
    normal = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    sun = SUN / np.linalg.norm(SUN)
    return np.clip(normal @ sun, 0.0, 1.0)


def _cast_shadow(height_field: np.ndarray, length: int = 6) -> np.ndarray:
    """Ground darkened down-sun of crowns: the height field shifted away from the sun."""
    shadow = np.zeros_like(height_field)
    for step in range(1, length + 1):
        shifted = np.zeros_like(height_field)
        shifted[step:, step:] = height_field[:-step, :-step]
        shadow = np.maximum(shadow, (shifted > step * 0.8).astype(np.float32))
    return shadow


def _write_tiff(path: Path, image: np.ndarray) -> None:
    height, width, _ = image.shape
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
    }
    with raster_write_errors(path), rasterio.open(path, "w", **profile) as dst:
        dst.write(image.transpose(2, 0, 1))
        dst.update_tags(CANOPY_SYNTHETIC="procedurally generated, not real imagery")
