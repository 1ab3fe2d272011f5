"""Training callbacks: sample grids, checkpoints and the metrics log, each written atomically."""

import csv
import io
import math
import os

import keras
import numpy as np

from diffusion_keras import runs
from diffusion_keras.errors import UsageError
from diffusion_keras.plotting import (
    display,
    plot_before_after,
    plot_forward_process,
    plot_losses,
    plot_schedules,
    save_image_grid,
    save_reverse_process,
)

PLOTS_DIR = "plots"


class ImageGenerator(keras.callbacks.Callback):
    """Every `every` epochs, sample a fixed-seed grid with the EMA network and save it as PNG.

    The seed is fixed so grids from different epochs show the same noises: progress is comparable.
    """

    def __init__(self, run_dir=None, every=1, num_rows=3, num_cols=6, diffusion_steps=20, seed=0,
                 show=False):
        super().__init__()
        self.run_dir = run_dir
        self.every = every
        self.num_rows = num_rows
        self.num_cols = num_cols
        self.diffusion_steps = diffusion_steps
        self.seed = seed
        self.show = show

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        images = self.model.generate(
            self.num_rows * self.num_cols, self.diffusion_steps, seed=self.seed
        )
        if self.run_dir is not None:
            path = os.path.join(self.run_dir, runs.SAMPLES_DIR, f"epoch_{epoch + 1:04d}.png")
            save_image_grid(images, path, self.num_rows, self.num_cols)
        if self.show:
            display(images, cols=self.num_cols)


class TensorBoardSamples(keras.callbacks.Callback):
    """Each saved epoch grid (`ImageGenerator`'s PNG) as an image in TensorBoard, beside the
    losses Keras' own `TensorBoard` callback writes (list this after both)."""

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf
        from PIL import Image

        path = os.path.join(self.run_dir, runs.SAMPLES_DIR, f"epoch_{epoch + 1:04d}.png")
        if not os.path.exists(path):  # not a --plot-every epoch
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(
                os.path.join(self.run_dir, runs.TENSORBOARD_DIR, "samples"))
        with Image.open(path) as image:
            picture = np.asarray(image.convert("RGB"))
        with self.writer.as_default():
            tf.summary.image("samples", picture[None], step=epoch + 1)
        self.writer.flush()


class Checkpointer(keras.callbacks.Callback):
    """Save `checkpoints/epoch_NNNN.keras` every epoch (keeping the newest `keep`) and `best.keras`.

    "Best" is the lowest `monitor` value seen (validation noise loss when there is validation data);
    a resumed run passes its log so far as `history`, so best.keras is only replaced by a better one.
    """

    def __init__(self, run_dir, keep=3, monitor="val_noise_loss", fallback_monitor="noise_loss",
                 history=()):
        super().__init__()
        self.run_dir = run_dir
        self.keep = keep
        self.monitor = monitor
        self.fallback_monitor = fallback_monitor
        values = [self.value(row) for row in history]
        self.best = min((value for value in values if value is not None), default=math.inf)

    def value(self, logs):
        return logs.get(self.monitor, logs.get(self.fallback_monitor))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = runs.checkpoint_path(self.run_dir, epoch + 1)
        with runs.finish_before_stopping():  # a stop request waits for the epoch to be saved
            with runs.atomic_write(path) as temporary:
                self.model.save(temporary)
            for old in runs.run_checkpoints(self.run_dir)[: -self.keep]:
                os.remove(old)
            value = self.value(logs)
            if value is not None and value < self.best:
                self.best = value
                best = os.path.join(self.run_dir, runs.CHECKPOINT_DIR, "best.keras")
                with runs.atomic_write(best) as temporary:
                    self.model.save(temporary)


class MetricsLog(keras.callbacks.Callback):
    """The per-epoch metrics as `log.csv` and `log.json` in the run folder, rewritten whole, and
    drawn as `plots/losses.png` (shown inline too when run in a notebook)."""

    def __init__(self, run_dir, history=()):
        super().__init__()
        self.run_dir = run_dir
        self.rows = list(history)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({key: float(np.asarray(value)) for key, value in (logs or {}).items()})
        self.rows.append(row)
        runs.write_json(os.path.join(self.run_dir, "log.json"), self.rows)
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        with runs.atomic_write(os.path.join(self.run_dir, "log.csv")) as temporary:
            with open(temporary, "w") as file:
                file.write(text.getvalue())
        os.makedirs(os.path.join(self.run_dir, PLOTS_DIR), exist_ok=True)
        plot_losses(self.rows, os.path.join(self.run_dir, PLOTS_DIR, "losses.png"))


class EpochSeeds(keras.callbacks.Callback):
    """Restart the model's training noise at every epoch (`DiffusionModel.restart_training_noise`),
    so a resumed epoch draws exactly what an uninterrupted one did."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.restart_training_noise(epoch)


class NonFiniteLoss(UsageError):
    """Training diverged; the run folder still holds the checkpoints of the epochs before it."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop with a clear error at the first non-finite metric, before anything saves the model.

    Unlike `keras.callbacks.TerminateOnNaN` this raises, so the epoch's end callbacks (checkpoint,
    log, samples) never run on NaN weights; list it before them.
    """

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self.check(logs, f"epoch {self.epoch}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self.check(logs, f"the end of epoch {self.epoch}")

    def check(self, logs, where):
        bad = {key: value for key, value in (logs or {}).items()
               if not np.all(np.isfinite(np.asarray(value)))}
        if not bad:
            return
        checkpoints = runs.run_checkpoints(self.run_dir)
        kept = (f"the last good checkpoint {checkpoints[-1]!r} is kept" if checkpoints
                else "no epoch had completed, so no checkpoint was saved")
        values = ", ".join(f"{key}={float(np.mean(value))}" for key, value in bad.items())
        raise NonFiniteLoss(f"training diverged ({values}) at {where}; {kept}; start again with "
                            "a lower --learning-rate or with --clip-norm (e.g. 1.0)")


class ProcessPlots(keras.callbacks.Callback):
    """The pictures that explain a run, in `plots/`: at the start the schedules, the forward process
    on a few training images and untrained samples; at the end the same noises after training and
    the reverse process (GIF and x0 sequence). A resumed run (`resumed=True`) keeps the pictures
    of its start and has no untrained samples to compare against."""

    def __init__(self, run_dir, images, num_images=16, diffusion_steps=20, seed=0, resumed=False):
        super().__init__()
        self.folder = os.path.join(run_dir, PLOTS_DIR)
        self.images = images[:4]
        self.num_images = num_images
        self.diffusion_steps = diffusion_steps
        self.seed = seed
        self.resumed = resumed
        self.untrained = None

    def on_train_begin(self, logs=None):
        os.makedirs(self.folder, exist_ok=True)
        if self.resumed:
            return
        plot_schedules(os.path.join(self.folder, "schedules.png"))
        plot_forward_process(self.images, self.model.diffusion_schedule, seed=self.seed,
                             save_to=os.path.join(self.folder, "forward_process.png"))
        self.untrained = self.model.generate(self.num_images, self.diffusion_steps, seed=self.seed)
        save_image_grid(self.untrained, os.path.join(self.folder, "samples_untrained.png"))

    def on_train_end(self, logs=None):
        if self.untrained is not None:
            trained = self.model.generate(self.num_images, self.diffusion_steps, seed=self.seed)
            plot_before_after(self.untrained, trained,
                              os.path.join(self.folder, "samples_untrained_vs_trained.png"))
        save_reverse_process(self.model, self.folder, self.num_images, self.diffusion_steps,
                             self.seed)
