"""The evaluate stage: data/samples/ and data/tiles/ -> metrics/evaluate.json (+ _details.json).

What is compared with what (docs/contract.md, metrics/):
  - the samples (first `max_samples` NNNNNN.png) against the held-out val tiles (a seeded subset
    of `max_real`): `swd`, `fid`, `kid`, with counts `n_samples`, `n_real`;
  - the real-vs-real floor, `*_floor`: as many train tiles as there are samples (a seeded
    subset) against the same val tiles, with the same metric code, the same val patches and
    directions (SWD) and the same val features (FID/KID). It is what a perfect model, one that
    samples the training distribution, would score with these counts: small sets inflate FID
    and SWD, and the floor is inflated the same way, so read the model's distance from it;
  - on the same Inception features, computed once: the feature C2ST (a cross-validated
    linear classifier), precision and recall, and FID extrapolated to infinite n (`fid_inf`);
  - intervals: every metric, its floor and the ratio of the two (SWD, FID) get a 95% seeded
    bootstrap interval over the images (`_lo`, `_hi`), paired so that the samples' row and the
    floor's row resample the same val tiles (bootstrap.py);
  - trust: below evaluate.trust_min_images samples or val tiles, `trusted` is 0 and one line
    says so (the counts where the figures ranked obvious fakes right: docs/benchmarks.md);
  - memorisation: each sample's distance to its nearest train tile (all train tiles are
    searched, `n_train`); `memorised_fraction` is the fraction of samples that are near-copies,
    and `memorised_fraction_floor` the same for the val tiles (which are never copies).
    `memorised_structured_fraction` counts only the near-copies that are not plain tiles (a
    plain tile is near every plain train tile of its colour: evaluate/memorisation.py), and
    `plain_fraction` is the share of plain tiles, each with the val tiles' as its floor.

Every random choice comes from `seed`, so the same inputs give byte-identical JSON files (the
values are rounded to 6 significant digits, well above the float noise).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canopy import samples as samples_io
from canopy import tiles
from canopy.accelerator import pick_device
from canopy.errors import UserError
from canopy.evaluate import bootstrap
from canopy.evaluate import images as images_io
from canopy.evaluate import memorisation as mem
from canopy.evaluate import spread as spread_mod
from canopy.evaluate import swd as swd_mod
from canopy.fsutil import atomic_write_text, details_path
from canopy.hashing import sha256_file
from canopy.params import CanopyParams
from canopy.seeding import Stream, numpy_rng

_TRAIN_BLOCK = 256  # train tiles decoded and searched at a time
_NEAR_COPIES_LISTED = 50


@dataclass
class EvaluateResult:
    metrics: dict[str, float | int]
    details: dict[str, Any]
    out: Path
    details_out: Path
    notes: list[str] = field(default_factory=list)


METRICS_FILE = "evaluate.json"  # in paths.metrics; dvc.yaml declares it as DVC metrics


def sig(value: float, digits: int = 6) -> float:
    """Round to `digits` significant digits, so float noise never changes the JSON bytes."""
    return float(f"{value:.{digits}g}")


@contextmanager
def _bar(progress: bool, total: int, desc: str) -> Iterator[Callable[[int], None]]:
    if not progress:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", leave=False, file=sys.stderr) as bar:
        yield bar.update


def run_evaluate(params: CanopyParams, samples_dir: Path, tiles_dir: Path, out: Path,
                 progress: bool = False, note: Callable[[str], None] = lambda s: None
                 ) -> EvaluateResult:
    """The phases in order, each a function below: read the inputs, search the train tiles
    (memorisation and the floor's subset), SWD, C2ST, per condition, FID and the Inception
    metrics, trust; then write details, then metrics."""
    inputs = _read_inputs(params, samples_dir, tiles_dir, progress)
    search = _search_train_tiles(params, inputs, progress)
    metrics: dict[str, float | int] = {}
    details: dict[str, Any] = {"inputs": _inputs_details(params, inputs),
                               "counts": _counts_details(params, inputs, search)}
    details["swd"], resamples = _swd(params, inputs, search, progress, metrics)
    details["memorisation"] = _memorisation(params, inputs, search, metrics)
    details["tile_spread"] = _tile_spread(inputs, search, resamples, metrics)
    details["c2st"] = _c2st(params, inputs.samples, inputs.val, search.train_floor,
                            inputs.used_samples, progress, metrics)
    asked = _asked_regions(inputs.samples_manifest, inputs.used_samples)
    if asked is not None:  # conditioned samples only
        details["conditioned"] = _conditioned(params, inputs.samples, asked, inputs.used_val,
                                              inputs.val, inputs.train_refs, inputs.tile_size,
                                              progress, metrics, note)
    details["fid_kid"], omitted = _fid_kid(params, inputs.weights, inputs.no_weights_why,
                                           inputs.device, inputs.samples, inputs.val,
                                           search.train_floor, progress, metrics, resamples)
    notes = []
    if omitted:
        notes.append(f"FID/KID omitted: {omitted}")
        note(notes[-1])
    details["trust"] = _trust(params.evaluate.trust_min_images, len(inputs.samples),
                              len(inputs.val), metrics)
    if not metrics["trusted"]:
        notes.append(details["trust"]["why"])
        note(notes[-1])

    details_out = details_path(out)
    # Details first: if the run dies between the two, the metrics file (what DVC reads) is
    # still the previous, self-consistent one.
    atomic_write_text(details_out, json.dumps(details, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return EvaluateResult(metrics, details, out, details_out, notes)


@dataclass
class _Inputs:
    """What evaluate compares, read once: the samples, the val subset, the tile lists."""

    manifest: dict[str, Any]
    tile_size: int
    samples_dir: Path
    tiles_dir: Path
    sample_paths: list[Path]
    samples_manifest: dict[str, Any] | None
    val_refs: list
    train_refs: list
    used_samples: list[Path]
    samples: np.ndarray
    used_val: list
    val: np.ndarray
    weights: Any
    no_weights_why: str
    device: str


def _read_inputs(params: CanopyParams, samples_dir: Path, tiles_dir: Path,
                 progress: bool) -> _Inputs:
    ev, seed = params.evaluate, params.seed
    manifest = tiles.read_manifest(tiles_dir, point_at="--tiles")
    tile_size = manifest["tile_size"]
    if tile_size < ev.swd_patch_size:
        raise UserError(f"the tiles are {tile_size}px, smaller than evaluate.swd_patch_size "
                        f"({ev.swd_patch_size}); lower it or use larger tiles")
    sample_paths = samples_io.list_samples(samples_dir)
    samples_manifest = samples_io.read_manifest(samples_dir)  # another format version: refused
    val_refs = images_io.tiles_by_key(tiles_dir, "val", ev.verify_shards)
    if not val_refs:
        raise UserError(f"no val tiles in {tiles_dir / 'val'}: evaluate compares samples with "
                        "held-out tiles; raise etl.val_fraction or add imagery, then re-run "
                        "`canopy etl`")
    train_refs = images_io.tiles_by_key(tiles_dir, "train", ev.verify_shards)
    if not train_refs:
        raise UserError(f"no train tiles in {tiles_dir / 'train'}: the floor and the "
                        "memorisation check need them; re-run `canopy etl`")

    # Before the slow work: a missing weights file or device fails now.
    weights, no_weights_why, device = _locate_weights(params)

    used_samples = sample_paths[: ev.max_samples]
    with _bar(progress, len(used_samples), "read samples") as tick:
        reads = (samples_io.read_sample(path, tile_size) for path in used_samples)
        samples = images_io.stack(_ticked(reads, tick), len(used_samples), tile_size)
    val_pick = images_io.seeded_subset(len(val_refs), ev.max_real,
                                       numpy_rng(seed, Stream.EVAL_VAL_SUBSET))
    used_val = [val_refs[i] for i in val_pick]
    with _bar(progress, len(used_val), "read val tiles") as tick:
        reads = tiles.read_tiles(used_val, tile_size)
        val = images_io.stack(_ticked(reads, tick), len(used_val), tile_size)
    return _Inputs(manifest, tile_size, samples_dir, tiles_dir, sample_paths, samples_manifest,
                   val_refs, train_refs, used_samples, samples, used_val, val, weights,
                   no_weights_why, device)


@dataclass
class _TrainSearch:
    """One pass over the train tiles: the floor's subset, and each sample's and val tile's
    distance to its nearest train tile (memorisation)."""

    train_floor: np.ndarray
    size: int  # the side the images are compared at
    sample_dist: np.ndarray
    val_dist: np.ndarray
    sample_nearest: np.ndarray  # the index of each sample's nearest train tile


def _search_train_tiles(params: CanopyParams, inputs: _Inputs, progress: bool) -> _TrainSearch:
    ev, tile_size, train_refs = params.evaluate, inputs.tile_size, inputs.train_refs
    floor_pick = images_io.seeded_subset(len(train_refs), len(inputs.samples),
                                         numpy_rng(params.seed, Stream.EVAL_FLOOR_SUBSET))
    floor_set = set(floor_pick.tolist())
    train_floor = np.empty((len(floor_pick), tile_size, tile_size, 3), dtype=np.uint8)
    size = min(ev.memorisation_size, tile_size)
    sample_search = mem.NearestNeighbours(
        mem.query_features(inputs.samples, size, ev.memorisation_dihedral))
    val_search = mem.NearestNeighbours(
        mem.query_features(inputs.val, size, ev.memorisation_dihedral))
    kept = 0
    with _bar(progress, len(train_refs), "search train tiles") as tick:
        for start in range(0, len(train_refs), _TRAIN_BLOCK):
            block = np.stack([tiles.read_tile(ref, tile_size)
                              for ref in train_refs[start:start + _TRAIN_BLOCK]])
            for offset, image in enumerate(block):
                if start + offset in floor_set:
                    train_floor[kept] = image
                    kept += 1
            features = mem.downscale(block, size)
            sample_search.update(features)
            val_search.update(features)
            tick(len(block))
    return _TrainSearch(train_floor, size, sample_search.distances(), val_search.distances(),
                        sample_search.best_index)


def _swd(params: CanopyParams, inputs: _Inputs, search: _TrainSearch, progress: bool,
         metrics: dict[str, float | int]) -> tuple[dict[str, Any], Any]:
    """SWD and its floor into `metrics`; its details, and the bootstrap resamples that FID's
    intervals share."""
    ev, samples, val, train_floor = params.evaluate, inputs.samples, inputs.val, search.train_floor
    n_samples, n_real, n_floor = len(samples), len(val), len(train_floor)
    resamples = bootstrap.draws(numpy_rng(params.seed, Stream.EVAL_BOOTSTRAP, 0),
                                {"real": n_real, "fake0": n_samples, "fake1": n_floor},
                                ev.bootstrap_replicates)
    config = swd_mod.SwdConfig(ev.swd_patch_size, ev.swd_patches_per_image, ev.swd_projections,
                               ev.swd_repeats, ev.swd_min_resolution)
    levels = len(swd_mod.pyramid_resolutions(inputs.tile_size, config.min_resolution))
    total = levels * (n_real + n_samples + n_floor)
    with _bar(progress, total, "SWD patches") as tick:
        result = swd_mod.swd([samples, train_floor], val, config, params.seed, tick, resamples)
    swd_samples, swd_floor = result.per_level
    _record(metrics, "swd", swd_mod.mean_over_levels(swd_samples),
            swd_mod.mean_over_levels(swd_floor), *result.replicates, ratio=True)
    metrics.update({"n_samples": n_samples, "n_real": n_real, "n_samples_floor": n_floor,
                    "n_real_floor": n_real, "n_train": len(inputs.train_refs)})
    details = {
        "definition": "sliced Wasserstein distance of 7x7 Laplacian-pyramid patches "
                      "(Karras et al. 2018), x1e3 per level; swd = mean over levels; "
                      "normalised by the val set's per-channel statistics",
        "per_level_x1e3": {str(r): sig(v) for r, v in swd_samples.items()},
        "interval": f"{ev.bootstrap_replicates} bootstrap resamples of the images, on "
                    f"{swd_mod.BOOTSTRAP_PATCHES} patches per image and level and "
                    f"{swd_mod.BOOTSTRAP_DIRECTIONS} directions, shifted to the full "
                    "estimate",
        "floor_per_level_x1e3": {str(r): sig(v) for r, v in swd_floor.items()},
        "n_samples": n_samples, "n_real": n_real, "n_samples_floor": n_floor,
        "patch_size": config.patch_size,
        "patches_per_image_per_level": config.patches_per_image,
        "projections": config.projections * config.repeats,
        "repeats": config.repeats,
    }
    return details, resamples


def _memorisation(params: CanopyParams, inputs: _Inputs, search: _TrainSearch,
                  metrics: dict[str, float | int]) -> dict[str, Any]:
    ev = params.evaluate
    threshold = ev.memorisation_threshold
    metrics["memorised_fraction"] = sig(mem.memorised_fraction(search.sample_dist, threshold))
    metrics["memorised_fraction_floor"] = sig(mem.memorised_fraction(search.val_dist, threshold))
    # near-copies that carry structure, and plain tiles, which match any plain train tile of
    # their colour (evaluate/memorisation.py)
    sample_plain = mem.structure(inputs.samples, search.size) < threshold
    val_plain = mem.structure(inputs.val, search.size) < threshold
    metrics["memorised_structured_fraction"] = sig(float(np.mean(
        (search.sample_dist < threshold) & ~sample_plain)))
    metrics["memorised_structured_fraction_floor"] = sig(float(np.mean(
        (search.val_dist < threshold) & ~val_plain)))
    metrics["plain_fraction"] = sig(float(np.mean(sample_plain)))
    metrics["plain_fraction_floor"] = sig(float(np.mean(val_plain)))
    return {
        "definition": f"RMS difference (0..1 of the 0..255 range) of {search.size}x{search.size}"
                      " px box-downscaled images to the nearest train tile"
                      + (" over the 8 flips/rotations" if ev.memorisation_dihedral else ""),
        "threshold": threshold,
        "samples_nearest_distance": _quantiles(search.sample_dist),
        "val_nearest_distance_floor": _quantiles(search.val_dist),
        "near_copies": _near_copies(search.sample_dist, search.sample_nearest, sample_plain,
                                    inputs.used_samples, inputs.train_refs, threshold),
        "n_samples": len(inputs.samples), "n_real_floor_queries": len(inputs.val),
        "n_train": len(inputs.train_refs),
    }


def _tile_spread(inputs: _Inputs, search: _TrainSearch, resamples: list,
                 metrics: dict[str, float | int]) -> dict[str, Any]:
    """The samples' tile spread over the val tiles' (evaluate/spread.py), and the floor's (the
    train tiles'), with intervals from the same paired resamples as SWD."""
    if min(len(inputs.samples), len(inputs.val), len(search.train_floor)) < 2:
        return {"omitted": "a spread needs at least 2 images in each set"}
    samples, val, floor = (spread_mod.mean_colours(images) for images in
                           (inputs.samples, inputs.val, search.train_floor))
    value, value_floor = spread_mod.spread_ratio(samples, val), spread_mod.spread_ratio(floor, val)
    reps = np.array([spread_mod.spread_ratio(samples[pick["fake0"]], val[pick["real"]])
                     for pick in resamples])
    reps_floor = np.array([spread_mod.spread_ratio(floor[pick["fake1"]], val[pick["real"]])
                           for pick in resamples])
    _record(metrics, "tile_spread", value, value_floor, reps, reps_floor)
    return {
        "definition": "standard deviation over the images of each image's mean colour (per "
                      "channel, 0..1, averaged over channels), over the val tiles' own; 1 = as "
                      "varied as the real tiles",
        "samples": sig(spread_mod.spread(samples)), "val": sig(spread_mod.spread(val)),
        "train_floor": sig(spread_mod.spread(floor)),
    }


def _inputs_details(params: CanopyParams, inputs: _Inputs) -> dict[str, Any]:
    return {
        "samples": str(inputs.samples_dir),
        "samples_found": len(inputs.sample_paths),
        "samples_manifest_sha256": _sha_if_file(inputs.samples_dir / samples_io.MANIFEST_FILE),
        "tiles": str(inputs.tiles_dir),
        "tiles_params_hash": inputs.manifest.get("params_hash"),
        "tile_size": inputs.tile_size,
        "val_found": len(inputs.val_refs),
        "train_found": len(inputs.train_refs),
        "seed": params.seed,
    }


def _counts_details(params: CanopyParams, inputs: _Inputs, search: _TrainSearch
                    ) -> dict[str, str]:
    ev = params.evaluate
    n_samples, n_real, n_floor = len(inputs.samples), len(inputs.val), len(search.train_floor)
    return {
        "n_samples": f"the first {n_samples} of {len(inputs.sample_paths)} sample images "
                     f"(evaluate.max_samples {ev.max_samples})",
        "n_real": f"{n_real} of {len(inputs.val_refs)} val tiles (seeded subset when over "
                  f"evaluate.max_real {ev.max_real})",
        "n_samples_floor": f"{n_floor} train tiles (seeded subset, as many as samples) "
                           "in the samples' place for the floor",
        "n_train": f"all {len(inputs.train_refs)} train tiles, searched for near-copies",
    }


def _locate_weights(params: CanopyParams):
    """(Inception weights or None, why none, device); no weights and no reason when
    evaluate.fid is off."""
    if not params.evaluate.fid:
        return None, "", ""
    from canopy.evaluate import inception

    weights, why = inception.locate_weights(params.evaluate.inception_weights)
    device = str(pick_device(params.evaluate.device, "evaluate.device")) if weights is not None else ""
    return weights, why, device


def _fid_kid(params: CanopyParams, weights, no_weights_why: str, device: str,
             samples: np.ndarray,
             val: np.ndarray, train_floor: np.ndarray, progress: bool,
             metrics: dict[str, float | int],
             resamples: list[dict[str, np.ndarray]]) -> tuple[dict[str, Any], str]:
    """Add fid, kid (and floors) to `metrics` when possible; (details, why they could not be
    computed, or "" when they were or were switched off)."""
    ev = params.evaluate
    if not ev.fid:
        return {"omitted": "evaluate.fid is false"}, ""  # asked for: no note
    if weights is None:
        return {"omitted": no_weights_why}, no_weights_why
    smallest = min(len(samples), len(val), len(train_floor))
    if smallest < 2:
        why = (f"they need at least 2 images per set (samples {len(samples)}, val {len(val)}, "
               f"floor train tiles {len(train_floor)})")
        return {"omitted": why}, why
    from canopy.evaluate import inception

    extractor = inception.InceptionFeatures(weights, device, ev.inception_batch_size)
    total = len(val) + len(samples) + len(train_floor)
    with _bar(progress, total, f"Inception features ({device})") as tick:
        f_val = extractor(val, tick)
        f_samples = extractor(samples, tick)
        f_floor = extractor(train_floor, tick)
    details = {
        "weights": {"source": weights.source, "file": weights.path.name,
                    "sha256": weights.sha256},
        "network": "Inception-v3 (TF 2015-12-05 graph), 2048-d pool3 features",
        "resize": "uint8 tile as float -> 299x299 by TF1 legacy bilinear (no half-pixel "
                  "offset, no antialiasing), then (x - 128) / 128",
        "device": device,
    }
    # The features are computed once; every metric below reads them.
    details.update(_fid(params, f_samples, f_val, f_floor, metrics, resamples))
    details["kid"] = _kid(params, f_samples, f_val, f_floor, metrics, resamples)
    details["c2st_features"] = _c2st_features(params, f_samples, f_val, f_floor, metrics)
    details["precision_recall"] = _precision_recall(params, f_samples, f_val, f_floor, metrics)
    return details, ""


def _fid(params: CanopyParams, f_samples, f_val, f_floor, metrics, resamples) -> dict[str, Any]:
    from canopy.evaluate import fid as fid_mod

    seed = params.seed
    reps = [fid_mod.fid_replicates(f, f_val, [(r[role], r["real"]) for r in resamples])
            for f, role in ((f_samples, "fake0"), (f_floor, "fake1"))]
    _record(metrics, "fid", fid_mod.fid(f_samples, f_val), fid_mod.fid(f_floor, f_val), *reps,
            ratio=True)
    fid_inf = fid_mod.fid_infinity(f_samples, f_val, numpy_rng(seed, Stream.EVAL_FID_INF, 0))
    fid_inf_floor = fid_mod.fid_infinity(f_floor, f_val, numpy_rng(seed, Stream.EVAL_FID_INF, 1))
    metrics["fid_inf"], metrics["fid_inf_floor"] = sig(fid_inf), sig(fid_inf_floor)
    return {"fid": {"n_samples": len(f_samples), "n_real": len(f_val),
                    "n_samples_floor": len(f_floor),
                    "note": "biased upwards at small n: compare only at equal counts, or "
                            "fid_inf with fid_inf_floor",
                    "fid_inf": "FID extrapolated to infinitely many samples (Chong and Forsyth "
                               "2020) from 5 subset sizes, n/4 to n; the val set's own bias "
                               "remains, in fid_inf_floor too"}}


def _kid(params: CanopyParams, f_samples, f_val, f_floor, metrics, resamples) -> dict[str, Any]:
    from canopy.evaluate import fid as fid_mod

    ev, seed = params.evaluate, params.seed
    kid_samples = fid_mod.kid(f_samples, f_val, numpy_rng(seed, Stream.EVAL_KID),
                              ev.kid_subsets, ev.kid_subset_size)
    kid_floor = fid_mod.kid(f_floor, f_val, numpy_rng(seed, Stream.EVAL_KID_FLOOR),
                            ev.kid_subsets, ev.kid_subset_size)
    reps = []
    for f, role in ((f_samples, "fake0"), (f_floor, "fake1")):
        pair = fid_mod.KernelPair(f, f_val)
        reps.append(np.array([pair.mmd2(r[role], r["real"]) for r in resamples]))
    _record(metrics, "kid", kid_samples.mean, kid_floor.mean, *reps)
    return {"kernel": "(x.y/2048 + 1)^3", "estimator": "unbiased MMD^2, mean over subsets; "
            "its expectation does not depend on the counts, so the floor is 0 up to noise",
            "subsets": kid_samples.subsets, "subset_size": kid_samples.subset_size,
            "std": sig(kid_samples.std), "subset_size_floor": kid_floor.subset_size,
            "std_floor": sig(kid_floor.std)}


def _c2st_features(params: CanopyParams, f_samples, f_val, f_floor,
                   metrics) -> dict[str, Any]:
    from canopy.evaluate import linear_c2st as lin

    ev, seed = params.evaluate, params.seed
    config = lin.LinearC2stConfig(folds=ev.c2st_folds, l2=ev.c2st_features_l2,
                                  max_images=ev.c2st_max_images)
    result = lin.linear_c2st(f_samples, f_val, config, seed)
    floor = lin.linear_c2st(f_floor, f_val, config, seed)
    _record_mean(metrics, "c2st_features_accuracy", result.correct, floor.correct,
                 seed, 1, ev.bootstrap_replicates)
    return {"definition": "L2-regularised logistic regression on standardised Inception "
                          "features, k-fold cross-validated held-out accuracy; 0.5 = "
                          "indistinguishable", "n_per_class": result.n, "folds": result.folds,
            "l2": config.l2}


def _precision_recall(params: CanopyParams, f_samples, f_val, f_floor,
                      metrics) -> dict[str, Any]:
    from canopy.evaluate import precision_recall as pr

    ev, seed = params.evaluate, params.seed
    k = ev.precision_recall_k
    if min(len(f_samples), len(f_val), len(f_floor)) <= k:
        return {"omitted": f"it needs more than k={k} images per set"}
    result, floor = pr.precision_recall(f_samples, f_val, k), pr.precision_recall(f_floor, f_val, k)
    _record_mean(metrics, "precision", result.generated_inside, floor.generated_inside,
                 seed, 2, ev.bootstrap_replicates)
    _record_mean(metrics, "recall", result.real_inside, floor.real_inside,
                 seed, 3, ev.bootstrap_replicates)
    return {"definition": f"Kynkaanniemi et al. 2019: k-NN balls (k={k}) of each set's "
                          "Inception features; precision = share of samples inside the val "
                          "tiles' balls (realism), recall = share of val tiles inside the "
                          "samples' balls (coverage); higher is better, read against the floor "
                          "(train tiles in the samples' place)", "k": k,
            "interval": "bootstrap of the per-image outcomes, the balls held fixed"}


def _record(metrics: dict[str, float | int], name: str, value: float, floor: float,
            replicates: np.ndarray, replicates_floor: np.ndarray, ratio: bool = False) -> None:
    """`name`, `name_floor` and, with bootstrap replicates, their 95% intervals (`_lo`, `_hi`);
    with `ratio`, also name / floor and its interval, from the paired replicates."""
    metrics[name], metrics[f"{name}_floor"] = sig(value), sig(floor)
    point_ratio = value / floor if floor > 0 else float("nan")
    if ratio:
        metrics[f"{name}_ratio"] = sig(point_ratio)
    if len(replicates) == 0:
        return
    _put_interval(metrics, name, bootstrap.centred_interval(replicates, value))
    _put_interval(metrics, f"{name}_floor", bootstrap.centred_interval(replicates_floor, floor))
    if ratio:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = replicates / replicates_floor
        _put_interval(metrics, f"{name}_ratio", bootstrap.centred_interval(ratios, point_ratio))


def _record_mean(metrics: dict[str, float | int], name: str, outcomes: np.ndarray,
                 outcomes_floor: np.ndarray, seed: int, use: int, replicates: int) -> None:
    """`name` and `name_floor` as the mean of per-image outcomes, with their intervals."""
    metrics[name] = sig(float(np.mean(outcomes)))
    metrics[f"{name}_floor"] = sig(float(np.mean(outcomes_floor)))
    if replicates == 0:
        return
    rng = numpy_rng(seed, Stream.EVAL_BOOTSTRAP, use)
    _put_interval(metrics, name, bootstrap.mean_interval(outcomes, rng, replicates))
    _put_interval(metrics, f"{name}_floor",
                  bootstrap.mean_interval(outcomes_floor, rng, replicates))


def _put_interval(metrics: dict[str, float | int], name: str, interval) -> None:
    metrics[f"{name}_lo"], metrics[f"{name}_hi"] = sig(interval.low), sig(interval.high)


def _trust(min_images: int, n_samples: int, n_real: int,
           metrics: dict[str, float | int]) -> dict[str, Any]:
    """Mark the figures trusted (1) or not (0): with fewer images than `min_images` in either
    compared set, the floors and intervals measured in docs/benchmarks.md were too wide to rank
    two models that differ clearly."""
    smallest = min(n_samples, n_real)
    metrics["trusted"] = int(smallest >= min_images)
    metrics["trust_min_images"] = min_images
    why = (f"too few images to trust these figures: {n_samples} samples and {n_real} val tiles, "
           f"below evaluate.trust_min_images ({min_images}) in the smaller set; read the "
           "intervals (_lo, _hi), or raise sample.n (and the val tiles) and re-run")
    return {"trusted": bool(metrics["trusted"]), "min_images": min_images,
            "why": "" if metrics["trusted"] else why}


def _c2st(params: CanopyParams, samples: np.ndarray, val: np.ndarray, train_floor: np.ndarray,
          sample_paths: list[Path], progress: bool,
          metrics: dict[str, float | int]) -> dict[str, Any]:
    """Add c2st_accuracy, its floor and c2st_n to `metrics`; the details for people."""
    ev = params.evaluate
    if not ev.c2st:
        return {"omitted": "evaluate.c2st is false"}
    smallest = min(len(samples), len(val), len(train_floor))
    if smallest < 2:
        return {"omitted": f"it needs at least 2 images per set (samples {len(samples)}, "
                           f"val {len(val)}, floor train tiles {len(train_floor)})"}
    from canopy.evaluate import c2st as c2st_mod

    config = c2st_mod.C2stConfig(folds=ev.c2st_folds, steps=ev.c2st_steps,
                                 max_images=ev.c2st_max_images)
    folds = min(config.folds, smallest, config.max_images)
    with _bar(progress, 2 * folds * config.steps, "C2ST training") as tick:
        result = c2st_mod.c2st(samples, val, config, params.seed, tick)
        floor = c2st_mod.c2st(train_floor, val, config, params.seed, tick)
    _record_mean(metrics, "c2st_accuracy", result.correct, floor.correct, params.seed, 4,
                 ev.bootstrap_replicates)
    metrics["c2st_n"] = result.n
    return {
        "definition": "classifier two-sample test (Lopez-Paz and Oquab 2017): a small CNN on "
                      "pixels told samples (or, for the floor, train tiles) from val tiles; "
                      "mean held-out accuracy over the folds, 0.5 = indistinguishable",
        "n_per_class": result.n, "folds": result.folds, "steps_per_fold": config.steps,
        "fold_accuracies": [sig(v) for v in result.fold_accuracies],
        "fold_accuracies_floor": [sig(v) for v in floor.fold_accuracies],
        "most_sure_generated": [
            {"sample": sample_paths[i].name, "index": i, "held_out_probability": sig(p)}
            for i, p in zip(result.most_sure_a, result.most_sure_probability)],
    }


def _asked_regions(manifest: dict[str, Any] | None, used: list[Path]) -> list[str | None] | None:
    """The region each used sample was asked for (samples manifest), None for a sample asked
    for none; None when no sample was asked for a region (unconditioned samples)."""
    if manifest is None:
        return None
    by_file = {record.get("file"): (record.get("condition") or {}).get("region")
               for record in manifest.get("images", []) if isinstance(record, dict)}
    asked = [by_file.get(path.name) for path in used]
    return asked if any(isinstance(region, str) for region in asked) else None


def _conditioned(params: CanopyParams, samples: np.ndarray, asked: list[str | None],
                 used_val: list[tiles.TileLocation], val: np.ndarray,
                 train_refs: list[tiles.TileLocation], tile_size: int, progress: bool,
                 metrics: dict[str, float | int], note: Callable[[str], None]) -> dict[str, Any]:
    """condition_accuracy (and floor, ratio), and per region swd_region_<r> (with its floor)
    and c2st_accuracy_region_<r> (evaluate/conditioned.py)."""
    from canopy.evaluate import conditioned as cond_mod

    ev, seed = params.evaluate, params.seed
    train_regions = cond_mod.regions_of(train_refs)
    names = sorted(set(train_regions))
    index = {name: k for k, name in enumerate(names)}
    unknown = sorted({r for r in asked if r is not None and r not in index})
    if unknown:
        raise UserError(f"samples were asked for region {unknown[0]!r}, which no train tile "
                        f"has (regions: {', '.join(names)}): the samples and the tiles are "
                        "of different runs; re-run `canopy sample`")
    keep = np.array([r is not None for r in asked])
    labels = np.array([index[r] if r is not None else -1 for r in asked])
    val_regions = cond_mod.regions_of(used_val)
    val_labels = np.array([index.get(r, -1) for r in val_regions])
    config = cond_mod.ClassifierConfig(steps=ev.condition_steps)
    train_labels = np.array([index[r] for r in train_regions])
    pick = cond_mod._balanced(train_labels, len(names), config.max_per_class,
                              numpy_rng(seed, Stream.EVAL_CONDITION, 0))
    with _bar(progress, len(pick), "read train tiles by region") as tick:
        train = images_io.stack(_ticked(tiles.read_tiles([train_refs[i] for i in pick],
                                                         tile_size), tick), len(pick), tile_size)
    picked_labels = train_labels[pick]
    with _bar(progress, config.steps, "condition classifier") as tick:
        classifier = cond_mod.ConditionClassifier(
            train, picked_labels, len(names),
            cond_mod.ClassifierConfig(steps=config.steps, max_per_class=len(train)), seed, tick)
    known_val = val_labels >= 0
    result = cond_mod.condition_accuracy(classifier, names, samples[keep], labels[keep],
                                         val[known_val], val_labels[known_val])
    metrics["condition_accuracy"] = sig(result.accuracy)
    metrics["condition_accuracy_floor"] = sig(result.floor)
    metrics["condition_accuracy_ratio"] = sig(result.accuracy / result.floor) if result.floor else 0.0
    if ev.bootstrap_replicates:
        rng = numpy_rng(seed, Stream.EVAL_BOOTSTRAP, 5)
        _put_interval(metrics, "condition_accuracy", cond_mod.balanced_interval(
            result.correct, labels[keep], rng, ev.bootstrap_replicates))
        _put_interval(metrics, "condition_accuracy_floor", cond_mod.balanced_interval(
            result.correct_floor, val_labels[known_val], rng, ev.bootstrap_replicates))
    per_region = _per_region(params, names, samples, labels, val, val_labels, train,
                             picked_labels, metrics, note)
    return {
        "definition": "a CNN (evaluate/c2st.py's, one output per region) trained on the train "
                      "tiles by region names each sample's region; condition_accuracy = share "
                      "named as the region asked for, balanced (the mean over regions), its "
                      "floor the same on the val tiles, ratio = accuracy / floor",
        "regions": names, "classifier_steps": config.steps,
        "train_tiles_per_region": {n: int((picked_labels == k).sum()) for k, n in enumerate(names)},
        "accuracy_per_region": {k: sig(v) for k, v in result.per_class.items()},
        "accuracy_per_region_floor": {k: sig(v) for k, v in result.per_class_floor.items()},
        "confusion": {"rows": "region asked for", "columns": "region named", "names": names,
                      "counts": result.confusion},
        "per_region": per_region,
    }


def _per_region(params: CanopyParams, names: list[str], samples: np.ndarray, labels: np.ndarray,
                val: np.ndarray, val_labels: np.ndarray, train: np.ndarray,
                train_labels: np.ndarray, metrics: dict[str, float | int],
                note: Callable[[str], None]) -> dict[str, Any]:
    """SWD (and floor: as many train tiles of the region) and C2ST of each region's samples
    against its val tiles."""
    from canopy.evaluate import c2st as c2st_mod

    ev, seed = params.evaluate, params.seed
    config = swd_mod.SwdConfig(ev.swd_patch_size, ev.swd_patches_per_image, ev.swd_projections,
                               ev.swd_repeats, ev.swd_min_resolution)
    out: dict[str, Any] = {}
    for k, name in enumerate(names):
        mine, real = samples[labels == k], val[val_labels == k]
        floor = train[train_labels == k][: len(mine)]
        if min(len(mine), len(real), len(floor)) < 2:
            out[name] = {"omitted": f"it needs 2 images per set (samples {len(mine)}, val "
                                    f"{len(real)}, train {len(floor)})"}
            continue
        per_level = swd_mod.swd([mine, floor], real, config, seed).per_level
        metrics[f"swd_region_{name}"] = sig(swd_mod.mean_over_levels(per_level[0]))
        metrics[f"swd_region_{name}_floor"] = sig(swd_mod.mean_over_levels(per_level[1]))
        entry: dict[str, Any] = {"n_samples": len(mine), "n_real": len(real)}
        if ev.c2st:
            c2st_config = c2st_mod.C2stConfig(folds=ev.c2st_folds, steps=ev.c2st_steps,
                                              max_images=ev.c2st_max_images)
            result = c2st_mod.c2st(mine, real, c2st_config, seed)
            metrics[f"c2st_accuracy_region_{name}"] = sig(result.accuracy)
            entry["c2st_n"] = result.n
        if min(len(mine), len(real)) < ev.trust_min_images:
            entry["trusted"] = False
        out[name] = entry
    untrusted = [n for n, e in out.items() if e.get("trusted") is False or "omitted" in e]
    if untrusted:
        note(f"per-region figures from few images ({', '.join(untrusted)}): below "
             f"evaluate.trust_min_images ({ev.trust_min_images}); read them as rough")
    return out


def _ticked(items, tick: Callable[[int], None]):
    for item in items:
        yield item
        tick(1)


def _sha_if_file(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _quantiles(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.0, 0.05, 0.5])
    return {"min": sig(q[0]), "p05": sig(q[1]), "median": sig(q[2])}


def _near_copies(dist: np.ndarray, index: np.ndarray, plain: np.ndarray, samples: list[Path],
                 train_refs: list[tiles.TileLocation], threshold: float) -> list[dict[str, Any]]:
    hits = [i for i in np.argsort(dist, kind="stable") if dist[i] < threshold]
    return [{"sample": samples[i].name, "train_tile": train_refs[index[i]].key,
             "distance": sig(dist[i]), "plain": bool(plain[i])}
            for i in hits[:_NEAR_COPIES_LISTED]]
