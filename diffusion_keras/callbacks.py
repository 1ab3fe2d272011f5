"""Training callbacks: sample grids, checkpoints and the metrics log, each written atomically."""

import csv
import io
import math
import os
import time

import keras
import numpy as np

from diffusion_keras import interrupts, posthoc_ema, runs
from diffusion_keras.errors import NonFiniteSamples, UsageError
from diffusion_keras.plotting import (
    display,
    plot_before_after,
    plot_forward_process,
    plot_losses,
    plot_nearest_images,
    plot_schedules,
    reverse_process,
    save_image_grid,
    save_reverse_process,
)

PLOTS_DIR = "plots"


class ImageGenerator(keras.callbacks.Callback):
    """Every `every` epochs, sample a fixed-seed grid with the EMA network and save it as PNG.

    The seed is fixed so grids from different epochs show the same noises: progress is comparable.
    The default 4 x 4 grid has `ProcessPlots`' 16 images, so both run one compiled sampler.
    """

    def __init__(self, run_dir=None, every=1, num_rows=4, num_cols=4, diffusion_steps=20, seed=0,
                 show=False, suffix=""):
        super().__init__()
        self.run_dir = run_dir
        self.suffix = suffix  # in the file name, e.g. "_calls4" for one of a student's grids
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
            path = os.path.join(self.run_dir, runs.SAMPLES_DIR,
                                f"epoch_{epoch + 1:04d}{self.suffix}.png")
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
                 history=(), keep_best=True):
        super().__init__()
        self.run_dir = run_dir
        self.keep = keep
        self.keep_best = keep_best  # False where no loss measures the samples (a distillation)
        self.monitor = monitor
        self.fallback_monitor = fallback_monitor
        values = [self.value(row) for row in history]
        self.best = min((value for value in values if value is not None), default=math.inf)

    def value(self, logs):
        return logs.get(self.monitor, logs.get(self.fallback_monitor))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = runs.checkpoint_path(self.run_dir, epoch + 1)
        with interrupts.deferred():  # a stop request waits for the epoch to be saved
            runs.save_model(self.model, path)
            for old in runs.run_checkpoints(self.run_dir)[: -self.keep]:
                os.remove(old)
            value = self.value(logs)
            if self.keep_best and value is not None and value < self.best:
                self.best = value
                runs.save_model(self.model, os.path.join(self.run_dir, runs.CHECKPOINT_DIR,
                                                         "best.keras"))


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


class QualityDuringTraining(keras.callbacks.Callback):
    """Every `every` epochs, the FD of `num_images` seeded EMA samples (20 calls of the model's
    sampler) against the training images' features, logged as the epoch's `metric_name`
    ("fd_cifar10" or "fid", `evaluation.METRIC_NAMES`) for the log, TensorBoard and `Checkpointer`
    (list this before them). `reference`: `metrics.FeatureStatistics` of the training images in
    the features `extractor` computes (`evaluation.training_reference`)."""

    def __init__(self, every, extractor, reference, metric_name, num_images=1000, seed=0):
        super().__init__()
        self.every = every
        self.extractor = extractor
        self.reference = reference
        self.metric_name = metric_name
        self.num_images = num_images
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        from diffusion_keras import metrics
        from diffusion_keras.evaluation import extract_features

        if (epoch + 1) % self.every or logs is None:
            return
        images = self.model.generate(self.num_images, 20, seed=self.seed, verbose=False)
        generated = metrics.FeatureStatistics().update(
            extract_features(self.extractor, images, 64))
        logs[self.metric_name] = metrics.fid(self.reference, generated)


class MemorisationCheck(keras.callbacks.Callback):
    """At the end of training on a small folder: the memorisation check (`memorization.check`) of
    `num_images` seeded EMA samples against the `training_images`, drawn as plots/nearest.png,
    summed up in memorisation.json and one printed line. With `run_dir=None` (the other processes
    of a multi-host run) the samples are drawn in step and nothing is written."""

    def __init__(self, run_dir, training_images, num_images=64, seed=0):
        super().__init__()
        self.run_dir = run_dir
        self.training_images = training_images
        self.num_images = num_images
        self.seed = seed

    def on_train_end(self, logs=None):
        from diffusion_keras import memorization

        samples = self.model.generate(self.num_images, 20, seed=self.seed, verbose=False)
        check = memorization.check(samples, self.training_images, k=3)
        if self.run_dir is None:
            return
        picture = os.path.join(self.run_dir, PLOTS_DIR, "nearest.png")
        os.makedirs(os.path.dirname(picture), exist_ok=True)
        plot_nearest_images(samples, self.training_images, check, picture)
        summary = check.summary()
        runs.write_json(os.path.join(self.run_dir, "memorisation.json"),
                        {**summary, "picture": picture, "seed": self.seed})
        print(f"memorisation check: {check.describe()}; see {picture} (evaluate.py --nearest for "
              "more samples)")
        remedy = memorization.advice(summary, self.model.config.augment)
        if remedy:
            print(remedy)


class EmaSnapshots(keras.callbacks.Callback):
    """Save the post-hoc EMA's power averages (`posthoc_ema.save_snapshot`) after each of the
    `epochs` given, into `run_dir/ema_snapshots/`."""

    def __init__(self, run_dir, epochs):
        super().__init__()
        self.run_dir = run_dir
        self.epochs = set(epochs)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            with interrupts.deferred():
                posthoc_ema.save_snapshot(self.model, self.run_dir)


class EpochSeeds(keras.callbacks.Callback):
    """Restart the model's training noise at every epoch (`DiffusionModel.restart_training_noise`),
    so a resumed epoch draws exactly what an uninterrupted one did."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.restart_training_noise(epoch)


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the first step after `minutes` in all (`spent` of them before this fit:
    earlier sessions of a resumed run, a distillation's teacher pairs), and log the minutes spent
    so far in every epoch's row (as "minutes"; list this before `MetricsLog`). A budget that runs
    out mid-epoch ends that epoch there, checkpointed as any other; `stopped_after` is then
    (epoch, step), both counted from 1, or None when the run did all its steps (Keras' progress
    line shows a cut epoch's full step count, so this is the one record of where it stopped)."""

    def __init__(self, minutes=None, spent=0.0):
        super().__init__()
        self.minutes = minutes
        self.spent = spent
        self.started = None
        self.epoch = None
        self.stopped_after = None

    def elapsed(self):
        return self.spent + (time.perf_counter() - self.started) / 60.0

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.minutes is not None and self.elapsed() >= self.minutes:
            self.model.stop_training = True
            last = self.epoch + 1 == self.params["epochs"] and batch + 1 == self.params["steps"]
            self.stopped_after = None if last else (self.epoch + 1, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["minutes"] = self.elapsed()


class Diverged(UsageError):
    """Training diverged; the run folder still holds the checkpoints of the epochs before it."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stop with a clear error when training diverges, before anything saves the model, so every
    checkpoint it leaves samples finite images (list it before the checkpoint, log and samples).

    Diverged means a non-finite or exploded (over DIVERGED_LOSS) metric at any step, or, at an
    epoch's end, a non-finite weight or a non-finite image among a few sampled with the EMA network
    (`PROBE_IMAGES` images, `probe_steps` network calls). Unlike `keras.callbacks.TerminateOnNaN`
    this raises, so the epoch's end callbacks never run on a diverged model.
    """

    DIVERGED_LOSS = 1e10  # far above any loss of these formulations that is still learning
    PROBE_IMAGES = 2

    def __init__(self, run_dir, seed=0, probe_steps=4):
        super().__init__()
        self.run_dir = run_dir
        self.seed = seed
        self.probe_steps = probe_steps
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        self.check_metrics(logs, f"epoch {self.epoch}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        where = f"the end of epoch {self.epoch}"
        self.check_metrics(logs, where)
        weights = self.model.network.weights + self.model.ema_network.weights
        if not all(np.all(np.isfinite(keras.ops.convert_to_numpy(weight))) for weight in weights):
            self.stop("non-finite weights", where)
        try:
            self.model.generate(self.PROBE_IMAGES, self.probe_steps, seed=self.seed, verbose=False)
        except NonFiniteSamples:
            self.stop("the EMA network samples non-finite images", where)

    def check_metrics(self, logs, where):
        values = {key: float(np.mean(np.asarray(value))) for key, value in (logs or {}).items()}
        bad = {key: value for key, value in values.items()
               if not math.isfinite(value) or abs(value) > self.DIVERGED_LOSS}
        if bad:
            self.stop(", ".join(f"{key}={value:.4g}" for key, value in bad.items()), where)

    def stop(self, what, where):
        checkpoints = runs.run_checkpoints(self.run_dir)
        kept = (f"the last checkpoint, {checkpoints[-1]!r}, is kept (every checkpoint of the run "
                "sampled finite images)" if checkpoints
                else "no epoch had completed, so no checkpoint was saved")
        raise Diverged(f"training diverged ({what}) at {where}; {kept}; start again with a lower "
                       "--learning-rate or with --clip-norm (e.g. 1.0)")


class ProcessPlots(keras.callbacks.Callback):
    """The pictures that explain a run, in `plots/`: at the start the schedules, the forward process
    on a few training images and untrained samples; at the end the same noises after training and
    the reverse process (GIF and x0 sequence). A resumed run (`resumed=True`) keeps the pictures
    of its start and has no untrained samples to compare against. With `run_dir=None` (the other
    processes of a multi-host run) the samples are computed in step with process 0, which draws
    them, and nothing is written."""

    def __init__(self, run_dir, images, num_images=16, diffusion_steps=20, seed=0, resumed=False):
        super().__init__()
        self.folder = None if run_dir is None else os.path.join(run_dir, PLOTS_DIR)
        self.images = images[:4]
        self.num_images = num_images
        self.diffusion_steps = diffusion_steps
        self.seed = seed
        self.resumed = resumed
        self.untrained = None

    def on_train_begin(self, logs=None):
        if self.resumed:
            return
        self.untrained = self.model.generate(self.num_images, self.diffusion_steps, seed=self.seed)
        if self.folder is None:
            return
        os.makedirs(self.folder, exist_ok=True)
        plot_schedules(os.path.join(self.folder, "schedules.png"))
        plot_forward_process(self.images, self.model.formulation.schedule, seed=self.seed,
                             save_to=os.path.join(self.folder, "forward_process.png"))
        save_image_grid(self.untrained, os.path.join(self.folder, "samples_untrained.png"))

    def on_train_end(self, logs=None):
        # one sampling pass: its last clean-image estimate is the trained grid `generate` returns
        frames = reverse_process(self.model, self.num_images, self.diffusion_steps, self.seed)
        if self.folder is None:
            return
        os.makedirs(self.folder, exist_ok=True)
        if self.untrained is not None:
            plot_before_after(self.untrained, frames[1][-1],
                              os.path.join(self.folder, "samples_untrained_vs_trained.png"))
        save_reverse_process(frames, self.folder)
