"""FID and KID from Inception-v3 pool features (pure numpy, float64; features: inception.py).

FID, Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (NeurIPS): fit a Gaussian to each set's 2048-d features (mean mu, covariance S
with the unbiased 1/(n-1) normalisation, as the TTUR and pytorch-fid code) and report the
Frechet (2-Wasserstein) distance between the two Gaussians

    FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

Tr (S_a S_b)^(1/2) is computed without a general matrix square root (no scipy.linalg.sqrtm),
in one of two exact ways:
  - fewer images than dimensions (the usual case: n <= 2048): with the centred features
    scaled as A = (X_a - mu_a) / sqrt(n_a - 1), S_a = A^T A, and the non-zero eigenvalues of
    S_a S_b = A^T (A B^T B) are those of (A B^T)(A B^T)^T, so Tr (S_a S_b)^(1/2) is the sum
    of the singular values of the small n_a x n_b matrix A B^T (its nuclear norm);
  - otherwise: S_a S_b is similar to the symmetric PSD matrix M = S_a^(1/2) S_b S_a^(1/2), so
    the trace is sum_i sqrt(lambda_i(M)), by eigh, round-off negatives clipped to 0.
Both are stable when the covariances are singular. Units: squared feature units; 0
for identical sets. FID is biased upwards with small n (the bias falls roughly as 1/n), so
only compare values computed from the same numbers of images.

KID, Binkowski et al. 2018, "Demystifying MMD GANs" (ICLR): the squared maximum mean
discrepancy with the polynomial kernel k(x, y) = (x.y / d + 1)^3 (d = 2048), estimated without
bias on random subsets of m images from each set:

    MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(a_i, a_j) + 1/(m(m-1)) sum_{i!=j} k(b_i, b_j)
              - 2/m^2 sum_{i,j} k(a_i, b_j),

averaged over `subsets` draws (std reported beside it), as the authors' code and
torch-fidelity do (100 subsets of 1000; m is capped at the smaller set). Unbiased means it can
come out slightly negative for sets from one distribution: that is kept, never clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Gaussian:
    mean: np.ndarray  # (d,)
    cov: np.ndarray  # (d, d)
    n: int

    @classmethod
    def fit(cls, features: np.ndarray) -> Gaussian:
        features = np.asarray(features, dtype=np.float64)
        if len(features) < 2:
            raise ValueError("a covariance needs at least 2 feature vectors")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr (S_a S_b)^(1/2)."""
    root_a = _sqrt_psd(a.cov)
    middle = root_a @ b.cov @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of feature vectors (rows)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    if max(len(a), len(b)) > a.shape[1]:
        return frechet_distance(Gaussian.fit(a), Gaussian.fit(b))
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    scaled_a = (a - mean_a) / np.sqrt(len(a) - 1)  # S_a = scaled_a^T scaled_a
    scaled_b = (b - mean_b) / np.sqrt(len(b) - 1)
    trace_sqrt = float(np.sum(np.linalg.svd(scaled_a @ scaled_b.T, compute_uv=False)))
    diff = mean_a - mean_b
    return float(diff @ diff + np.sum(scaled_a**2) + np.sum(scaled_b**2) - 2.0 * trace_sqrt)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel, for all pairs of rows."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 between two sets of m feature vectors each."""
    if len(a) < 2 or len(b) != len(a):
        raise ValueError("the unbiased MMD^2 needs two sets of the same size m >= 2")
    return _mmd2_from_kernels(polynomial_kernel(a, a), polynomial_kernel(b, b),
                              polynomial_kernel(a, b))


def _mmd2_from_kernels(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray) -> float:
    m = len(k_aa)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2.0 * k_ab.sum() / (m * m))


@dataclass(frozen=True)
class Kid:
    mean: float
    std: float
    subset_size: int
    subsets: int


_PRECOMPUTE_MAX = 8192  # up to this many images in all, the full kernel matrices are kept


def kid(features_a: np.ndarray, features_b: np.ndarray, rng: np.random.Generator,
        subsets: int = 100, subset_size: int = 1000) -> Kid:
    """KID: the mean (and std) of MMD^2_u over `subsets` random subsets of m images from each
    set, drawn without replacement within a subset; m = min(subset_size, n_a, n_b).

    For sets of a few thousand images the kernel matrices are computed once and each subset
    reads its blocks (the same numbers, much faster than recomputing them per subset)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 images in each set")
    full = len(a) + len(b) <= _PRECOMPUTE_MAX
    if full:
        k_aa, k_bb, k_ab = (polynomial_kernel(a, a), polynomial_kernel(b, b),
                            polynomial_kernel(a, b))
    values = []
    for _ in range(subsets):
        ia = rng.choice(len(a), m, replace=False)
        ib = rng.choice(len(b), m, replace=False)
        if full:
            values.append(_mmd2_from_kernels(k_aa[np.ix_(ia, ia)], k_bb[np.ix_(ib, ib)],
                                             k_ab[np.ix_(ia, ib)]))
        else:
            values.append(mmd2_unbiased(a[ia], b[ib]))
    return Kid(float(np.mean(values)), float(np.std(values)), m, subsets)


def fid_replicates(features_a: np.ndarray, features_b: np.ndarray,
                   picks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """FID recomputed on resampled rows of each set: one value per (rows of a, rows of b)."""
    return np.array([fid(features_a[ia], features_b[ib]) for ia, ib in picks])


def fid_infinity(features_a: np.ndarray, features_b: np.ndarray, rng: np.random.Generator,
                 points: int = 5) -> float:
    """FID extrapolated to infinitely many images of set a (Chong and Forsyth 2020, "Effectively
    Unbiased FID and Inception Score and where to find them", CVPR): FID's bias falls as 1/n,
    so FID of random subsets of a at `points` sizes from n/4 to n is fitted by a + b/n and
    `a` reported. Set b (the reference) is kept whole: its own bias remains, as it does in the
    floor computed the same way, so compare fid_inf with fid_inf_floor."""
    a = np.asarray(features_a, dtype=np.float64)
    n = len(a)
    sizes = np.unique(np.linspace(max(2, n // 4), n, points).astype(int))
    if len(sizes) < 2:
        return fid(a, features_b)
    values = [fid(a[rng.choice(n, size, replace=False)], features_b) for size in sizes]
    _slope, intercept = np.polyfit(1.0 / sizes, values, 1)
    return float(intercept)


class KernelPair:
    """The KID kernel matrices of a set against a reference, computed once, for bootstrap
    replicates of the unbiased MMD^2 over whole resampled sets."""

    def __init__(self, features_a: np.ndarray, features_b: np.ndarray):
        a = np.asarray(features_a, dtype=np.float64)
        b = np.asarray(features_b, dtype=np.float64)
        self.k_aa, self.k_ab = polynomial_kernel(a, a), polynomial_kernel(a, b)
        self.k_bb = polynomial_kernel(b, b)

    def mmd2(self, ia: np.ndarray, ib: np.ndarray) -> float:
        """Unbiased MMD^2 of rows ia of a against rows ib of b (drawn with replacement): pairs
        of one image with itself are left out of the within-set means, as the diagonal is in
        the plain estimator, so duplicates add no bias."""
        return (_within(self.k_aa, ia) + _within(self.k_bb, ib)
                - 2.0 * float(self.k_ab[np.ix_(ia, ib)].mean()))


def _within(kernel: np.ndarray, rows: np.ndarray) -> float:
    block = kernel[np.ix_(rows, rows)]
    distinct = rows[:, None] != rows[None, :]
    return float(block[distinct].mean()) if distinct.any() else 0.0
