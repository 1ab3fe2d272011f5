"""python distill.py: make a trained model's few-call student (`distillation`) in a run folder.

Flags set fields of the run's `config.TrainingConfig` as train.py's do (the defaults are in
`config.py`: `DistillationConfig`, and `DISTILLATION_OPTIMIZATION` over training's).
"""

import argparse
import os
import sys

from diffusion_keras import config as settings
from diffusion_keras.checks import (
    positive_float_argument,
    positive_int_argument,
    positive_int_list_argument,
)
from diffusion_keras.cli import Parser, add_checkpoint_argument, run
from diffusion_keras.cli.train import (
    add,
    given_settings,
    progress_verbosity,
    resumed_config,
    run_in_folder,
)
from diffusion_keras.errors import UsageError


def parser():
    p = Parser(description="Distil a trained diffusion model into a student that samples in 1-4 "
                           "network calls (docs/distillation.md).")
    add_checkpoint_argument(p)
    distil = p.add_argument_group("distillation")
    add(distil, "--method", "distillation", "reflow: fine-tune on the teacher's (noise, image) "
        "pairs, one student for every call count; progressive: one DDIM step learns several of "
        "the teacher's, for one call count", choices=settings.DISTILLATION_METHODS)
    add(distil, "--calls", "distillation", "network calls the student is made for, comma-separated "
        "(progressive: one)",
        type=positive_int_list_argument)
    add(distil, "--pairs", "distillation", "reflow: teacher pairs to fine-tune on",
        type=positive_int_argument)
    add(distil, "--teacher-steps", "distillation", "the teacher's network calls per image: reflow's "
        f"per pair (default {settings.REFLOW_TEACHER_STEPS}); progressive: the DDIM steps the "
        f"student's calls make, a multiple of --calls (default {settings.PROGRESSIVE_TEACHER_STEPS}"
        "; a progressive teacher's own calls)", type=positive_int_argument)
    add(distil, "--steps-per-epoch", "distillation", "optimizer steps per epoch (a checkpoint and "
        "sample grids each)", type=positive_int_argument)
    add(distil, "--minutes", "distillation", "stop when the pairs and training have taken this "
        "long, even before the last of --epochs (size --epochs to the minutes: the cosine rate "
        "reaches 0 only there)", type=positive_float_argument)
    data = p.add_argument_group("data (progressive only, default the teacher run's: reflow's data "
                                "are the teacher's pairs)")
    add(data, "--dataset", "run", "tensorflow-datasets dataset (ignored with --data-dir)",
        choices=settings.DATASETS)
    add(data, "--data-dir", "run", "folder of images the teacher was trained on")
    add(data, "--limit", "run", "a seeded random N-image subset", type=positive_int_argument)
    add(data, "--cache-dir", "run", "where the images are prepared once")
    add(data, "--no-flip", "run", "disable random horizontal flips", field="flip",
        action="store_const", const=False)
    opt = p.add_argument_group("optimization")
    defaults = settings.DISTILLATION_OPTIMIZATION
    add(opt, "--epochs", "optimization", "epochs of --steps-per-epoch steps",
        type=positive_int_argument, defaults=defaults)
    add(opt, "--batch-size", "optimization", "images per step", type=positive_int_argument)
    add(opt, "--optimizer", "optimization", "adamw or muon", choices=settings.OPTIMIZERS,
        defaults=defaults)
    add(opt, "--learning-rate", "optimization", "learning rate", type=float, defaults=defaults)
    add(opt, "--learning-rate-schedule", "optimization", "constant, or cosine decay to 0 at the "
        "last of --epochs", choices=settings.LEARNING_RATE_SCHEDULES, defaults=defaults)
    add(opt, "--precision", "optimization", "Keras dtype policy (default: the fastest measured "
        "here)", choices=settings.PRECISIONS)
    out = p.add_argument_group("output")
    add(out, "--run-dir", "run", "run folder (default: runs/<timestamp>)")
    add(out, "--plot-every", "run", "save sample grids every N epochs", type=positive_int_argument)
    add(out, "--keep-checkpoints", "run", "epoch checkpoints to keep", type=positive_int_argument)
    add(out, "--seed", "run", "seed for the pairs, data order, noise and samples", type=int)
    p.add_argument("--resume", default=argparse.SUPPRESS, metavar="RUN_DIR",
                   help="continue an interrupted distillation after its last completed epoch, with "
                        "its saved settings; only --epochs, --minutes, --plot-every and "
                        "--keep-checkpoints may change")
    return p


def config_from_args(args):
    """A new distillation's settings: training's defaults, `DISTILLATION_OPTIMIZATION`, the flags,
    and the teacher's checkpoint (found as generate.py finds one)."""
    from diffusion_keras import runs

    given = given_settings(args)
    optimization = {**settings.DISTILLATION_OPTIMIZATION, **given.get("optimization", {})}
    teacher = os.path.abspath(runs.find_checkpoint(args.checkpoint))
    config = settings.TrainingConfig().updated({
        **given, "optimization": optimization,
        settings.DISTILLATION: {**given.get(settings.DISTILLATION, {}), "teacher": teacher}})
    run_given = given.get("run", {})
    if config.distillation.method == "progressive" and not {"data_dir", "dataset"} & set(run_given):
        data = teachers_data(teacher)
        config = config.updated({"run": {name: value for name, value in data.items()
                                         if name not in run_given}})
    return config


def teachers_data(teacher):
    """The data settings of the run that trained `teacher` (its run folder's config.json), which
    progressive distillation noises unless --data-dir or --dataset say otherwise."""
    run_dir = os.path.dirname(os.path.dirname(teacher))
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"progressive distillation noises the teacher's training images, and "
                         f"{teacher!r} is not in a run folder that names them: pass --data-dir "
                         "or --dataset")
    run = settings.read_config(path).run
    return {"data_dir": run.data_dir, "dataset": run.dataset, "limit": run.limit}


def open_distillation(args):
    """The settings, the teacher's config and the resume point (None for a new run), all checked
    before any data is read or any folder made."""
    from diffusion_keras import distillation, runs
    from diffusion_keras.training import check_resume

    if hasattr(args, "resume"):
        if args.checkpoint:
            raise UsageError("--resume continues with the run's own teacher; drop --checkpoint")
        run_dir, config = resumed_config(args, parser)
        resume_from = runs.resume_point(run_dir)
        for _, reason in resume_from.skipped:
            print(f"warning: {reason}; skipping it", file=sys.stderr)
        check_resume(run_dir, config, resume_from)
        return config.updated({"run": {"run_dir": run_dir}}), resume_from
    config = config_from_args(args)
    if config.run.run_dir:
        runs.check_new_run_dir(config.run.run_dir)
    distillation.check_teacher(runs.saved_model_config(config.distillation.teacher),
                               config.distillation)  # read, not built: distill loads it
    return config, None


def training_images(config):
    """(images, labels) progressive distillation noises, read as train.py reads them; reflow: none."""
    from diffusion_keras import runs
    from diffusion_keras.data import open_images

    if config.distillation.method != "progressive":
        return None, None
    teacher = runs.saved_model_config(config.distillation.teacher)
    run = config.run
    images = open_images(teacher.image_size, run.dataset, run.data_dir, run.limit, run.seed,
                         teacher.channels, run.cache_dir, conditional=bool(teacher.class_names))
    if not teacher.class_names:
        return images, None
    if tuple(images.class_names) != teacher.class_names:
        raise UsageError(f"the data's classes {list(images.class_names)} are not the teacher's "
                         f"{list(teacher.class_names)}; distil on the data it was trained on")
    return images, images.labels


def distill_from_args(args):
    from diffusion_keras import distillation, runs

    config, resume_from = open_distillation(args)
    images, labels = training_images(config)
    run_dir = config.run.run_dir
    if resume_from is not None:
        print(f"resuming {run_dir} after epoch {resume_from.epoch} of {config.optimization.epochs}")
    else:
        run_dir = run_dir or runs.new_run_dir()
        teacher = runs.saved_model_config(config.distillation.teacher)
        print(f"{distillation.describe(config, teacher)}; run folder {run_dir}")
    made_here = resume_from is None and not config.run.run_dir
    code = run_in_folder(lambda: distillation.distill(
        run_dir, config.updated({"run": {"run_dir": run_dir}}), images, labels, resume_from,
        verbose=progress_verbosity()), run_dir, made_here, "distill.py")
    if code:
        return code
    student = runs.find_checkpoint(run_dir)
    print(f"done: the student is {student}; sample it with python generate.py --checkpoint "
          f"{run_dir} --steps {min(config.distillation.calls)}")
    return 0


def main(argv=None):
    return run(distill_from_args, parser().parse_args(argv), what="distilling")


if __name__ == "__main__":
    sys.exit(main())
