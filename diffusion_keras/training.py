"""One training run: split the images, build and compile the model, fit with the run callbacks."""

import keras
import numpy as np

from diffusion_keras import backend
from diffusion_keras.callbacks import (
    Checkpointer,
    EpochSeeds,
    ImageGenerator,
    MetricsLog,
    ProcessPlots,
    StopOnNonFiniteLoss,
)
from diffusion_keras.data import ImageBatches
from diffusion_keras.errors import UsageError
from diffusion_keras.model import DiffusionModel
from diffusion_keras.unet import DEFAULT_WIDTHS


def split_images(images, validation_split, batch_size, seed):
    """Hold out a seeded `validation_split` fraction, or none when it would be under one batch."""
    if not 0 <= validation_split < 1:
        raise UsageError(f"validation split must be a fraction in [0, 1), got {validation_split}")
    count = int(len(images) * validation_split)
    if count < batch_size:
        return images, None
    order = np.random.default_rng(seed).permutation(len(images))
    return images[np.sort(order[count:])], images[np.sort(order[:count])]


def build_model(image_size, channels, widths=DEFAULT_WIDTHS, block_depth=2, schedule=None,
                ema=0.999, learning_rate=1e-3, weight_decay=1e-4, seed=0, clip_norm=None,
                precision=None, accumulate_steps=1, **model_options):
    """A compiled DiffusionModel with AdamW (gradients clipped to global norm `clip_norm` when
    given) and this backend's best compile settings.

    `precision` is a Keras dtype policy (default: the fastest measured for this backend and
    machine); `accumulate_steps` > 1 averages gradients over that many batches before each update,
    so a small device trains with a large effective batch. `model_options`: any other
    DiffusionModel setting (formulation, prediction, U-Net options...)."""
    if not learning_rate >= 0:
        raise UsageError(f"learning rate must not be negative, got {learning_rate}")
    if not weight_decay >= 0:
        raise UsageError(f"weight decay must not be negative, got {weight_decay}")
    if clip_norm is not None and not clip_norm > 0:
        raise UsageError(f"gradient clip norm must be positive, got {clip_norm}")
    model = DiffusionModel(image_size=image_size, channels=channels, widths=widths,
                           block_depth=block_depth, schedule=schedule, ema=ema, seed=seed,
                           dtype=precision or backend.default_dtype_policy(), **model_options)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, global_clipnorm=clip_norm,
            gradient_accumulation_steps=accumulate_steps if accumulate_steps > 1 else None),
        jit_compile=backend.default_jit_compile(),
    )
    return model


def train(images, run_dir, epochs, batch_size=64, widths=DEFAULT_WIDTHS, block_depth=2,
          schedule=None, ema=0.999, learning_rate=1e-3, weight_decay=1e-4, seed=0,
          flip=True, validation_split=0.05, plot_every=1, keep_checkpoints=3, verbose="auto",
          clip_norm=None, resume_from=None, callbacks=(), model_options=None):
    """Train on `images` (float32 NHWC in [0, 1]) and leave checkpoints, samples and a log in
    `run_dir`. Returns the trained model.

    `resume_from` (a `runs.resume_point(run_dir)`) continues that run after its last completed
    epoch: its model (optimizer, EMA and normaliser state), log and best value carry on, and data
    order and noise are drawn from (seed, epoch), so the result matches an uninterrupted run.
    The architecture and optimizer settings then come from the checkpoint. A Ctrl-C
    (KeyboardInterrupt) or an error propagates: every completed epoch is already checkpointed,
    and a non-finite loss raises `callbacks.NonFiniteLoss` before a NaN model is saved.
    """
    keras.utils.set_random_seed(seed)
    train_images, validation_images = split_images(images, validation_split, batch_size, seed)
    if resume_from is None:
        model = build_model(images.shape[1], images.shape[-1], widths, block_depth, schedule, ema,
                            learning_rate, weight_decay, seed, clip_norm,
                            **(model_options or {}))
        model.normalizer.adapt(train_images)
        initial_epoch, history = 0, []
    else:
        model, initial_epoch, history, _ = resume_from
    validation = None
    if validation_images is not None:
        validation = backend.as_fit_input(
            ImageBatches(validation_images, batch_size, flip=False, shuffle=False))
    batches = ImageBatches(train_images, batch_size, flip=flip, seed=seed, epoch=initial_epoch)
    model.fit(
        backend.as_fit_input(batches, initial_epoch, epochs),
        steps_per_epoch=len(batches),
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # ImageBatches shuffles by (seed, epoch); Keras would use the global RNG
        validation_data=validation,
        callbacks=[  # the log before the checkpoint: a resume drops log rows newer than it
            EpochSeeds(seed),
            StopOnNonFiniteLoss(run_dir),
            ImageGenerator(run_dir, every=plot_every, seed=seed),
            MetricsLog(run_dir, history),
            Checkpointer(run_dir, keep=keep_checkpoints, history=history),
            ProcessPlots(run_dir, train_images, seed=seed, resumed=resume_from is not None),
            *callbacks,
        ],
        verbose=verbose,
    )
    return model
