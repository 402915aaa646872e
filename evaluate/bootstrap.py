"""Seeded bootstrap intervals: how far a metric computed from these images could move with
another draw of as many images.

Every interval is a bootstrap (Efron and Tibshirani 1993) over images: each replicate draws,
with replacement, as many images as each set holds and recomputes the metric. The interval is
the replicates' spread (2.5th to 97.5th percentile) placed around the estimate by their median:
a resample holds only about 63% distinct images, which inflates distances such as SWD and FID
as a smaller set would, so the replicates' own location is biased and only their spread is
used (for means such as an accuracy the two coincide). The
replicates are paired: replicate r uses the same resampled reference (val) set for the samples'
row and for the floor's row, so the ratio of the two has an interval too.

Where a metric is a mean of per-image outcomes given a fitted model (C2ST accuracy given the
classifiers, precision and recall given the k-NN balls), the outcomes are resampled and the
model is held fixed: cheap, and it leaves out the model's own variation (a narrower interval).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # two-sided: the 2.5th and 97.5th percentiles of the replicates


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def centred_interval(replicates: np.ndarray, estimate: float, level: float = LEVEL) -> Interval:
    """The replicates' central `level` range, moved so that their median sits on `estimate`."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0 or not np.isfinite(estimate):
        return Interval(float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    low, middle, high = np.percentile(values, [tail, 50, 100 - tail])
    return Interval(float(estimate + low - middle), float(estimate + high - middle))


def draws(rng: np.random.Generator, sizes: dict[str, int], replicates: int
          ) -> list[dict[str, np.ndarray]]:
    """For each replicate, resampled indices (with replacement) of each named set."""
    return [{name: rng.integers(0, size, size) for name, size in sizes.items()}
            for _ in range(replicates)]


def mean_interval(outcomes: np.ndarray, rng: np.random.Generator, replicates: int) -> Interval:
    """Interval of the mean of per-item outcomes (booleans or numbers)."""
    values = np.asarray(outcomes, dtype=np.float64)
    picks = rng.integers(0, len(values), (replicates, len(values)))
    return centred_interval(values[picks].mean(axis=1), float(values.mean()))


def replicate(statistic: Callable[[dict[str, np.ndarray]], float],
              resamples: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.array([statistic(pick) for pick in resamples])
