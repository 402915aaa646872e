"""The images one experiment offers to judges: val tiles (real) and samples (generated).

An image's identity is what the answers database records: ("val", key) for a tile, the index
for a sample. Identities come from the two folders' listings at start; nothing a client sends
is ever turned into a path, it can only pick an identity that the listing already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from canopy.errors import UserError
from canopy.judge import images

REAL, GENERATED = "real", "generated"
TRUTHS = (REAL, GENERATED)


@dataclass(frozen=True)
class Experiment:
    """Which run produced the images: answers of different experiments are never mixed."""

    samples_sha256: str
    tiles_sha256: str


@dataclass(frozen=True)
class Identity:
    """One image: a val tile (split and key) or a sample (index)."""

    truth: str
    split: str | None = None
    tile_key: str | None = None
    sample_index: int | None = None

    @staticmethod
    def tile(key: str) -> Identity:
        return Identity(REAL, split="val", tile_key=key)

    @staticmethod
    def sample(index: int) -> Identity:
        return Identity(GENERATED, sample_index=index)


@dataclass(frozen=True)
class Catalog:
    experiment: Experiment
    tile_size: int
    real: tuple[Identity, ...]
    generated: tuple[Identity, ...]
    samples_dir: Path
    tiles_dir: Path
    real_kind: str  # what the real pictures are, in words for the judges (real_kind_of)
    _tiles: dict[str, images.TileRef] = field(repr=False)
    _samples: dict[int, Path] = field(repr=False)

    def pixels(self, identity: Identity) -> np.ndarray:
        """The image as (H, W, 3) uint8, decoded the same way for both classes."""
        if identity.truth == REAL:
            return images.read_tile(self._tiles[identity.tile_key], self.tile_size)
        return images.read_sample(self._samples[identity.sample_index], self.tile_size)

    def holds(self, identity: Identity) -> bool:
        if identity.truth == REAL:
            return identity.split == "val" and identity.tile_key in self._tiles
        return identity.sample_index in self._samples

    def unchanged(self) -> bool:
        """False once either folder was replaced (a new run): the listing no longer holds."""
        try:
            return experiment_of(self.samples_dir, self.tiles_dir) == self.experiment
        except UserError:
            return False


def load_catalog(samples_dir: Path, tiles_dir: Path) -> Catalog:
    """List both folders and check that they can be compared (refusals name the fix)."""
    size = images.tile_size(tiles_dir)
    tiles = images.val_tiles(tiles_dir)
    if not tiles:
        raise UserError(f"no val tiles in {tiles_dir / 'val'}: judges compare samples with "
                        "held-out tiles; raise etl.val_fraction or add imagery, then re-run "
                        "`canopy etl`")
    samples = images.samples(samples_dir)
    for path in samples.values():
        width, height = images.image_size(path)
        if (width, height) != (size, size):
            raise UserError(f"{path} is {width}x{height} px but the tiles in {tiles_dir} are "
                            f"{size}x{size}: judge samples of the same tile size (re-run "
                            "`canopy sample` after `canopy etl`, or pass the matching --tiles)")
    experiment = experiment_of(samples_dir, tiles_dir)
    return Catalog(experiment, size, tuple(Identity.tile(key) for key in sorted(tiles)),
                   tuple(Identity.sample(index) for index in sorted(samples)), samples_dir,
                   tiles_dir, real_kind_of(images.tiles_manifest(tiles_dir)), tiles, samples)


# Finer than this (metres per pixel) the imagery is taken as aerial photography: satellites
# reach 0.3 m, but every satellite source Canopy reads is 10 m.
AERIAL_GSD_M = 2.0


def real_kind_of(manifest: dict) -> str:
    """What the real pictures are, from the tiles manifest: the judges are told the truth
    about them (a synthetic demo scene is not "a real satellite tile")."""
    if manifest.get("synthetic"):
        return "a tile of the synthetic demo scenes (drawn by a program, not a photograph)"
    scenes = [entry for entry in manifest.get("sources", []) if isinstance(entry, dict)]
    kinds = {entry.get("source") for entry in scenes}
    if scenes and kinds <= {"sentinelhub", "stac"}:
        return "a real Sentinel-2 satellite image of a forest"
    gsds = [entry["gsd"] for entry in scenes if isinstance(entry.get("gsd"), (int, float))]
    if gsds and max(gsds) < AERIAL_GSD_M:
        return "a real aerial photograph of a forest"
    if gsds and min(gsds) >= AERIAL_GSD_M:
        return "a real satellite image of a forest"
    return "a real picture of a forest"


def experiment_of(samples_dir: Path, tiles_dir: Path) -> Experiment:
    return Experiment(images.samples_manifest_sha256(samples_dir),
                      images.tiles_manifest_sha256(tiles_dir))
