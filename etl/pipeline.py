"""The etl stage: scenes from the chosen source -> filtered tiles -> shards + manifest.

Output is built in a staging folder beside the target and swapped in at the end, so an
interrupted or failed run leaves no partial output and the previous good output untouched.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from tqdm import tqdm

from canopy.conditions import tile_values
from canopy.errors import UserError
from canopy.etl.params import RUN_ONLY_KEYS, EtlParams
from canopy.etl.png import PNG_COMPRESS_LEVEL, encode_png
from canopy.etl.scene import GDAL_ENV, SceneReader, SceneSpec, check_raster_cost, open_raster
from canopy.etl.sources import SOURCES
from canopy.etl.tiling import Candidate, count_tiles, scene_candidates
from canopy.fsutil import atomic_dir, output_lock
from canopy.hashing import sha256_json
from canopy.imaging import contact_sheet
from canopy.params import CanopyParams
from canopy.tiles import (
    SPLITS,
    TILES_OUTPUT,
    ShardWriter,
    TileLocation,
    TrainStats,
    split_counts,
    split_of,
    write_manifest,
)

IN_FLIGHT_PER_WORKER = 48  # about one row of 128 px tiles of a 6000 px wide raster


@dataclass
class FilterCounts:
    candidates: int = 0
    dropped_invalid: int = 0
    dropped_vegetation: int = 0
    dropped_tree_cover: int = 0
    kept: int = 0


@dataclass
class EtlResult:
    out: Path
    counts: dict[str, int]
    filters: FilterCounts
    scenes: int
    synthetic: bool
    shards: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # scenes left out: smaller than a tile


def run_etl(params: CanopyParams, out: Path, *, progress: bool = True) -> EtlResult:
    with output_lock(out, "canopy etl"), warnings.catch_warnings(), rasterio.Env(**GDAL_ENV), \
            atomic_dir(out, TILES_OUTPUT) as staging:
        # Plain PNG/JPEG and synthetic scenes have no georeference on purpose (crs: null).
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        # Scratch files live in the staging folder, so a killed run's go with it (the next
        # run removes stale staging folders) instead of piling up in the system temp dir.
        work = staging / ".work"
        work.mkdir()
        scenes = SOURCES[params.etl.source](params, work, progress=progress)
        if params.etl.min_tree_cover > 0:
            from canopy.etl.worldcover import with_tree_cover

            scenes = with_tree_cover(scenes, params.etl, progress=progress)
        scenes, skipped = check_scene_sizes(scenes, params.etl)
        result = write_tiles(scenes, params, staging, progress, skipped)
        result.out = out
        shutil.rmtree(work)  # not part of the output
    return result


def check_scene_sizes(scenes: list[SceneSpec],
                      etl: EtlParams) -> tuple[list[SceneSpec], list[dict]]:
    """The scenes to tile, and a report of each one left out for being smaller than a tile
    (a partial plot among whole ones: it has no tile to give, like a scene all nodata). Refuse,
    before any tile is cut, a raster whose claimed size would take unreasonable time or memory
    to read (scene.check_raster_cost), and input where every raster is smaller than a tile."""
    tile_size = etl.tile_size
    usable, too_small = [], []
    for scene in scenes:
        for path in scene.files:
            with open_raster(path) as dataset:
                check_raster_cost(dataset, path, tile_size, etl.max_scene_megapixels,
                                  etl.max_read_mb)
        with rasterio.open(scene.rgb[0].path) as dataset:
            width, height = dataset.width, dataset.height
        if width < tile_size or height < tile_size:
            too_small.append((scene, width, height))
        else:
            usable.append(scene)
    if not usable and too_small:
        raise UserError(_too_small_message(*too_small[0], tile_size))
    skipped = [{"files": scene.provenance, "width": width, "height": height,
                "gsd": scene.gsd, "reason": f"smaller than one {tile_size}x{tile_size} tile"}
               for scene, width, height in too_small]
    return usable, skipped


def _too_small_message(scene: SceneSpec, width: int, height: int, tile_size: int) -> str:
    """Name the user's own file: a resampled scene is read through a VRT in the staging
    folder, which is gone by the time the message is read."""
    name = scene.provenance[0]
    target = scene.extra.get("target_gsd")
    if target is None:
        return (f"{name} is {width}x{height} pixels, smaller than one {tile_size}x{tile_size} "
                "tile; remove it or lower etl.tile_size")
    return (f"{name} is {width}x{height} pixels at etl.local.target_gsd {target:g} m, smaller "
            f"than one {tile_size}x{tile_size} tile; leave it out of etl.local.paths, lower "
            "etl.tile_size or lower etl.local.target_gsd")


def write_tiles(scenes: list[SceneSpec], params: CanopyParams, root: Path,
                progress: bool, skipped: list[dict] | None = None) -> EtlResult:
    """Tile `scenes` into shards under `root` with a manifest; `skipped` reports the scenes
    left out before tiling (check_scene_sizes), recorded in the manifest's filters."""
    skipped = skipped or []
    etl = params.etl
    writers = {split: ShardWriter(root, split, etl.shard_size) for split in SPLITS}
    filters = FilterCounts()
    placed: list[TileLocation] = []  # where each kept tile's PNG is, in output order
    stats = TrainStats()  # of the train tiles: train standardises the data with them
    scene_reports = []
    with TileEncoder(etl.workers) as encoder:
        for scene in tqdm(scenes, desc="scenes", unit="scene", disable=not progress):
            report = _tile_scene(scene, etl, encoder, writers, filters, placed, progress, stats)
            scene_reports.append(report)
    shards = [shard for split in SPLITS for shard in writers[split].close()]
    if filters.kept == 0:
        raise UserError(_nothing_kept_message(filters, etl))
    counts = split_counts(shards)
    synthetic = any(scene.source == "synthetic" for scene in scenes)
    if etl.preview_tiles:
        write_preview(root, placed, etl.preview_tiles, synthetic)
    shard_entries = [vars(shard) for shard in shards]
    write_manifest(
        root, tile_size=etl.tile_size, stride=etl.stride, shards=shards, synthetic=synthetic,
        filters={**vars(filters), "min_valid_fraction": etl.min_valid_fraction,
                 "min_vegetation_fraction": etl.min_vegetation_fraction,
                 "min_tree_cover": etl.min_tree_cover, "skipped_scenes": skipped},
        sources=scene_reports, params_hash=output_params_hash(params),
        train_stats=stats.to_json(),
    )
    return EtlResult(root, counts, filters, len(scenes), synthetic, shard_entries, skipped)


def output_params_hash(params: CanopyParams) -> str:
    """sha256 of the `etl` section and `seed`, less RUN_ONLY_KEYS (thread counts, retries...)."""
    dumped = params.model_dump(mode="json")
    etl = dumped["etl"]
    for dotted in RUN_ONLY_KEYS:
        *parents, name = dotted.split(".")
        section = etl
        for parent in parents:
            section = section[parent]
        del section[name]
    return sha256_json({"etl": etl, "seed": dumped["seed"]})


def _tile_scene(scene, etl: EtlParams, encoder, writers, filters, placed, progress,
                stats: TrainStats) -> dict:
    scene_filters = FilterCounts()
    with SceneReader(scene, gamma=etl.gamma, percentile_range=etl.percentile_range,
                     ndvi_threshold=etl.ndvi_threshold, gli_threshold=etl.gli_threshold) as reader:
        total = count_tiles(reader.width, reader.height, etl.tile_size, etl.stride)
        bar = tqdm(total=total, desc=scene.scene_id, unit="tile", leave=False, disable=not progress)
        kept = _filtered(scene_candidates(reader, etl.tile_size, etl.stride), etl, scene_filters, bar)
        for candidate, png in encoder.encode(kept):
            key = f"{scene.scene_id}_{candidate.row:06d}_{candidate.col:06d}"
            split = split_of(key, etl.val_fraction)
            metadata = _tile_metadata(key, scene, reader, candidate)
            if split == "train":
                stats.add(candidate.rgb, tile_values(metadata)["region"])
            placed.append(writers[split].add(key, png, metadata))
        bar.close()
        for name in vars(filters):
            setattr(filters, name, getattr(filters, name) + getattr(scene_filters, name))
        return _scene_report(scene, reader, scene_filters)


def _filtered(candidates: Iterable[Candidate], etl: EtlParams, counts: FilterCounts,
              bar: tqdm) -> Iterator[Candidate]:
    for candidate in candidates:
        counts.candidates += 1
        bar.update(1)
        if candidate.valid_fraction < etl.min_valid_fraction:
            counts.dropped_invalid += 1
        elif candidate.vegetation_fraction < etl.min_vegetation_fraction:
            counts.dropped_vegetation += 1
        elif candidate.tree_cover is not None and candidate.tree_cover < etl.min_tree_cover:
            counts.dropped_tree_cover += 1
        else:
            counts.kept += 1
            yield candidate


# --- parallel PNG encoding ---------------------------------------------------------------

class TileEncoder:
    """PNG-encode tiles on `workers` threads, yielding them in input order.

    Threads, not processes: Pillow releases the GIL while compressing (1.7x on 2 cores,
    measured), and tiles need no pickling. At most IN_FLIGHT_PER_WORKER tiles per worker are
    queued, so memory stays bounded (a few MiB) however many tiles a scene has, yet the
    encoders stay busy while the main thread reads and decodes the next row of tiles. With one
    worker, tiles are encoded inline.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers or available_cores()
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def __enter__(self) -> TileEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def encode(self, candidates: Iterable[Candidate]) -> Iterator[tuple[Candidate, bytes]]:
        if self._pool is None:
            for candidate in candidates:
                yield candidate, encode_png(candidate.rgb)
            return
        queue: deque[tuple[Candidate, Future]] = deque()
        for candidate in candidates:
            queue.append((candidate, self._pool.submit(encode_png, candidate.rgb)))
            if len(queue) >= IN_FLIGHT_PER_WORKER * self.workers:
                done, future = queue.popleft()
                yield done, future.result()
        while queue:
            done, future = queue.popleft()
            yield done, future.result()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --- metadata, preview, messages ---------------------------------------------------------

def _tile_metadata(key: str, scene: SceneSpec, reader: SceneReader, candidate: Candidate) -> dict:
    size = candidate.rgb.shape[0]
    metadata = {
        "key": key,
        "source": scene.source,
        "scene": scene.scene_id,
        "files": scene.provenance,
        "crs": reader.crs,
        "window": {"col": candidate.col, "row": candidate.row, "width": size, "height": size},
        "acquired": scene.acquired,
        "valid_fraction": round(candidate.valid_fraction, 6),
        "vegetation_fraction": round(candidate.vegetation_fraction, 6),
        "vegetation_method": scene.vegetation_method,
        "region": scene.region,
        "gsd": reader.gsd,
        "tree_cover": None if candidate.tree_cover is None else round(candidate.tree_cover, 6),
    }
    if reader.crs is not None:
        window = Window(candidate.col, candidate.row, size, size)
        metadata["bounds"] = list(window_bounds(window, reader.transform))  # left, bottom, right, top
    if scene.item is not None:
        metadata["item"] = scene.item
        metadata["processing_baseline"] = scene.processing_baseline
    if scene.source == "synthetic":
        metadata["synthetic"] = True
    return metadata


def _scene_report(scene: SceneSpec, reader: SceneReader, counts: FilterCounts) -> dict:
    scaling = reader.scaling
    return {
        "scene": scene.scene_id,
        "source": scene.source,
        "files": scene.provenance,
        "crs": reader.crs,
        "width": reader.width,
        "height": reader.height,
        "dtype": str(reader.dtype),
        "acquired": scene.acquired,
        "scaling": {"mode": scene.scale_mode, "low": list(scaling.low),
                    "high": list(scaling.high), "gamma": scaling.gamma},
        "vegetation_method": scene.vegetation_method,
        "region": scene.region,
        "gsd": reader.gsd,
        **vars(counts),
        **scene.extra,
    }


def _nothing_kept_message(filters: FilterCounts, etl: EtlParams) -> str:
    if filters.candidates == 0:
        return "no tile could be cut from the input; check the rasters and etl.tile_size"
    return (
        f"no tile passed the filters: of {filters.candidates} tiles, {filters.dropped_invalid} "
        f"had a valid fraction under etl.min_valid_fraction={etl.min_valid_fraction} (nodata, "
        f"mask, cloud/shadow/snow), {filters.dropped_vegetation} a vegetation fraction under "
        f"etl.min_vegetation_fraction={etl.min_vegetation_fraction} and "
        f"{filters.dropped_tree_cover} a WorldCover tree cover under "
        f"etl.min_tree_cover={etl.min_tree_cover}; lower the threshold that "
        "dropped them (0 disables it) or choose other imagery"
    )


def write_preview(root: Path, placed: list[TileLocation], limit: int, synthetic: bool) -> None:
    """A contact sheet of up to `limit` tiles spread evenly over the output."""
    count = min(limit, len(placed))
    picks = [placed[int(i * len(placed) / count)] for i in range(count)]
    tiles = [np.asarray(Image.open(io.BytesIO(location.read())).convert("RGB"))
             for location in picks]
    sheet = Image.fromarray(contact_sheet(tiles))
    if synthetic:
        banner = Image.new("RGB", (sheet.width, sheet.height + 18), (255, 255, 255))
        banner.paste(sheet, (0, 18))
        ImageDraw.Draw(banner).text((4, 3), "SYNTHETIC DEMO DATA - not real imagery", fill=(200, 0, 0))
        sheet = banner
    sheet.save(root / "preview.png", format="PNG", compress_level=PNG_COMPRESS_LEVEL)
