"""`canopy judge report`: the answers for the current samples -> metrics/judge.json.

Only answers whose samples and tiles manifests both match the current folders count, so an
experiment's metrics never include answers given to another one's images. Rates pool every
answer; the 95% intervals come from resampling judges (not answers) with replacement, since
one judge's answers are not independent of each other (some people are better at this).

    fooling_rate      share of generated images judged real
    real_judged_real  share of real tiles judged real
    accuracy          share of all answers that were right
    hype_error_rate   the HYPE-infinity error rate (Zhou et al. 2019): the mean of the two
                      classes' error rates, (fooling_rate + 1 - real_judged_real) / 2; 0.5
                      means people cannot tell the classes apart, 0 that they always can
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canopy.errors import UserError
from canopy.fsutil import atomic_write_bytes, atomic_write_text, details_path
from canopy.imaging import contact_sheet
from canopy.judge import images
from canopy.judge.catalog import GENERATED, REAL, Experiment, experiment_of
from canopy.judge.db import Answer, AnswersDB
from canopy.seeding import Stream, numpy_rng

INTERVAL = (2.5, 97.5)  # percentiles of the bootstrap distribution: a 95% interval
_LISTED = 50  # images listed per ranking in the details
_BOOTSTRAP_CHUNK = 256  # resamples drawn at a time (bounds memory with many judges)

# Columns of the per-judge count table.
GEN_SHOWN, GEN_JUDGED_REAL, REAL_SHOWN, REAL_JUDGED_REAL = range(4)


@dataclass
class ReportResult:
    metrics: dict[str, float | int]
    details: dict[str, Any]
    out: Path
    details_out: Path
    grid_out: Path | None
    notes: list[str]


def grid_path(out: Path) -> Path:
    """metrics/judge.json -> metrics/judge_fooled.png."""
    return out.with_name(f"{out.stem}_fooled.png")


def sig(value: float, digits: int = 6) -> float:
    """Round to `digits` significant digits, so float noise never changes the JSON bytes."""
    return float(f"{value:.{digits}g}")


def run_report(db_path: Path, samples_dir: Path, tiles_dir: Path, out: Path, seed: int,
               resamples: int, grid_images: int) -> ReportResult:
    db = AnswersDB.checked(db_path, must_exist=True)
    experiment = experiment_of(samples_dir, tiles_dir)
    answers = db.answers(experiment)
    if not answers:
        raise UserError(_no_answers_message(db, experiment, samples_dir))
    _, counts = judge_counts(answers)
    rng = numpy_rng(seed, Stream.JUDGE_BOOTSTRAP)
    intervals = bootstrap_intervals(counts, resamples, rng)
    metrics, notes = flat_metrics(counts, intervals)
    fooled = generated_ranking(answers)
    grid_out = grid_path(out) if fooled else None
    details = {
        "experiment": {"samples": str(samples_dir), "tiles": str(tiles_dir),
                       "samples_manifest_sha256": experiment.samples_sha256,
                       "tiles_manifest_sha256": experiment.tiles_sha256, "db": str(db_path),
                       "other_experiments_in_db": sum(other != experiment
                                                      for other in db.experiments())},
        "definitions": DEFINITIONS,
        "bootstrap": {"over": "judges", "resamples": resamples, "seed": seed,
                      "interval": "95% percentile interval"},
        "judges": [_judge_row(number, row) for number, row in enumerate(counts, start=1)],
        "response_ms": _response_times(answers),
        "most_fooling_generated": fooled[:_LISTED],
        "most_fooling_grid": None if grid_out is None else {
            "file": grid_out.name, "images": [row["sample"] for row in fooled[:grid_images]],
            "order": "row by row, most often judged real first"},
        "real_most_often_called_generated": real_ranking(answers)[:_LISTED],
        "notes": notes,
    }
    if grid_out is not None:
        sample_files = images.samples(samples_dir)
        tile = images.tile_size(tiles_dir)
        chosen = [images.read_sample(sample_files[row["index"]], tile)
                  for row in fooled[:grid_images]]
        atomic_write_bytes(grid_out, _png(contact_sheet(chosen)))
    else:
        notes.append("no generated image was judged real yet: no grid written")
    details_out = details_path(out)
    atomic_write_text(details_out, json.dumps(details, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return ReportResult(metrics, details, out, details_out, grid_out, notes)


def _no_answers_message(db: AnswersDB, experiment: Experiment, samples_dir: Path) -> str:
    others = len(db.experiments())
    elsewhere = (f"; {db.path} holds answers for {others} other experiment(s) only"
                 if others else "")
    return (f"no answers for the samples in {samples_dir} (manifest sha256 "
            f"{experiment.samples_sha256[:12]}...) and these tiles{elsewhere}: collect some "
            "with `canopy judge serve` first")


# --- the statistics ------------------------------------------------------------------------


def judge_counts(answers: Sequence[Answer]) -> tuple[list[str], np.ndarray]:
    """The judges in the order of their first answer, and a (judges, 4) table of counts:
    generated shown, generated judged real, real shown, real judged real."""
    order: dict[str, int] = {}
    counts: list[list[int]] = []
    for answer in answers:
        if answer.judge not in order:
            order[answer.judge] = len(counts)
            counts.append([0, 0, 0, 0])
        row = counts[order[answer.judge]]
        said_real = answer.answer == REAL
        if answer.identity.truth == GENERATED:
            row[GEN_SHOWN] += 1
            row[GEN_JUDGED_REAL] += said_real
        else:
            row[REAL_SHOWN] += 1
            row[REAL_JUDGED_REAL] += said_real
    return list(order), np.array(counts, dtype=np.int64).reshape(-1, 4)


def rates(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled rates from summed counts (..., 4); NaN where a class has no answers."""
    totals = totals.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        fooling = totals[..., GEN_JUDGED_REAL] / totals[..., GEN_SHOWN]
        real_real = totals[..., REAL_JUDGED_REAL] / totals[..., REAL_SHOWN]
        right = (totals[..., GEN_SHOWN] - totals[..., GEN_JUDGED_REAL]
                 + totals[..., REAL_JUDGED_REAL])
        accuracy = right / (totals[..., GEN_SHOWN] + totals[..., REAL_SHOWN])
    return {"fooling_rate": fooling, "real_judged_real": real_real, "accuracy": accuracy,
            "hype_error_rate": (fooling + 1.0 - real_real) / 2.0}


WITH_INTERVALS = ("fooling_rate", "real_judged_real", "hype_error_rate")


def bootstrap_intervals(counts: np.ndarray, resamples: int, rng: np.random.Generator
                        ) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of the rates over judges resampled with replacement."""
    n_judges = len(counts)
    draws: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        picks = rng.integers(0, n_judges, size=(min(_BOOTSTRAP_CHUNK, resamples - start),
                                                n_judges))
        for name, values in rates(counts[picks].sum(axis=1)).items():
            draws[name].append(values)
    intervals = {}
    for name in WITH_INTERVALS:
        values = np.concatenate(draws[name])
        values = values[~np.isnan(values)]  # resamples without any answer of a class
        if len(values):
            low, high = np.percentile(values, INTERVAL)
            intervals[name] = (float(low), float(high))
    return intervals


def flat_metrics(counts: np.ndarray, intervals: dict[str, tuple[float, float]]
                 ) -> tuple[dict[str, float | int], list[str]]:
    totals = counts.sum(axis=0)
    metrics: dict[str, float | int] = {}
    notes = []
    for name, value in rates(totals).items():
        if np.isnan(value):
            notes.append(f"{name} left out: no answers for one of the classes yet")
            continue
        metrics[name] = sig(float(value))
        if name in intervals:
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = map(sig, intervals[name])
    metrics.update({
        "n_answers": int(totals[GEN_SHOWN] + totals[REAL_SHOWN]),
        "n_generated_answers": int(totals[GEN_SHOWN]),
        "n_real_answers": int(totals[REAL_SHOWN]),
        "n_judges": len(counts),
    })
    return metrics, notes


DEFINITIONS = {
    "fooling_rate": "share of generated images judged real",
    "real_judged_real": "share of real val tiles judged real",
    "accuracy": "share of all answers that were right",
    "hype_error_rate": "HYPE-infinity error rate (Zhou et al. 2019): mean of the two classes' "
                       "error rates, (fooling_rate + 1 - real_judged_real) / 2; 0.5 = people "
                       "cannot tell generated from real",
    "*_ci_low, *_ci_high": "95% bootstrap interval, judges resampled with replacement",
}


# --- the rankings --------------------------------------------------------------------------


def generated_ranking(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """The generated images judged real at least once, most fooling first."""
    shown, fooled = _tally(answers, GENERATED, said=REAL)
    rows = [{"sample": f"{index:06d}.png", "index": index, "shown": shown[index],
             "judged_real": fooled[index], "share": sig(fooled[index] / shown[index])}
            for index in shown if fooled[index]]
    rows.sort(key=lambda row: (-row["share"], -row["judged_real"], row["index"]))
    return rows


def real_ranking(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    """The real tiles judged generated at least once, most often first."""
    shown, doubted = _tally(answers, REAL, said=GENERATED)
    rows = [{"split": "val", "key": key, "shown": shown[key], "judged_generated": doubted[key],
             "share": sig(doubted[key] / shown[key])} for key in shown if doubted[key]]
    rows.sort(key=lambda row: (-row["share"], -row["judged_generated"], row["key"]))
    return rows


def _tally(answers: Sequence[Answer], truth: str, said: str) -> tuple[dict, dict]:
    shown: dict[Any, int] = defaultdict(int)
    hits: dict[Any, int] = defaultdict(int)
    for answer in answers:
        if answer.identity.truth != truth:
            continue
        name = answer.identity.sample_index if truth == GENERATED else answer.identity.tile_key
        shown[name] += 1
        hits[name] += answer.answer == said
    return shown, hits


def _judge_row(number: int, row: np.ndarray) -> dict[str, Any]:
    # Judges by number only: their ids are the secrets in their cookies.
    return {"judge": number, "generated_shown": int(row[GEN_SHOWN]),
            "generated_judged_real": int(row[GEN_JUDGED_REAL]),
            "real_shown": int(row[REAL_SHOWN]), "real_judged_real": int(row[REAL_JUDGED_REAL])}


def _response_times(answers: Sequence[Answer]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for truth in (REAL, GENERATED):
        times = np.array([a.response_ms for a in answers if a.identity.truth == truth])
        if len(times):
            p10, median, p90 = np.percentile(times, [10, 50, 90])
            summary[truth] = {"median": sig(median), "p10": sig(p10), "p90": sig(p90)}
    return summary


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()

