"""KID and FID by contract: oracles in NumPy, properties on Gaussian features, InceptionV3 mechanics."""

import keras
import numpy as np
import pytest

from diffusion_keras import metrics
from diffusion_keras.errors import UsageError


def gaussian_features(count, shift=0.0, scale=1.0, dimensions=16, seed=0):
    return (np.random.default_rng(seed).standard_normal((count, dimensions)) * scale + shift
            ).astype("float32")


def kid_oracle(x, y):
    """The textbook unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, in float64."""
    x, y = np.float64(x), np.float64(y)
    kxx, kyy, kxy = ((a @ b.T / x.shape[1] + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2.0 * kxy.mean())


def test_kid_matches_the_textbook_estimate():
    x, y = gaussian_features(40), gaussian_features(30, shift=0.5, seed=1)
    assert float(metrics.kernel_inception_distance(x, y)) == pytest.approx(kid_oracle(x, y), rel=1e-4)


def test_kid_of_a_set_against_itself_is_about_zero_and_different_sets_score_higher():
    x = gaussian_features(200)
    same = float(metrics.kernel_inception_distance(x[:100], x[100:]))
    itself = float(metrics.kernel_inception_distance(x, x))
    different = float(metrics.kernel_inception_distance(x[:100], gaussian_features(100, 1.0, seed=2)))
    assert abs(itself) < 0.05 * different and abs(same) < 0.1 * different
    assert different > 0


def test_feature_statistics_in_batches_match_numpy():
    x = gaussian_features(50, shift=2.0, scale=3.0)
    statistics = metrics.FeatureStatistics()
    for start in range(0, 50, 16):
        statistics.update(x[start:start + 16])
    np.testing.assert_allclose(statistics.mean, x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(statistics.covariance, np.cov(x, rowvar=False), rtol=1e-5, atol=1e-5)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mean_1, mean_2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd_1, sd_2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    expected = np.sum((mean_1 - mean_2) ** 2) + np.sum((sd_1 - sd_2) ** 2)
    distance = metrics.frechet_distance(mean_1, np.diag(sd_1**2), mean_2, np.diag(sd_2**2))
    assert distance == pytest.approx(expected, rel=1e-9)


def test_fid_is_symmetric_non_negative_and_larger_between_different_distributions():
    x = gaussian_features(400)
    y = gaussian_features(200, shift=0.5, scale=1.5, seed=3)
    halves = [metrics.FeatureStatistics().update(part) for part in (x[:200], x[200:])]
    other = metrics.FeatureStatistics().update(y)
    assert metrics.fid(halves[0], other) == pytest.approx(metrics.fid(other, halves[0]), rel=1e-6)
    assert metrics.fid(halves[0], halves[0]) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= metrics.fid(*halves) < metrics.fid(halves[0], other)


def test_kid_metric_averages_batches_and_resets():
    extractor = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten()])
    rng = np.random.default_rng(0)
    real, fake = rng.random((2, 10, 8, 8, 3)).astype("float32")
    kid = metrics.KID(extractor=extractor)
    kid.update_state(real, fake)
    kid.update_state(real, real ** 2)
    flat = [images.reshape(10, -1) for images in (real, fake, real ** 2)]
    expected = (kid_oracle(flat[0], flat[1]) + kid_oracle(flat[0], flat[2])) / 2
    assert float(kid.result()) == pytest.approx(expected, rel=1e-3)
    kid.reset_state()
    assert float(kid.result()) == 0.0


@pytest.mark.slow
def test_inception_extractor_with_random_weights_is_seeded_and_takes_tiny_grayscale_images():
    images = np.random.default_rng(0).random((3, 16, 16, 1)).astype("float32")
    first = metrics.inception_extractor(channels=1, image_size=75, weights=None)
    features = first.predict_on_batch(images)
    assert features.shape == (3, 2048) and np.all(np.isfinite(features))
    second = metrics.inception_extractor(channels=1, image_size=75, weights=None)
    np.testing.assert_array_equal(second.predict_on_batch(images), features)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 64, "weights": None}, "at least 75"),
    ({"weights": "/nonexistent/inception.h5"}, "does not exist"),
])
def test_bad_inception_settings_are_rejected(kwargs, message):
    with pytest.raises(UsageError, match=message):
        metrics.inception_extractor(**kwargs)
