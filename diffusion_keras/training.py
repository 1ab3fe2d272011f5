"""One training run: split the images, build and compile the model, fit with the run callbacks."""

import os

import keras
import numpy as np

from diffusion_keras import (
    backend,
    distributed,
    fine_tuning,
    interrupts,
    posthoc_ema,
    quiet,
    runs,
)
from diffusion_keras.callbacks import (
    Checkpointer,
    EmaSnapshots,
    EpochSeeds,
    ImageGenerator,
    MemorisationCheck,
    MetricsLog,
    ProcessPlots,
    QualityDuringTraining,
    StopOnDivergence,
    TensorBoardSamples,
)
from diffusion_keras.config import (
    METADATA,
    ModelConfig,
    OptimizationConfig,
    TrainingConfig,
    read_config,
)
from diffusion_keras.data import ImageBatches, normalizer_sample, preprocess
from diffusion_keras.errors import UsageError
from diffusion_keras.model import DiffusionModel
from diffusion_keras.optimizers import PerUpdate, build_optimizer

MIN_VALIDATION_IMAGES = 8  # fewer held-out images would score the EMA network by chance
SMALL_FOLDER = 5000  # training images up to which a run ends with the memorisation check


def split_indices(count, validation_split, seed):
    """(training, validation) image indices: a seeded `validation_split` fraction held out, or none
    (validation None) when that is under MIN_VALIDATION_IMAGES."""
    held_out = int(count * validation_split)
    if held_out < MIN_VALIDATION_IMAGES:
        return np.arange(count), None
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def learning_rate_schedule(optimization, total_updates):
    """The learning rate as Keras' own schedule, in optimizer updates: `warmup_steps` linear warm-up
    from 0, then constant (a cosine whose floor `alpha` is 1) or a cosine decay to 0 over the rest of
    `total_updates` (read per update with gradient accumulation, `PerUpdate`)."""
    config = optimization
    if config.learning_rate_schedule == "constant" and not config.warmup_steps:
        return config.learning_rate
    decay_steps = max(total_updates - config.warmup_steps, 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if config.warmup_steps else config.learning_rate, decay_steps,
        alpha=1.0 if config.learning_rate_schedule == "constant" else 0.0,
        warmup_target=config.learning_rate if config.warmup_steps else None,
        warmup_steps=config.warmup_steps)
    return schedule if config.accumulate_steps == 1 else PerUpdate(schedule,
                                                                   config.accumulate_steps)


def build_model(model_config=ModelConfig(), optimization=OptimizationConfig(), steps_per_epoch=1,
                model_class=DiffusionModel):
    """A compiled DiffusionModel with its optimizer (gradients clipped to global norm `clip_norm`
    when given), its learning-rate schedule over `optimization.epochs` of `steps_per_epoch`
    batches, and this backend's best compile settings.

    `precision` is a Keras dtype policy (default: the fastest measured for this backend and
    machine); `accumulate_steps` > 1 averages gradients over that many batches before each update,
    so a small device trains with a large effective batch. `model_class`: a DiffusionModel
    subclass (a distillation's `Student`)."""
    config = optimization
    model = model_class(model_config, dtype=config.precision or backend.default_dtype_policy())
    total_updates = config.epochs * steps_per_epoch // config.accumulate_steps
    model.compile(
        optimizer=build_optimizer(config, learning_rate_schedule(config, total_updates)),
        jit_compile=backend.default_jit_compile(),
    )
    return model


def run_classes(images, conditional, labels=None, class_names=None):
    """(labels, class names) a run learns: none unless `conditional`; then the given ones, else the
    images' own (`PreparedImages`)."""
    if not conditional:
        return None, ()
    labels = getattr(images, "labels", None) if labels is None else np.asarray(labels)
    class_names = tuple(getattr(images, "class_names", ()) if class_names is None else class_names)
    if labels is None or not class_names:
        raise UsageError("a conditional run needs labels and class names: pass images from "
                         "data.open_images(..., conditional=True), or labels= and class_names=")
    if len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(class_names):
        raise UsageError(f"labels must be one class index in [0, {len(class_names)}) per image")
    return labels, class_names


def tensorboard_callbacks(run_dir):
    """Keras' own TensorBoard callback (losses and learning rate per epoch) and the sample grids."""
    log_dir = os.path.join(run_dir, runs.TENSORBOARD_DIR)
    return [keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
            TensorBoardSamples(run_dir)]


# what a resumed run may change: how long it trains and what it leaves, not what it learns
RESUME_CHANGEABLE = ("optimization.epochs", "run.plot_every", "run.keep_checkpoints",
                     "run.tensorboard", "run.cache_dir", "run.distribute", "distillation.minutes")


def resume_changes(saved, config, sections=("optimization", "run", "distillation")):
    """The (section, setting) pairs of `sections` where `config` differs from a run's `saved`
    settings and a resumed run may not (a run folder left unset aside). `train` leaves out the
    model's section: those settings are the checkpoint's, whatever `config` says."""
    return [(section, field) for section in sections if getattr(config, section) is not None
            for field, value in getattr(config, section).to_dict().items()
            if f"{section}.{field}" not in RESUME_CHANGEABLE
            and value != getattr(saved, section).to_dict()[field]
            and not (f"{section}.{field}" == "run.run_dir" and value is None)]


def check_made_by(saved, distilling, run_dir):
    """One line where a training run would be continued as a distillation, or the other way round
    (`saved`: the run's config.json)."""
    if (saved.distillation is not None) != distilling:
        made, other = ("distill.py", "train.py") if saved.distillation else ("train.py", "distill.py")
        raise UsageError(f"{run_dir!r} was made by {made}, not {other}: continue it with python "
                         f"{made} --resume {run_dir}")


def check_resume(run_dir, config, resume_from):
    """The rules of continuing `run_dir` from `resume_from` with `config`, for `train` and
    train.py alike: its config.json matches its checkpoint, only `RESUME_CHANGEABLE` settings
    change, the epochs go beyond those completed, and a cosine schedule keeps its end."""
    saved = read_config(os.path.join(run_dir, "config.json"))
    check_made_by(saved, config.distillation is not None, run_dir)
    mismatched = saved.model.differences(resume_from.model.config, ("config.json", "checkpoint"))
    if mismatched:
        raise UsageError(f"{os.path.join(run_dir, 'config.json')} does not match its checkpoint "
                         f"({'; '.join(mismatched)}); restore the file or start a new run")
    changed = [f"{section}.{field}" for section, field in resume_changes(saved, config)]
    if changed:
        raise UsageError(f"resuming {run_dir!r} keeps the settings it started with; {changed} "
                         f"differ from its config.json (only {list(RESUME_CHANGEABLE)} may change)")
    epochs = config.optimization.epochs
    if saved.optimization.learning_rate_schedule == "cosine" and epochs != saved.optimization.epochs:
        raise UsageError(f"run {run_dir!r} decays its learning rate to 0 at epoch "
                         f"{saved.optimization.epochs} (--learning-rate-schedule cosine), so "
                         f"--epochs {epochs} cannot change where it ends; resume with --epochs "
                         f"{saved.optimization.epochs}, or start a new run")
    if epochs <= resume_from.epoch:
        raise UsageError(f"run {run_dir!r} has completed {resume_from.epoch} of --epochs {epochs}; "
                         "pass a larger --epochs to train it further")


def train(images, run_dir, config=TrainingConfig(), verbose="auto", callbacks=(),
          resume_from=None, labels=None, class_names=None):
    """Train on `images` (uint8 NHWC, e.g. `data.open_images`' prepared images, or floats in
    [0, 1]) with the settings of `config` (a TrainingConfig; its model's image size and channels
    are taken from the images) and leave checkpoints, samples and a log in `run_dir`. Returns the
    trained model.

    With `config.run.conditional` the model learns the class `labels` (default: the images' own,
    as `PreparedImages` carry them) named by `class_names`.
    Batches are read as training goes, so only a few are in memory at once. With
    `config.run.distribute` (JAX) the model trains data-parallel on every device (`distributed`);
    each process reads its share of every batch and only process 0 writes the run folder.
    `config.run.seed` seeds everything: the split, the data order, the model's noise (its
    `ModelConfig.seed`, which must be unset or the same).
    `config.run.init_from` (a .keras file) starts the networks from that model's EMA weights
    (`fine_tuning`: same architecture, checked in one line; the normaliser is adapted to `images`).
    `resume_from` (a `runs.resume_point(run_dir)`) continues that run after its last completed
    epoch: its model (optimizer, EMA and normaliser state), log and best value carry on, and data
    order and noise are drawn from (seed, epoch), so the result matches an uninterrupted run.
    The architecture and optimizer state then come from the checkpoint, and `check_resume`'s
    rules hold (`config`: the run's `read_config(run_dir/config.json)`, with more epochs). A Ctrl-C
    (KeyboardInterrupt) or an error propagates: every completed epoch is already checkpointed,
    and a diverged run raises `callbacks.Diverged` before a diverged model is saved.
    """
    run, optimization = config.run, config.optimization
    seed, batch_size, epochs = run.seed, optimization.batch_size, optimization.epochs
    if config.distillation is not None or config.model.distillation is not None:
        raise UsageError("these are a distillation's settings (a student's): distillation.distill "
                         "(distill.py) makes students; train starts from training settings")
    if resume_from is not None:
        check_resume(run_dir, config, resume_from)
    elif config.model.seed not in (None, seed):
        raise UsageError(f"the model's seed {config.model.seed} is not the run's seed {seed}: a run "
                         "has one seed, config.run.seed, which train gives the model; leave "
                         "config.model.seed unset (None)")
    if run.distribute:
        distributed.start(batch_size)  # before any variable is made
    quiet.set_random_seed(seed)
    train_indices, validation_indices = split_indices(len(images), run.validation_split, seed)
    labels, class_names = run_classes(images, run.conditional, labels, class_names)
    if run.init_from is not None and resume_from is None:
        fine_tuning.check_architecture(
            config.model.replace(image_size=images.shape[1], channels=images.shape[-1],
                                 class_names=class_names),
            runs.saved_model_config(run.init_from), run.init_from)
    shard = (distributed.process_index(), distributed.process_count())
    batches = ImageBatches(images, batch_size, flip=run.resolved_flip(), seed=seed,
                           indices=train_indices, shard=shard, labels=labels)
    if resume_from is None:
        model_config = config.model.replace(image_size=images.shape[1], channels=images.shape[-1],
                                            seed=seed, class_names=class_names)
        model = build_model(model_config, optimization, len(batches))
        if run.init_from is not None:
            fine_tuning.initial_weights(model, run.init_from)
        model.normalizer.adapt(normalizer_sample(images, train_indices, seed))
        initial_epoch, history = 0, []
    else:
        model, initial_epoch, history, _ = resume_from
        if model.config.class_names != class_names:
            raise UsageError(f"the data's classes {list(class_names)} are not the checkpoint's "
                             f"{list(model.config.class_names)}; resume on the same data")
    validation = None
    if validation_indices is not None:  # in batches of up to batch_size that split over the devices
        devices = distributed.device_count()
        validation_batch = min(batch_size, len(validation_indices)) // devices * devices
        validation = ImageBatches(
            images, validation_batch, flip=False, shuffle=False, indices=validation_indices,
            shard=shard, labels=labels).fit_input()
    quality = []
    if run.eval_every is not None:  # before any folder: an extractor that cannot be had fails here
        from diffusion_keras.evaluation import training_reference

        name, extractor, reference = training_reference(images, train_indices, seed)
        quality = [QualityDuringTraining(run.eval_every, extractor, reference, name,
                                         run.eval_images, seed)]
    writer = distributed.is_writer()  # the other processes compute in step and write nothing
    if writer:  # only now: a run that cannot start leaves no folder behind
        if resume_from is None:
            runs.claim_run_dir(run_dir)
        runs.prepare_run_dir(run_dir)
        runs.remove_stale_temporaries(run_dir)  # of a run killed outright before
        saved = TrainingConfig(model.config, optimization, run)
        runs.write_json(os.path.join(run_dir, "config.json"),
                        {**saved.to_dict(), METADATA: {"num_images": len(images)}})
    written_by = run_dir if writer else None
    snapshots = ([EmaSnapshots(run_dir, posthoc_ema.snapshot_epochs(epochs, run.ema_snapshots))]
                 if model.config.posthoc_ema and writer else [])
    model.fit(
        batches.fit_input(initial_epoch, epochs),
        steps_per_epoch=len(batches),
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,  # ImageBatches shuffles by (seed, epoch); Keras would use the global RNG
        validation_data=validation,
        callbacks=[  # the log before the checkpoint: a resume drops log rows newer than it
            interrupts.StopOnRequest(),
            EpochSeeds(),
            StopOnDivergence(run_dir, seed=seed),
            ImageGenerator(written_by, every=run.plot_every, seed=seed),
            *quality,
            *snapshots,
            *([MetricsLog(run_dir, history), Checkpointer(
                run_dir, keep=run.keep_checkpoints, history=history,
                **({"monitor": quality[0].metric_name, "fallback_monitor": None} if quality
                   else {}))] if writer else []),
            ProcessPlots(written_by, preprocess(images[train_indices[:4]]), seed=seed,
                         resumed=resume_from is not None),
            *(tensorboard_callbacks(run_dir) if run.tensorboard and writer else ()),
            *([MemorisationCheck(written_by, images[train_indices], seed=seed)]
              if len(train_indices) <= SMALL_FOLDER else []),
            *callbacks,
        ],
        verbose=verbose,
    )
    return model
