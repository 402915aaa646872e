"""Metrics of conditioned samples, per class of the model's class condition (`region`):

  - `condition_accuracy`: a small CNN classifier is trained on the real train tiles by class,
    then asked the class of each generated image: the share it names as the class the image
    was asked for (balanced: the mean over classes of each class's share). Its accuracy on the real val tiles is `condition_accuracy_floor`, the best
    a model can be credited with (a classifier that confuses two sites confuses their samples
    too); `condition_accuracy_ratio` = accuracy / floor (the issue's target: >= 0.8);
  - per class c: `swd_region_<c>` and `c2st_accuracy_region_<c>` of the samples asked for c
    against the val tiles of c, with the same code as the unconditional metrics.

The classifier is the C2ST's network (evaluate/c2st.py) with one output per class, trained on
a class-balanced stream of the train tiles (each batch flipped / rotated at random) for a
fixed number of steps; deterministic from the seed (Stream.EVAL_CONDITION), on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from canopy import conditions, tiles
from canopy.evaluate import c2st as c2st_mod
from canopy.seeding import Stream, numpy_rng, torch_seed

# Indices under Stream.EVAL_CONDITION
_PICK, _TORCH = 0, 1


@dataclass(frozen=True)
class ClassifierConfig:
    steps: int = 400  # optimiser steps, whatever the number of tiles
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_per_class: int = 2000  # train tiles per class, a seeded subset when over


def _network(classes: int, mean, std):
    """evaluate/c2st.py's CNN with `classes` outputs (its input standardised the same way)."""
    import torch.nn as nn

    net = c2st_mod._network(mean, std)
    net[-1] = nn.Linear(64, classes)
    return net


class ConditionClassifier:
    """Names the class of uint8 (N, H, W, 3) images; trained on labelled real tiles."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: int,
                 config: ClassifierConfig, seed: int,
                 tick: Callable[[int], None] = lambda n: None) -> None:
        import torch

        pick = _balanced(labels, classes, config.max_per_class,
                         numpy_rng(seed, Stream.EVAL_CONDITION, _PICK))
        x = torch.from_numpy(images[pick])
        y = torch.from_numpy(labels[pick].astype(np.int64))
        self.classes = classes
        self.config = config
        with c2st_mod._deterministic_cpu():
            generator = torch.Generator().manual_seed(
                torch_seed(seed, Stream.EVAL_CONDITION, _TORCH))
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            rows = torch.arange(len(x))
            self.net = _network(classes, *c2st_mod._channel_stats(x, rows))
            optimiser = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
            loss_fn = torch.nn.CrossEntropyLoss()
            self.net.train()
            for batch in c2st_mod._batches(rows, config.batch_size, config.steps, generator):
                inputs = c2st_mod._augment(c2st_mod._as_input(x[batch]), generator)
                loss = loss_fn(self.net(inputs), y[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                tick(1)
        self.net.eval()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The class index the classifier names for each image."""
        import torch

        out = []
        with c2st_mod._deterministic_cpu(), torch.inference_mode():
            for start in range(0, len(images), 256):
                batch = torch.from_numpy(images[start:start + 256])
                out.append(self.net(c2st_mod._as_input(batch)).argmax(dim=1).numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def regions_of(locations: Sequence[tiles.TileLocation]) -> list[str | None]:
    """Each tile's region, from its metadata (canopy/conditions.py)."""
    return [v["region"] for v in conditions.tiles_values(tiles.read_metadata(locations))]


def _balanced(labels: np.ndarray, classes: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `cap` rows of each class (a seeded subset when over), sorted."""
    picks = []
    for c in range(classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        picks.append(rows)
    return np.sort(np.concatenate(picks))


@dataclass(frozen=True)
class ConditionAccuracy:
    # Balanced accuracies, the mean over classes of each class's share named right: the
    # samples are an equal share per class, the val tiles may not be (a site of one large
    # orthophoto has many), and both must weigh the classes alike.
    accuracy: float  # on the samples, against the class each was asked for
    floor: float  # on the real val tiles
    per_class: dict[str, float]  # samples of each class
    per_class_floor: dict[str, float]
    confusion: list[list[int]]  # samples: rows asked-for class, columns named class
    correct: np.ndarray  # per sample, for the bootstrap
    correct_floor: np.ndarray


def condition_accuracy(classifier: ConditionClassifier, names: Sequence[str],
                       samples: np.ndarray, asked: np.ndarray, val: np.ndarray,
                       val_labels: np.ndarray) -> ConditionAccuracy:
    """The classifier's accuracy on the samples (label: the class asked for) and on the val
    tiles (their own class)."""
    named, named_val = classifier.predict(samples), classifier.predict(val)
    correct, correct_val = named == asked, named_val == val_labels
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (asked, named), 1)

    def by_class(hits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {name: float(hits[labels == c].mean())
                for c, name in enumerate(names) if (labels == c).any()}

    per_class, per_class_val = by_class(correct, asked), by_class(correct_val, val_labels)
    return ConditionAccuracy(float(np.mean(list(per_class.values()))),
                             float(np.mean(list(per_class_val.values()))),
                             per_class, per_class_val, confusion.tolist(), correct, correct_val)


def balanced_interval(correct: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                      replicates: int):
    """The 95% bootstrap interval of the balanced accuracy: each class's outcomes resampled
    within the class (its count kept), then the mean over classes."""
    from canopy.evaluate import bootstrap

    classes = [correct[labels == c].astype(np.float64) for c in np.unique(labels)]
    estimate = float(np.mean([hits.mean() for hits in classes]))
    values = np.zeros(replicates)
    for hits in classes:
        picks = rng.integers(0, len(hits), (replicates, len(hits)))
        values += hits[picks].mean(axis=1) / len(classes)
    return bootstrap.centred_interval(values, estimate)
