"""The memorisation check: which generated images are near-copies of training images.

A model that learnt a small folder by heart generates its images back; FD does not say so (copies of
the training set score well). Each sample's nearest training images are found in pixels (root mean
square difference of [0, 1] pixels) and, where a feature extractor is given, in its features. A
sample is a near-copy when its nearest training image is much closer than the second nearest:
pixel distance under NEAR_COPY_RATIO of it: a simpler form of the relative distance of Carlini et
al. 2023's extraction study of CIFAR-10 diffusion models (which divides by the mean distance to the
nearest 50). A ratio, not a fixed threshold, because it needs no calibration per dataset: a
typical new image lies about as far from its first as from its second neighbour, a copy lies next
to one training image only. (Two near-identical training images hide each other's copies from it.)
"""

from typing import NamedTuple

import numpy as np

from diffusion_keras.config import SUGGESTED_AUGMENT
from diffusion_keras.data import preprocess
from diffusion_keras.errors import UsageError

NEAR_COPY_RATIO = 1 / 3
RULE = "nearest training image closer than 1/3 of the second nearest (pixels)"
CHUNK = 2048  # reference images compared at once (bounds the memory of the distance matrix)


class Neighbours(NamedTuple):
    """Each query's nearest references, nearest first: indices and distances (queries, k)."""
    indices: np.ndarray
    distances: np.ndarray


def nearest(queries, references, k, scale=1.0):
    """The `k` nearest rows of `references` to each row of `queries` (both (N, ...) arrays, compared
    flattened in float64, so a near-copy's small distance survives the cancellation) in Euclidean
    distance divided by `scale`; references are read chunk by chunk, so a prepared image file never
    has to fit in memory."""
    queries = np.asarray(queries, "float64").reshape(len(queries), -1)
    if not 1 <= k <= len(references):
        raise UsageError(f"cannot find {k} nearest of {len(references)} training images; ask for "
                         f"1 to {len(references)}")
    query_norms = np.sum(queries ** 2, axis=1, keepdims=True)
    best_indices = np.zeros((len(queries), 0), "int64")
    best_squares = np.zeros((len(queries), 0))
    for start in range(0, len(references), CHUNK):
        chunk = np.asarray(references[start:start + CHUNK], "float64").reshape(-1, queries.shape[1])
        squares = query_norms - 2 * queries @ chunk.T + np.sum(chunk ** 2, axis=1)
        indices = np.concatenate([best_indices, np.broadcast_to(
            np.arange(start, start + len(chunk)), squares.shape)], axis=1)
        squares = np.concatenate([best_squares, squares], axis=1)
        keep = np.argsort(squares, axis=1, kind="stable")[:, :k]
        best_indices = np.take_along_axis(indices, keep, axis=1)
        best_squares = np.take_along_axis(squares, keep, axis=1)
    return Neighbours(best_indices, np.sqrt(np.maximum(best_squares, 0.0)) / scale)


def pixel_neighbours(samples, training_images, k):
    """`nearest` in pixels: root mean square difference of [0, 1] pixels."""
    pixels = int(np.prod(np.shape(samples)[1:]))

    class Pixels:  # the training images as [0, 1] floats, converted chunk by chunk
        def __len__(self):
            return len(training_images)

        def __getitem__(self, rows):
            return preprocess(training_images[rows])

    return nearest(preprocess(samples), Pixels(), k, scale=np.sqrt(pixels))


def near_copies(neighbours):
    """Which samples are near-copies (`NEAR_COPY_RATIO` of the second nearest distance), and the
    ratios themselves."""
    distances = neighbours.distances
    ratios = distances[:, 0] / np.maximum(distances[:, 1], 1e-12)
    return ratios < NEAR_COPY_RATIO, ratios


class Check(NamedTuple):
    """A memorisation check's result: neighbours in pixels (and features, or None), the near-copy
    flags and ratios, per sample."""
    pixels: Neighbours
    features: Neighbours | None
    copies: np.ndarray
    ratios: np.ndarray

    def summary(self):
        count = int(self.copies.sum())
        return {"near_copies": count, "samples": len(self.copies),
                "near_copy_share": count / len(self.copies), "rule": RULE,
                "median_ratio": float(np.median(self.ratios)),
                "median_nearest_distance": float(np.median(self.pixels.distances[:, 0]))}

    def describe(self):
        summary = self.summary()
        return (f"{summary['near_copies']} of {summary['samples']} samples "
                f"({summary['near_copy_share']:.1%}) are near-copies of training images ({RULE})")


def advice(summary, augment):
    """What to do about the near-copies a check's `summary` found, for a model trained with
    augmentation probability `augment`; None when it found none."""
    if not summary["near_copies"]:
        return None
    remedy = (f"a higher --augment than {augment:g}" if augment
              else f"--augment {SUGGESTED_AUGMENT:g}")
    return ("near-copies mean the network is learning its training images by heart: train with "
            f"{remedy}, on more images or for fewer epochs (docs/own-images.md)")


def check(samples, training_images, k=3, sample_features=None, training_features=None):
    """The memorisation check of `samples` against `training_images` (both uint8 or [0, 1] floats):
    `k` nearest training images of each in pixels and, given both feature arrays, in features."""
    pixels = pixel_neighbours(samples, training_images, max(k, 2))  # the rule needs two
    copies, ratios = near_copies(pixels)
    features = None
    if sample_features is not None:
        features = nearest(sample_features, training_features, k)
    pixels = Neighbours(pixels.indices[:, :k], pixels.distances[:, :k])
    return Check(pixels, features, copies, ratios)
