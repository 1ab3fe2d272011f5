"""Shared fixtures: tiny image folders and tiny models, so the suite runs in minutes on 2 cores."""

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY = {"image_size": 16, "widths": (8, 16), "block_depth": 1, "embedding_dims": 8}


def write_tiny_folder(folder, count=48, size=20, seed=0):
    """Coloured squares on gradients, in two class sub-folders, as PNG and JPEG files."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, :, None]
    for index in range(count):
        label = "a" if index % 2 else "b"
        os.makedirs(folder / label, exist_ok=True)
        image = np.broadcast_to(ramp, (size, size, 3)).copy()
        top, left = rng.integers(0, size // 2, 2)
        image[top:top + size // 3, left:left + size // 3] = rng.integers(0, 256, 3)
        extension = "png" if index % 3 else "jpg"
        Image.fromarray(image.astype(np.uint8)).save(folder / label / f"{index:03d}.{extension}")
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tiny_images(tiny_folder):
    from diffusion_keras.data import load_image_folder

    return load_image_folder(str(tiny_folder), TINY["image_size"])


@pytest.fixture(scope="session")
def trained_model(tiny_images):
    """A tiny model fitted for a few epochs (shared: several tests only read it)."""
    import keras

    from diffusion_keras import DiffusionModel
    from diffusion_keras.data import ImageBatches

    keras.utils.set_random_seed(0)
    model = DiffusionModel(channels=3, seed=0, **TINY)
    model.normalizer.adapt(tiny_images)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=1e-4))
    model.fit_history = model.fit(ImageBatches(tiny_images, 16, seed=0), epochs=8, verbose=0).history
    return model
