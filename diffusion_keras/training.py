"""One training run: split the images, build and compile the model, fit with the run callbacks."""

import keras
import numpy as np

from diffusion_keras import backend
from diffusion_keras.callbacks import Checkpointer, ImageGenerator, MetricsLog
from diffusion_keras.data import ImageBatches
from diffusion_keras.model import DiffusionModel
from diffusion_keras.unet import DEFAULT_WIDTHS


def split_images(images, validation_split, batch_size, seed):
    """Hold out a seeded `validation_split` fraction, or none when it would be under one batch."""
    count = int(len(images) * validation_split)
    if count < batch_size:
        return images, None
    order = np.random.default_rng(seed).permutation(len(images))
    return images[np.sort(order[count:])], images[np.sort(order[:count])]


def build_model(image_size, channels, widths=DEFAULT_WIDTHS, block_depth=2, schedule="offset_cosine",
                ema=0.999, learning_rate=1e-3, weight_decay=1e-4, seed=0, **model_options):
    """A compiled DiffusionModel with AdamW and this backend's best compile settings.

    `model_options`: any other DiffusionModel setting (formulation, prediction, U-Net options...)."""
    model = DiffusionModel(image_size=image_size, channels=channels, widths=widths,
                           block_depth=block_depth, schedule=schedule, ema=ema, seed=seed,
                           **model_options)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay),
        jit_compile=backend.default_jit_compile(),
    )
    return model


def train(images, run_dir, epochs, batch_size=64, widths=DEFAULT_WIDTHS, block_depth=2,
          schedule="offset_cosine", ema=0.999, learning_rate=1e-3, weight_decay=1e-4, seed=0,
          flip=True, validation_split=0.05, plot_every=1, keep_checkpoints=3, verbose="auto",
          model_options=None):
    """Train on `images` (float32 NHWC in [0, 1]) and leave checkpoints, samples and a log in
    `run_dir`. Returns the trained model."""
    keras.utils.set_random_seed(seed)
    train_images, validation_images = split_images(images, validation_split, batch_size, seed)
    model = build_model(images.shape[1], images.shape[-1], widths, block_depth, schedule, ema,
                        learning_rate, weight_decay, seed, **(model_options or {}))
    model.normalizer.adapt(train_images)
    validation = None
    if validation_images is not None:
        validation = ImageBatches(validation_images, batch_size, flip=False, shuffle=False)
    model.fit(
        ImageBatches(train_images, batch_size, flip=flip, seed=seed),
        epochs=epochs,
        validation_data=validation,
        callbacks=[
            ImageGenerator(run_dir, every=plot_every, seed=seed),
            Checkpointer(run_dir, keep=keep_checkpoints),
            MetricsLog(run_dir),
        ],
        verbose=verbose,
    )
    return model
