"""Distillation: a trained rectified-flow model (the teacher) made into a student that samples in
one to four network calls.

The student is a `DiffusionModel` of the teacher's architecture, started from the teacher's EMA
weights and normaliser, trained through Keras' `fit` like any model, and sampled by deterministic
DDIM on the uniform grid (an Euler step of the velocity on the flow path), its default sampler.
Two methods (`config.DISTILLATION_METHODS`), each a target pair for `DiffusionModel.denoising_loss`:

- "reflow" (Liu et al. 2023): the teacher samples (noise, image) pairs once, and the student learns
  the straight path between each pair's noise and image. Straight paths are followed exactly by any
  number of Euler steps, so one student samples in 1, 2 or 4 calls; half of its training times lie
  on those calls' grids (Liu et al.'s k-step distillation), half spread uniformly over the path.
- "progressive" (Salimans & Ho 2022): on noised training images at the times of its N-call grid,
  the student learns to make in one DDIM step what the frozen teacher makes in k = teacher_steps / N
  smaller ones. It samples in exactly N calls. k = 2 is Salimans & Ho's halving (distilled again,
  the student gives an N / 2-call one); a larger k follows the teacher's finer path in one round
  (Berthelot et al. 2023's TRACT: fewer rounds, less compounded error).

The teacher's cost is part of the budget: reflow's pairs are timed with the training (`minutes`).
"""

import glob
import os
import time

import keras
import numpy as np
from keras import ops

from diffusion_keras import backend, interrupts, runs, seeding
from diffusion_keras.callbacks import (
    Checkpointer,
    EpochSeeds,
    ImageGenerator,
    MetricsLog,
    StopOnDivergence,
    TimeBudget,
)
from diffusion_keras.config import METADATA, TrainingConfig
from diffusion_keras.errors import UsageError, counted
from diffusion_keras.model import DiffusionModel
from diffusion_keras.samplers import ddim_step
from diffusion_keras.unet import build_unet

PAIRS_DIR = "pairs"
PAIRS_PER_FILE = 1000  # teacher pairs are saved this many at a time, so a kill loses few


@keras.saving.register_keras_serializable(package="diffusion_keras")
class Student(DiffusionModel):
    """A DiffusionModel distilled from a teacher (`ModelConfig.distillation` names the method):
    its loss is the method's, its default sampler DDIM. A progressive student keeps the teacher's
    network, frozen, so that a resumed run distils from exactly it."""

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        if self.config.distillation is None:
            raise UsageError("a Student needs ModelConfig.distillation (the method); a model "
                             "without one is a DiffusionModel")
        if self.config.distillation == "progressive":
            with backend.dtype_policy(self.dtype_policy):
                self.teacher_network = build_unet(self.config, name="teacher_network")
            self.teacher_network.trainable = False

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Reflow: `y_pred` the teacher's images (normalised), `y` their noises (and labels, where
        the no-class token marks unconditional pairs). Progressive: `y_pred` training images, `y`
        their labels, if any."""
        if self.config.distillation == "reflow":
            noises, labels = y if self.config.class_names else (y, None)
            times = self.reflow_times(ops.shape(y_pred)[0])
            return self.denoising_loss(y_pred, noises, times, labels, training)
        return self.progressive_loss(y_pred, self.training_labels(y, training), training)

    def grid_times(self, calls):
        """The times an N-call DDIM sampler calls the network at, for each N in `calls`."""
        return np.unique(np.concatenate([self.sampling_times(count, "uniform")
                                         for count in calls])).astype("float32")

    def reflow_times(self, batch_size):
        """Half uniform on [0, 1], half on the grids of the calls the student is distilled for."""
        shape = (batch_size, 1, 1, 1)
        grid = ops.convert_to_tensor(self.grid_times(self.config.student_calls))
        on_grid = ops.take(grid, keras.random.randint(shape, 0, int(grid.shape[0]),
                                                      seed=self.seed_generator))
        uniform = keras.random.uniform(shape, seed=self.seed_generator)
        pick = keras.random.uniform(shape, seed=self.seed_generator) < 0.5
        return ops.where(pick, on_grid, uniform)

    def progressive_loss(self, images, labels, training):
        """Noise `images` at a random time of the N-call grid, and train on the pair
        `progressive_targets` makes of them."""
        calls = self.config.student_calls[0]
        shape = (ops.shape(images)[0], 1, 1, 1)
        steps = keras.random.randint(shape, 0, calls, seed=self.seed_generator)
        times = 1.0 - ops.cast(steps, "float32") / calls
        noises = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        noisy_images = self.formulation.noisy(images, noises, times)[0]
        targets, target_noises = self.progressive_targets(noisy_images, times, labels)
        return self.denoising_loss(targets, target_noises, times, labels, training)

    def progressive_targets(self, noisy_images, times, labels=None):
        """The (image, noise) pair whose one DDIM step from `noisy_images` at `times` to
        times - 1/N lands where the frozen teacher's k steps of 1/kN do, x'':
        x0 = (x'' - n''/n x_t) / (s'' - n''/n s), and the noise that makes x_t of it."""
        calls = self.config.student_calls[0]
        substeps = self.config.teacher_steps // calls
        noise_rates, signal_rates = self.formulation.schedule(times)
        teacher_images, rates = noisy_images, (noise_rates, signal_rates)
        for step in range(1, substeps + 1):
            next_time = times - step / (substeps * calls)
            next_rates = self.formulation.schedule(next_time)
            pred_noises, pred_images = self.denoise(teacher_images, *rates, labels=labels,
                                                    network=self.teacher_network)
            teacher_images, rates = ddim_step(pred_noises, pred_images, next_rates), next_rates
        ratios = rates[0] / noise_rates  # n'' / n
        targets = (teacher_images - ratios * noisy_images) / (rates[1] - ratios * signal_rates)
        target_noises = (noisy_images - signal_rates * targets) / noise_rates
        return ops.stop_gradient(targets), ops.stop_gradient(target_noises)


def check_teacher(config, distillation):
    """One line where a teacher of this `ModelConfig` cannot be distilled by these settings."""
    if config.formulation != "flow":
        raise UsageError(f"distillation starts from a rectified-flow model (train.py's default "
                         f"--formulation flow); this teacher is {config.formulation!r}: train a "
                         "flow model first")
    if config.distillation == "progressive":
        calls, wanted = config.student_calls[0], distillation.calls[0]
        if distillation.method != "progressive" or calls % wanted or calls == wanted \
                or distillation.resolved_teacher_steps(config) != calls:
            raise UsageError(f"this teacher is a progressive student that samples in exactly "
                             f"{calls} calls: distil it again with --method progressive --calls "
                             f"{calls // 2} (or another divisor below {calls}) and no "
                             "--teacher-steps other than its calls")


def start_student(teacher, distillation, optimization, steps_per_epoch, seed):
    """A compiled student with the teacher's architecture, EMA weights and normaliser."""
    from diffusion_keras.training import build_model

    config = teacher.config.replace(
        distillation=distillation.method, student_calls=distillation.calls, seed=seed,
        teacher_steps=distillation.resolved_teacher_steps(teacher.config),
        posthoc_ema=())  # a student keeps no power averages
    student = build_model(config, optimization, steps_per_epoch, model_class=Student)
    weights = teacher.ema_network.get_weights()
    networks = [student.network, student.ema_network]
    if distillation.method == "progressive":
        networks.append(student.teacher_network)
    for network in networks:
        network.set_weights(weights)
    student.normalizer.set_weights(teacher.normalizer.get_weights())
    student.normalizer.finalize_state()  # its mean and variance, from the adapted statistics
    return student


def pair_labels(teacher, count, seed):
    """A conditional teacher's pair labels: classes uniformly, the no-class token (an unconditional
    pair, which guidance needs) at the teacher's label-dropout rate; None when unconditional."""
    if not teacher.config.class_names:
        return None
    rng = np.random.default_rng(seeding.pair_stream(seed))
    labels = rng.integers(0, teacher.null_label, count)
    return np.where(rng.random(count) < teacher.config.label_dropout, teacher.null_label,
                    labels).astype("int32")


def make_pairs(teacher, run_dir, count, steps, seed, verbose=True):
    """The teacher's `count` (noise, image) pairs, sampled in `steps` calls of its default sampler
    from the noise of `seeding.pair_noise` (a stream of its own: no generated image starts from a
    noise the student was trained on), saved PAIRS_PER_FILE at a time in run_dir/pairs, so a
    resumed run keeps those already made. Returns (uint8 images, noises, labels or None, seconds
    the teacher spent on them)."""
    folder = os.path.join(run_dir, PAIRS_DIR)
    os.makedirs(folder, exist_ok=True)
    labels = pair_labels(teacher, count, seed)
    progress = keras.utils.Progbar(count, unit_name="pair") if verbose else None
    for first in range(0, count, PAIRS_PER_FILE):
        path = os.path.join(folder, f"pairs_{first:06d}.npz")
        size = min(PAIRS_PER_FILE, count - first)
        if not os.path.exists(path):
            started = time.perf_counter()
            noises = seeding.pair_noise(seed, first, size, teacher.image_shape)
            images = np.zeros((size, *teacher.image_shape), "uint8")
            chunk_labels = None if labels is None else labels[first:first + size]
            unconditional = np.ones(size, bool) if labels is None \
                else chunk_labels == teacher.null_label
            for part, part_labels in ((unconditional, None), (~unconditional, chunk_labels)):
                if part.any():
                    sampled = teacher.generate(
                        None, steps, initial_noise=noises[part], verbose=False,
                        labels=None if part_labels is None else part_labels[part])
                    images[part] = np.round(sampled * 255.0).astype("uint8")
            with runs.atomic_write(path) as temporary, open(temporary, "wb") as file:
                np.savez(file, images=images, seconds=time.perf_counter() - started)
        interrupts.check()
        if progress is not None:
            progress.update(first + size)
    files = sorted(glob.glob(os.path.join(folder, "pairs_*.npz")))
    loaded = [np.load(path) for path in files]
    images = np.concatenate([item["images"] for item in loaded])[:count]
    return (images, seeding.pair_noise(seed, 0, count, teacher.image_shape), labels,
            sum(float(item["seconds"]) for item in loaded))


def distill(run_dir, config, images=None, labels=None, resume_from=None, verbose="auto",
            callbacks=()):
    """Distil `config.distillation.teacher` into a student in `run_dir` (a run folder like
    training's: config.json, checkpoints/, samples/ with a grid per call count each epoch, log);
    returns the student. `images` (uint8, with `labels` for a conditional teacher): the training
    data progressive distillation noises; reflow needs none (the teacher's pairs are its data).

    `config` is a TrainingConfig with a `distillation` section; epochs of
    `distillation.steps_per_epoch` steps, stopping early when `distillation.minutes` (pairs
    included) have passed. `resume_from` (a `runs.resume_point`) continues the run after its last
    completed epoch, exactly as an uninterrupted one would have (pairs are kept on disk).
    """
    from diffusion_keras.training import check_resume

    distillation, optimization, run = config.distillation, config.optimization, config.run
    if resume_from is not None:
        check_resume(run_dir, config, resume_from)
    teacher = runs.load_checkpoint(distillation.teacher)
    check_teacher(teacher.config, distillation)
    if distillation.method == "progressive":
        if images is None:
            raise UsageError("progressive distillation noises training images: pass the teacher's "
                             "data (--data-dir or --dataset)")
        if teacher.config.class_names and labels is None:
            raise UsageError("this teacher is class-conditional: progressive distillation needs "
                             "the images' labels")
        if images.shape[1:] != teacher.image_shape:
            raise UsageError(f"the images are shaped {images.shape[1:]}, the teacher makes "
                             f"{teacher.image_shape}: use the data it was trained on")
    count = distillation.pairs if distillation.method == "reflow" else len(images)
    if count < optimization.batch_size:
        raise UsageError(f"{counted(count, 'image' if images is not None else 'pair')} for batch "
                         f"size {optimization.batch_size}; use a smaller --batch-size or more")
    if resume_from is None:
        runs.claim_run_dir(run_dir)
    runs.prepare_run_dir(run_dir)
    runs.remove_stale_temporaries(run_dir)
    if resume_from is None:
        steps = min(count // optimization.batch_size, distillation.steps_per_epoch)
        student = start_student(teacher, distillation, optimization, steps, run.seed)
        runs.save_model(student, runs.checkpoint_path(run_dir, 0))  # a kill during the pairs
        initial_epoch, history = 0, []                              # resumes from here
    else:
        student, initial_epoch, history, _ = resume_from
    saved = TrainingConfig(student.config, optimization, run, distillation)
    runs.write_json(os.path.join(run_dir, "config.json"),
                    {**saved.to_dict(), METADATA: {"num_images": count}})
    if distillation.method == "reflow":
        images, paired, labels, pair_seconds = make_pairs(
            teacher, run_dir, distillation.pairs, student.config.teacher_steps, run.seed,
            verbose=verbose != 0)
        flip = False  # a flipped image is not its noise's pair
    else:
        paired, pair_seconds, flip = None, 0.0, run.resolved_flip()
    from diffusion_keras.data import ImageBatches

    batches = ImageBatches(images, optimization.batch_size, flip=flip, seed=run.seed,
                           paired=paired, labels=labels,
                           steps_per_epoch=distillation.steps_per_epoch)
    spent = max([pair_seconds / 60.0] + [row.get("minutes", 0.0) for row in history])
    if distillation.minutes is not None and spent >= distillation.minutes:
        raise UsageError(f"run {run_dir!r} has spent {spent:.1f} of its --minutes "
                         f"{distillation.minutes:g}; pass a larger --minutes to go on")
    budget = TimeBudget(distillation.minutes, spent)
    grids = [ImageGenerator(run_dir, every=run.plot_every, diffusion_steps=calls, seed=run.seed,
                            suffix=f"_calls{calls}") for calls in distillation.calls]
    student.fit(
        batches.fit_input(initial_epoch, optimization.epochs),
        steps_per_epoch=len(batches),
        epochs=optimization.epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        callbacks=[
            interrupts.StopOnRequest(),
            EpochSeeds(),
            budget,
            StopOnDivergence(run_dir, seed=run.seed, probe_steps=min(distillation.calls)),
            *grids,
            MetricsLog(run_dir, history),
            Checkpointer(run_dir, keep=run.keep_checkpoints, history=history, keep_best=False),
            *callbacks,
        ],
        verbose=verbose,
    )
    if budget.stopped_after is not None and verbose != 0:
        print(budget_note(budget, optimization))
    return student


def budget_note(budget, optimization):
    """What a run cut short by its --minutes left undone, and for a cosine schedule (whose rate was
    then still above 0) the --epochs that would fit its whole decay into those minutes."""
    epoch, step = budget.stopped_after
    note = (f"note: --minutes {budget.minutes:g} stopped the run after step {step} of "
            f"{budget.params['steps']} in epoch {epoch} of {optimization.epochs}")
    if optimization.learning_rate_schedule != "cosine":
        return note
    fitting = (f"--epochs {epoch - 1}" if epoch > 1 else "a smaller --steps-per-epoch")
    return (f"{note}, before the cosine learning rate reached 0; distil again with {fitting} "
            "for the whole decay in those minutes")


def describe(config, teacher_config):
    """'reflow distillation of TEACHER for 4, 2, 1 calls (10,000 teacher pairs of 10 calls)'."""
    distillation = config.distillation
    calls = ", ".join(map(str, distillation.calls))
    steps = distillation.resolved_teacher_steps(teacher_config)
    how = (f"{counted(distillation.pairs, 'teacher pair')} of {steps} calls"
           if distillation.method == "reflow"
           else f"{steps // distillation.calls[0]} teacher DDIM steps per student call")
    return f"{distillation.method} distillation of {distillation.teacher} for {calls} calls ({how})"
