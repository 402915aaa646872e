"""Classifier two-sample test on feature vectors: a cross-validated linear classifier.

The pixel C2ST (c2st.py) trains a small CNN from scratch, which needs many images before it
sees structure (crowns, shadows, branches). Inception's pool features already describe that
structure, so a linear classifier on them tells a set of images from another with few images
(Lopez-Paz and Oquab 2017 use a pretrained network's features the same way).

Here: L2-regularised logistic regression (full batch, L-BFGS, float64, in torch), k-fold
cross-validated with balanced folds; each fold's features are standardised by the training
folds' mean and std. The penalty is fixed, `l2` per feature on standardised features and the
mean loss: with 2048 features and tens of images a weaker penalty memorises the training folds
and a stronger one learns nothing (measured on the demo's tiles, see docs/benchmarks.md).
The held-out accuracy is the mean over all held-out predictions; 0.5 = indistinguishable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from canopy.seeding import Stream, numpy_rng

_PICK_A, _PICK_B, _FOLDS = 10, 11, 12  # indices under Stream.EVAL_C2ST (c2st.py uses 0..3)


@dataclass(frozen=True)
class LinearC2stConfig:
    folds: int = 5
    l2: float = 1.0
    max_images: int = 2000  # per class, a seeded subset when over
    iterations: int = 100  # L-BFGS iterations per fold


@dataclass(frozen=True)
class LinearC2stResult:
    accuracy: float
    n: int  # vectors per class
    folds: int
    correct: np.ndarray  # per held-out prediction (2n), for the bootstrap


def linear_c2st(a: np.ndarray, b: np.ndarray, config: LinearC2stConfig,
                seed: int) -> LinearC2stResult:
    """Held-out accuracy of a linear classifier telling feature rows `a` (label 1) from `b`."""
    n = min(len(a), len(b), config.max_images)
    folds = min(config.folds, n)
    if n < 2 or folds < 2:
        raise ValueError(f"the feature C2ST needs at least 2 vectors per set, got {len(a)} "
                         f"and {len(b)}")
    pick_a = _subset(len(a), n, numpy_rng(seed, Stream.EVAL_C2ST, _PICK_A))
    pick_b = _subset(len(b), n, numpy_rng(seed, Stream.EVAL_C2ST, _PICK_B))
    x = np.concatenate([a[pick_a], b[pick_b]]).astype(np.float64)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    fold_of = np.arange(n) % folds
    numpy_rng(seed, Stream.EVAL_C2ST, _FOLDS).shuffle(fold_of)
    fold_of = np.concatenate([fold_of, fold_of])  # stratified: each fold is balanced
    correct = np.empty(2 * n, dtype=bool)
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        predict = _fit(x[train], y[train], config)
        correct[test] = predict(x[test]) == y[test].astype(bool)
    return LinearC2stResult(float(correct.mean()), n, folds, correct)


def _subset(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if n >= total:
        return np.arange(total)
    return np.sort(rng.choice(total, size=n, replace=False))


def _fit(x: np.ndarray, y: np.ndarray, config: LinearC2stConfig):
    """Logistic regression on standardised x; returns a predictor of the label (bool)."""
    import torch

    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, bias], max_iter=config.iterations,
                                  line_search_fn="strong_wolfe")
    penalty = config.l2 / x.shape[1]

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + bias, yt)
        loss = loss + penalty * (w @ w)
        loss.backward()
        return loss

    optimiser.step(closure)
    weights, offset = w.detach().numpy(), float(bias.detach())

    def predict(rows: np.ndarray) -> np.ndarray:
        return ((rows - mean) / std) @ weights + offset > 0

    return predict
