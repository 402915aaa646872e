"""Classifier two-sample test (C2ST) on pixels: can a small CNN tell two image sets apart?

Lopez-Paz and Oquab 2017, "Revisiting Classifier Two-Sample Tests" (ICLR): train a classifier
to separate set A from set B and score it on images it did not train on. Held-out accuracy
near 0.5 means the classifier found nothing that separates them; near 1.0 means they are told
apart trivially. Pixels, not Inception features, so it sees what overhead imagery shows and an
ImageNet network may ignore: pixel noise, blur, colour casts, texture.

Here:
  - balanced: n = min(len(A), len(B), max_images) images of each, a seeded subset of each;
  - k-fold cross-validated: each class is split into k folds (so every fold is balanced); for
    each fold a fresh network is trained on the other k-1 folds for a fixed number of optimiser
    steps, whatever the set size (a fixed number of epochs gives 100 images a handful of steps,
    too few to learn anything, and 4000 images far more than needed), and scored on the
    held-out fold; the accuracy is the mean over the folds. Every image is
    held out exactly once, so each has one held-out probability of being from A;
  - the network: a stride-4 4x4 "patchify" convolution (it sees every pixel, yet keeps the
    cost of 128 px tiles small; its input standardised per channel by the training folds), two stride-2 3x3 convolutions, global average pooling and a
    linear layer; the input is uint8 scaled to [-1, 1]; each batch is flipped / rotated by a
    random one of the 8 dihedral transforms (overhead imagery has no "up");
  - deterministic from `seed`: subsets, folds, initialisation, batch order and augmentation all
    come from (seed, Stream.EVAL_C2ST, ...), on the CPU with deterministic algorithms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from canopy.seeding import Stream, numpy_rng, torch_seed

# Indices under Stream.EVAL_C2ST. The floor calls c2st() with the same seed, so it sees the same
# val subset, folds and initial weights as the samples do: only set A differs.
_PICK_A, _PICK_B, _FOLDS, _TORCH = 0, 1, 2, 3


@dataclass(frozen=True)
class C2stConfig:
    folds: int = 5
    steps: int = 150  # optimiser steps per fold, whatever the number of images
    max_images: int = 2000  # per class
    batch_size: int = 32
    learning_rate: float = 2e-3
    most_sure: int = 16  # how many of A's images to list, most surely told apart first


@dataclass(frozen=True)
class C2stResult:
    accuracy: float  # mean held-out accuracy over the folds
    n: int  # images per class
    folds: int
    fold_accuracies: list[float]
    correct: np.ndarray  # per held-out prediction (2n: A's images, then B's), for the bootstrap
    picked_a: np.ndarray  # indices into A of the n images used
    most_sure_a: list[int]  # indices into A, highest held-out probability of A first
    most_sure_probability: list[float]


def c2st(a: np.ndarray, b: np.ndarray, config: C2stConfig, seed: int,
         tick: Callable[[int], None] = lambda n: None) -> C2stResult:
    """C2ST between uint8 image sets a and b (N, H, W, 3), a labelled 1 and b labelled 0."""
    n = min(len(a), len(b), config.max_images)
    if n < 2:
        raise ValueError(f"C2ST needs at least 2 images per set, got {len(a)} and {len(b)}")
    pick_a = _subset(len(a), n, numpy_rng(seed, Stream.EVAL_C2ST, _PICK_A))
    pick_b = _subset(len(b), n, numpy_rng(seed, Stream.EVAL_C2ST, _PICK_B))
    folds = min(config.folds, n)
    fold_of = _fold_labels(n, folds, numpy_rng(seed, Stream.EVAL_C2ST, _FOLDS))

    import torch

    images = torch.from_numpy(np.concatenate([a[pick_a], b[pick_b]]))  # uint8 (2n, H, W, 3)
    labels = torch.cat([torch.ones(n), torch.zeros(n)])
    fold_of_both = np.concatenate([fold_of, fold_of])  # stratified: each fold is balanced
    held_out_p = np.empty(2 * n)
    fold_accuracies = []
    correct_all = np.empty(2 * n, dtype=bool)
    with _deterministic_cpu():
        generator = torch.Generator().manual_seed(torch_seed(seed, Stream.EVAL_C2ST, _TORCH))
        for fold in range(folds):
            train = torch.from_numpy(np.flatnonzero(fold_of_both != fold))
            test = np.flatnonzero(fold_of_both == fold)
            net = _train(images, labels, train, config, generator, tick)
            held_out_p[test] = _predict(net, images[torch.from_numpy(test)], config.batch_size)
            correct = (held_out_p[test] > 0.5) == labels[test].numpy().astype(bool)
            correct_all[test] = correct
            fold_accuracies.append(float(correct.mean()))
    order = np.argsort(-held_out_p[:n], kind="stable")[: config.most_sure]
    return C2stResult(accuracy=float(np.mean(fold_accuracies)), n=n, folds=folds,
                      fold_accuracies=fold_accuracies, correct=correct_all, picked_a=pick_a,
                      most_sure_a=[int(pick_a[i]) for i in order],
                      most_sure_probability=[float(held_out_p[i]) for i in order])


def _subset(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n of range(total), sorted; all of them, in order, when n == total."""
    if n >= total:
        return np.arange(total)
    return np.sort(rng.choice(total, size=n, replace=False))


def _fold_labels(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number 0..folds-1 for each of n images, sizes differing by at most one."""
    labels = np.arange(n) % folds
    rng.shuffle(labels)
    return labels


@contextmanager
def _deterministic_cpu() -> Iterator[None]:
    """Deterministic kernels while the test runs, and the global torch seed (set per fold for
    the initial weights) forked: the caller's setting and random state are restored after."""
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(was)


def _network(mean, std):
    """The CNN, its input standardised per channel by the training folds' statistics: forest
    pixels span a narrow range of [-1, 1], and unscaled inputs make the few epochs learn
    little. A fixed affine (no BatchNorm) keeps training and held-out scoring the same."""
    import torch
    import torch.nn as nn

    stem = nn.Conv2d(3, 16, kernel_size=4, stride=4)
    with torch.no_grad():  # fold (x - mean) / std into the first layer's weights and bias
        stem.bias -= (stem.weight * (mean / std).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
        stem.weight /= std.view(1, 3, 1, 1)
    return nn.Sequential(
        stem, nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
    )


def _channel_stats(images, rows):
    """Per-channel mean and std, in [-1, 1] units, of images[rows] (at most 256 of them)."""
    x = _as_input(images[rows[:: max(1, len(rows) // 256)]])
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-3)


def _as_input(batch):
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return batch.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _augment(x, generator):
    """One random dihedral transform (flip, then 0-3 quarter turns) for the whole batch."""
    import torch

    choice = int(torch.randint(0, 8, (1,), generator=generator))
    if choice >= 4:
        x = x.flip(3)
    return torch.rot90(x, choice % 4, dims=(2, 3))


def _train(images, labels, train, config: C2stConfig, generator, tick):
    import torch

    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))  # init weights
    net = _network(*_channel_stats(images, train))
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for batch in _batches(train, config.batch_size, config.steps, generator):
        x = _augment(_as_input(images[batch]), generator)
        loss = loss_fn(net(x).squeeze(1), labels[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        tick(1)
    return net


def _batches(train, batch_size: int, steps: int, generator):
    """`steps` batches of training rows: passes over a fresh permutation each time, a batch
    never straddling two passes (so every batch is balanced in expectation)."""
    import torch

    size = min(batch_size, len(train))
    done = 0
    while done < steps:
        order = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(order) - size + 1, size):
            yield order[start:start + size]
            done += 1
            if done == steps:
                return


def _predict(net, images, batch_size: int) -> np.ndarray:
    """Probability of set A for each image (evaluation mode: BatchNorm's running statistics)."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = net(_as_input(images[start:start + batch_size])).squeeze(1)
            out.append(torch.sigmoid(logits).double().numpy())
    return np.concatenate(out)
