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
    assert info["test_accuracy"] > 0.8 and info["test_images"] == 10000
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


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHARED_CIFAR), reason="the shared CIFAR-10 archive is absent")
def test_the_classifier_recognises_cifar10_test_images():
    images, labels = cifar10_test_sample()
    logits = np.asarray(cifar10_features.cifar10_classifier().predict_on_batch(images))
    assert np.mean(np.argmax(logits, axis=-1) == labels) > 0.8


@pytest.mark.slow
def test_the_training_script_writes_loadable_weights(tmp_path, capsys):
    """benchmarks/train_cifar10_features.py on a tiny CIFAR-10-shaped folder, one epoch."""
    import sys

    from PIL import Image

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "benchmarks"))
    import train_cifar10_features

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(cifar10_features.CLASSES):
            os.makedirs(tmp_path / split / name)
            for index in range(2):
                pixels = np.full((32, 32, 3), 25 * label, np.uint8) + rng.integers(0, 5, (32, 32, 3),
                                                                                  dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{index}.png")
    output = str(tmp_path / "features.weights.h5")
    assert train_cifar10_features.main(["--data-dir", str(tmp_path), "--epochs", "1",
                                        "--batch-size", "4", "--output", output]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert os.path.exists(output)
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]
    extractor = cifar10_features.cifar10_extractor(weights=output)
    assert np.asarray(extractor.predict_on_batch(np.zeros((1, 32, 32, 3), "float32"))).shape == (1, 128)
