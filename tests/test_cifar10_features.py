"""The shipped CIFAR-10 feature network: small, loadable on any backend, and accurate on CIFAR-10."""

import os
import tarfile

import numpy as np
import pytest

from diffusion_keras import cifar10_features

SHARED_CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "cifar10-jpeg.tar.gz")


def test_the_weights_are_shipped_small_with_how_they_were_made():
    assert os.path.getsize(cifar10_features.CIFAR10_FEATURES_WEIGHTS) < 3 * 2**20
    info = cifar10_features.info()
    assert info["test_accuracy"] > 0.85 and info["test_images"] == 10000
    assert info["command"].startswith("python benchmarks/train_cifar10_features.py")


@pytest.mark.parametrize("size, channels", [(32, 3), (16, 3), (32, 1)])
def test_any_image_size_and_channels_give_the_pooled_features(size, channels):
    extractor = cifar10_features.cifar10_extractor(channels)
    images = np.random.default_rng(0).random((3, size, size, channels), dtype=np.float32)
    features = np.asarray(extractor.predict_on_batch(images))
    assert features.shape == (3, cifar10_features.WIDTHS[-1]) and np.isfinite(features).all()


def cifar10_test_sample(per_class=30):
    """The first `per_class` test images of each class from the shared archive, as [0, 1] arrays."""
    from PIL import Image

    images, labels, counts = [], [], dict.fromkeys(cifar10_features.CLASSES, 0)
    with tarfile.open(SHARED_CIFAR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and "test" in parts and counts.get(parts[-2], per_class) < per_class:
                counts[parts[-2]] += 1
                with Image.open(archive.extractfile(member)) as image:
                    images.append(np.asarray(image.convert("RGB"), np.float32) / 255.0)
                labels.append(cifar10_features.CLASSES.index(parts[-2]))
            if min(counts.values()) >= per_class:
                break
    return np.stack(images), np.array(labels)


@pytest.mark.skipif(not os.path.exists(SHARED_CIFAR), reason="the shared CIFAR-10 archive is absent")
def test_the_classifier_recognises_cifar10_test_images():
    images, labels = cifar10_test_sample()
    logits = np.asarray(cifar10_features.cifar10_classifier().predict_on_batch(images))
    assert np.mean(np.argmax(logits, axis=-1) == labels) > 0.8
