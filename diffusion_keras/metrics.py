"""Sample quality: KID and FID on InceptionV3 pool features.

KID (Binkowski et al. 2018) is the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3; it is
unbiased at any sample size, so a few hundred images already rank models. FID (Heusel et al. 2017)
is the Frechet distance between Gaussians fitted to the two feature sets; its statistics are running
sums, so any number of images fits in bounded memory.
"""

import os

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras.config import INCEPTION_SIZE
from diffusion_keras.errors import UsageError

MIN_INCEPTION_SIZE = 75  # the smallest input InceptionV3 accepts


def check_inception_settings(image_size, weights):
    """One line for an InceptionV3 input size or weights file that cannot work."""
    if image_size < MIN_INCEPTION_SIZE:
        raise UsageError(f"inception image size must be at least {MIN_INCEPTION_SIZE} (InceptionV3's "
                         f"smallest input), got {image_size}")
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise UsageError(f"InceptionV3 weights file {weights!r} does not exist; pass the path of "
                         "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")


def inception_extractor(channels=3, image_size=INCEPTION_SIZE, weights="imagenet", seed=0):
    """A keras.Model: images in [0, 1] (any size, 1 or 3 channels) -> 2048 InceptionV3 pool features.

    `weights` is "imagenet" (downloaded once to the Keras cache), a local weights file for the
    no-top model, or None for random weights (seeded, so mechanics and caches are repeatable; the
    numbers are then not comparable with published ones).
    """
    check_inception_settings(image_size, weights)
    if weights is None:
        keras.utils.set_random_seed(seed)
    try:
        inception = keras.applications.InceptionV3(
            include_top=False, pooling="avg", weights=weights,
            input_shape=(image_size, image_size, 3),
        )
    except Exception as error:  # download (URLError, HTTPError, ...) or weight-file errors
        source = "could not be downloaded" if weights == "imagenet" else f"could not be read from {weights!r}"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UsageError(f"InceptionV3 ImageNet weights {source} ({reason}); pass "
                         "--inception-weights PATH to a local no-top .h5 weights file") from error
    images = keras.Input((None, None, channels))
    x = layers.Resizing(image_size, image_size)(images)
    if channels == 1:
        x = layers.Concatenate()([x, x, x])
    x = layers.Rescaling(2.0, offset=-1.0)(x)  # InceptionV3 expects [-1, 1]
    return keras.Model(images, inception(x), name="inception_features")


def kernel_inception_distance(real_features, generated_features):
    """Unbiased MMD^2 between two feature sets (N, d) and (M, d) with the cubic polynomial kernel."""
    real_features = ops.cast(real_features, "float32")
    generated_features = ops.cast(generated_features, "float32")
    dimensions = ops.cast(ops.shape(real_features)[1], "float32")

    def kernel(a, b):
        # (u + 1)^3 - 1 = u (u (u + 3) + 3): the constant cancels in the MMD, and dropping it keeps
        # float32 precision when features are small (randomly initialised networks).
        products = ops.matmul(a, ops.transpose(b)) / dimensions
        return products * (products * (products + 3.0) + 3.0)

    def mean_off_diagonal(features):
        count = ops.cast(ops.shape(features)[0], "float32")
        kernels = kernel(features, features)
        return (ops.sum(kernels) - ops.sum(ops.diagonal(kernels))) / (count * (count - 1.0))

    return (mean_off_diagonal(real_features) + mean_off_diagonal(generated_features)
            - 2.0 * ops.mean(kernel(real_features, generated_features)))


class KID(keras.metrics.Metric):
    """Kernel inception distance averaged over batches: `update_state(real_images, generated_images)`.

    Images are in [0, 1]; `extractor` maps them to features (an `inception_extractor` by default).
    """

    def __init__(self, name="kid", extractor=None, channels=3, image_size=INCEPTION_SIZE,
                 weights="imagenet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.extractor = extractor or inception_extractor(channels, image_size, weights)
        self.kid_tracker = keras.metrics.Mean(name="kid_tracker")

    def update_state(self, real_images, generated_images, sample_weight=None):
        real_features = self.extractor(real_images, training=False)
        generated_features = self.extractor(generated_images, training=False)
        batch_kid = kernel_inception_distance(real_features, generated_features)
        self.kid_tracker.update_state(batch_kid, sample_weight=sample_weight)

    def result(self):
        return self.kid_tracker.result()

    def reset_state(self):
        self.kid_tracker.reset_state()


class FeatureStatistics:
    """Running mean and covariance of features, accumulated batch by batch in float64."""

    def __init__(self, count=0, sums=None, outer_sums=None, covariance_root=None):
        self.count = count
        self.sums = sums
        self.outer_sums = outer_sums
        self._covariance_root = covariance_root

    def update(self, features):
        features = np.asarray(features, dtype=np.float64)
        if self.sums is None:
            self.sums = np.zeros(features.shape[1])
            self.outer_sums = np.zeros((features.shape[1], features.shape[1]))
        self.count += len(features)
        self.sums += features.sum(axis=0)
        self.outer_sums += features.T @ features
        self._covariance_root = None
        return self

    @property
    def mean(self):
        return self.sums / self.count

    @property
    def covariance(self):
        """Unbiased sample covariance."""
        return (self.outer_sums - self.count * np.outer(self.mean, self.mean)) / (self.count - 1)

    @property
    def covariance_root(self):
        """covariance^(1/2), kept: a 2048-wide eigendecomposition takes seconds, and a cached
        reference needs it for every evaluation."""
        if self._covariance_root is None:
            self._covariance_root = _psd_sqrt(self.covariance)
        return self._covariance_root


def _psd_sqrt(matrix):
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean_1, covariance_1, mean_2, covariance_2, root_1=None):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with tr (S1 S2)^(1/2) computed as
    tr (S1^(1/2) S2 S1^(1/2))^(1/2): a symmetric PSD matrix, so `eigh` is exact (no scipy needed).
    `root_1` is S1^(1/2) when already known."""
    root_1 = _psd_sqrt(covariance_1) if root_1 is None else root_1
    middle = root_1 @ covariance_2 @ root_1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    distance = (np.sum((mean_1 - mean_2) ** 2) + np.trace(covariance_1) + np.trace(covariance_2)
                - 2.0 * trace_root)
    return float(max(distance, 0.0))


def fid(statistics_1, statistics_2):
    """FID between two `FeatureStatistics` (put the one whose covariance root is cached first)."""
    return frechet_distance(statistics_1.mean, statistics_1.covariance, statistics_2.mean,
                            statistics_2.covariance, statistics_1.covariance_root)
