"""Precision and recall of a generated set against a real one, on Inception pool features.

Kynkaanniemi, Karras, Laine, Lehtinen, Aila 2019, "Improved Precision and Recall Metric for
Assessing Generative Models" (NeurIPS); reference code: kynkaat/improved-precision-and-recall-
metric. Each set's manifold is the union of balls around its feature vectors, each ball's radius
the distance to that vector's k-th nearest neighbour in its own set (k = 3, the paper's choice):

    precision = fraction of generated vectors inside the real manifold   (realism)
    recall    = fraction of real vectors inside the generated manifold   (coverage)

Both are 0..1, higher is better; unlike FID they tell "every image is a bit wrong" (precision
low) from "a few kinds of image are missing" (recall low). They depend on the set sizes (the
radii shrink as a set grows), so read them against the real-vs-real value at the same counts.

Distances are Euclidean, computed from |x|^2 + |y|^2 - 2 x.y in float64 blocks, so a few
thousand vectors need no more than a few hundred MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K = 3  # the paper's neighbourhood size
_BLOCK = 1024  # rows of the distance matrix held at a time


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    # Per image, for the bootstrap: is each generated (real) vector inside the other manifold?
    generated_inside: np.ndarray
    real_inside: np.ndarray


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(out, 0.0)


def knn_radii(features: np.ndarray, k: int = K) -> np.ndarray:
    """Squared distance from each vector to its k-th nearest neighbour in the same set (itself
    excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} vectors per set, "
                         f"got {len(features)}")
    radii = np.empty(len(features))
    for start in range(0, len(features), _BLOCK):
        d = _squared_distances(features[start:start + _BLOCK], features)
        # Column 0 of the partition is the vector itself (distance 0), so take index k.
        radii[start:start + _BLOCK] = np.partition(d, k, axis=1)[:, k]
    return radii


def inside(queries: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each query, whether it lies within some manifold vector's k-NN ball."""
    out = np.empty(len(queries), dtype=bool)
    for start in range(0, len(queries), _BLOCK):
        d = _squared_distances(queries[start:start + _BLOCK], manifold)
        out[start:start + _BLOCK] = (d <= radii[None, :]).any(axis=1)
    return out


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = K) -> PrecisionRecall:
    """Precision and recall of `generated` against `real` (feature vectors as rows)."""
    gen = np.asarray(generated, dtype=np.float64)
    ref = np.asarray(real, dtype=np.float64)
    gen_in = inside(gen, ref, knn_radii(ref, k))
    real_in = inside(ref, gen, knn_radii(gen, k))
    return PrecisionRecall(float(gen_in.mean()), float(real_in.mean()), gen_in, real_in)
