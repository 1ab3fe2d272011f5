"""An offline quality measure: a small CIFAR-10 classifier the project trains and ships, whose
penultimate features stand in for InceptionV3's where those weights cannot be downloaded.

The Frechet distance and KID in its feature space are named FD-cifar10 and KD-cifar10, never FID or
KID: the numbers rank models trained on CIFAR-10-like images against each other and against the
floor and ceiling in BENCHMARKS.md, and are not comparable with published FIDs.
`benchmarks/train_cifar10_features.py` made the weights (its test accuracy is in
`CIFAR10_FEATURES_INFO`).
"""

import hashlib
import json
import os

import keras
from keras import layers

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SIZE = 32
WIDTHS = (32, 64, 128)
FEATURES_LAYER = "features"
_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
CIFAR10_FEATURES_WEIGHTS = os.path.join(_HERE, "cifar10_features.weights.h5")
CIFAR10_FEATURES_INFO = os.path.join(_HERE, "cifar10_features.json")


def build_classifier(widths=WIDTHS):
    """A VGG-style CNN: images in [0, 1] at 32x32x3 -> (features, logits over the ten classes).

    Two 3x3 conv-BatchNorm-ReLU per width, max pooling between widths, global average pooling:
    the pooled `widths[-1]` values are the features (as InceptionV3's pool3 for FID).
    """
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="images")
    x = layers.Rescaling(2.0, offset=-1.0)(images)
    for index, width in enumerate(widths):
        if index:
            x = layers.MaxPooling2D()(x)
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
    features = layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(x)
    logits = layers.Dense(len(CLASSES), name="logits")(features)
    return keras.Model(images, [features, logits], name="cifar10_classifier")


def cifar10_extractor(channels=3, weights=CIFAR10_FEATURES_WEIGHTS):
    """A keras.Model: images in [0, 1] (any size, 1 or 3 channels) -> the shipped classifier's
    pooled features; images that are not 32x32 are resized to it."""
    classifier = build_classifier()
    classifier.load_weights(weights)
    images = keras.Input((None, None, channels))
    x = layers.Resizing(IMAGE_SIZE, IMAGE_SIZE)(images)
    if channels == 1:
        x = layers.Concatenate()([x, x, x])
    features, _ = classifier(x)
    return keras.Model(images, features, name="cifar10_features")


def cifar10_classifier(weights=CIFAR10_FEATURES_WEIGHTS):
    """The shipped classifier itself: images in [0, 1] at 32x32x3 -> class logits."""
    classifier = build_classifier()
    classifier.load_weights(weights)
    return keras.Model(classifier.inputs, classifier.outputs[1], name="cifar10_logits")


def weights_digest(weights=CIFAR10_FEATURES_WEIGHTS):
    """A short hash of the weights file: cached real-image statistics are only reused with it."""
    with open(weights, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:16]


def info():
    """How the shipped weights were made: accuracy, epochs, command (written by the script)."""
    with open(CIFAR10_FEATURES_INFO) as file:
        return json.load(file)
