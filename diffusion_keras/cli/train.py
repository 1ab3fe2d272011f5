"""python train.py: train a diffusion model and leave a run folder behind.

Every flag sets one field of a `config.TrainingConfig` section (its `dest` is "section.field"), so
the settings' defaults live in `config.py` only; `--config FILE` starts from a saved config instead.
"""

import argparse
import os
import sys

from diffusion_keras import config as settings
from diffusion_keras.checks import positive_int_argument, positive_int_list_argument
from diffusion_keras.cli import Parser, run
from diffusion_keras.errors import UsageError, counted


def shown(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


SECTION_CLASSES = {**settings.SECTIONS, settings.DISTILLATION: settings.DistillationConfig}


def add(group, flag, section, help, field=None, defaults=None, **kwargs):
    """A flag for `section.field`: absent from the parsed namespace unless given, so a config file
    and the dataclass defaults stay underneath; --help shows the default from `config.py` (or from
    `defaults`, {field: value}, where a command starts from other ones)."""
    field = field or flag[2:].replace("-", "_")
    default = (defaults or {}).get(field, getattr(SECTION_CLASSES[section](), field))
    if kwargs.get("action") != "store_const":
        if default is not None:
            help = f"{help} (default: {shown(default)})"
        if "choices" not in kwargs:
            kwargs["metavar"] = field.upper()
    group.add_argument(flag, dest=f"{section}.{field}", default=argparse.SUPPRESS, help=help,
                       **kwargs)


def parser():
    p = Parser(description="Train a denoising diffusion model on images.")
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="start from the settings in a JSON file (a run's config.json, or sections "
                        "'model', 'optimization', 'run' written by hand); flags override it")
    p.add_argument("--recipe", default=argparse.SUPPRESS, choices=sorted(settings.RECIPES),
                   help="start from a named recipe instead of the defaults: keras-io is the 2022 "
                        "keras-io DDIM recipe (the defaults before the measured one; BENCHMARKS.md)")
    sizes = ", ".join(f"{name} ({settings.PRESET_PARAMETERS[name] / 1e6:.1f}M parameters)"
                      for name in settings.PRESETS)
    p.add_argument("--preset", default=argparse.SUPPRESS, choices=list(settings.PRESETS),
                   metavar="NAME",
                   help=f"model size with the batch size, learning rate and EMA that suit it: "
                        f"{sizes}; default cifar (--recipe, --config and flags go on top)")
    data = p.add_argument_group("data")
    add(data, "--dataset", "run", "tensorflow-datasets dataset (ignored with --data-dir)",
        choices=settings.DATASETS)
    add(data, "--data-dir", "run", "folder of images (searched recursively) to train on")
    add(data, "--image-size", "model", "square image size", type=positive_int_argument)
    add(data, "--limit", "run", "train on a seeded random N-image subset", type=positive_int_argument)
    add(data, "--no-flip", "run", "disable random horizontal flips (on for natural images)",
        field="flip", action="store_const", const=False)
    add(data, "--validation-split", "run", "fraction held out to score the EMA network each epoch",
        type=float)
    add(data, "--cache-dir", "run", "where the images are prepared once (decoded and resized into "
        "one file that training reads batch by batch; default: ~/.cache/diffusion_keras/images)")
    add(data, "--conditional", "run", "learn the class labels (tensorflow-datasets' label, or the "
        "first-level sub-folders of --data-dir) for generate.py --class and --guidance",
        action="store_const", const=True)
    add(data, "--label-dropout", "model", "with --conditional: fraction of labels dropped to 'no "
        "class', so the network also learns the unconditional prediction guidance needs",
        type=float)
    add(data, "--augment", "model", "EDM's non-leaky augmentation: the probability of each "
        "transform (x-flip, quarter turns, integer shifts, scalings) per training image, told to "
        "the network and zero when sampling, so samples show none; for small folders (e.g. 0.12, "
        "EDM's for CIFAR-10; docs/own-images.md), 0: off", type=float)
    add(data, "--init-from", "run", "fine-tune: start from this trained model (a .keras file or "
        "run folder) and its settings, on these images, in a new run folder (its EMA weights; the "
        "normaliser adapted to the new images; architecture flags must match it)")
    add(data, "--distribute", "run", "train data-parallel on every local device (and host: see "
        "docs/scale.md), with the JAX backend", action="store_const", const=True)
    arch = p.add_argument_group("architecture")
    add(arch, "--widths", "model", "U-Net channel widths per resolution, comma-separated",
        type=positive_int_list_argument)
    add(arch, "--block-depth", "model", "residual blocks per resolution", type=positive_int_argument)
    add(arch, "--attention-resolutions", "model",
        "feature-map sides with self-attention, comma-separated (e.g. 16; '' for none)",
        type=positive_int_list_argument)
    add(arch, "--norm", "model", "normalisation in the residual blocks (none: no normalisation layers)",
        choices=settings.NORMALIZATIONS)
    add(arch, "--embedding", "model", "noise embedding joins at the input or in every residual block",
        choices=settings.EMBEDDINGS)
    add(arch, "--dropout", "model", "dropout in the residual blocks", type=float)
    diffusion = p.add_argument_group("diffusion and loss (unset: the formulation's choice)")
    add(diffusion, "--formulation", "model",
        "continuous times in [0, 1] (DDIM), integer timesteps (DDPM) or rectified flow",
        choices=settings.FORMULATIONS)
    add(diffusion, "--schedule", "model",
        "diffusion schedule (continuous: offset_cosine, ddpm: linear, flow: flow)",
        choices=settings.SCHEDULES)
    add(diffusion, "--timesteps", "model", "DDPM discrete timesteps T (with --formulation ddpm)",
        type=positive_int_argument)
    add(diffusion, "--prediction", "model",
        "what the network predicts: noise, clean image, v, or flow velocity (flow: flow; else epsilon)",
        choices=settings.TARGETS)
    add(diffusion, "--time-distribution", "model",
        "how training times are drawn (flow: logit_normal; else uniform; lognormal is EDM's)",
        choices=settings.TIME_DISTRIBUTIONS)
    add(diffusion, "--loss", "model", "training loss (flow: mse; else mae)", field="loss_function",
        choices=settings.LOSSES)
    add(diffusion, "--loss-target", "model", "the space the loss is measured in (default: the "
        "prediction's)", choices=settings.TARGETS)
    add(diffusion, "--loss-weighting", "model", "weighting across noise levels (min_snr: Hang et al.)",
        choices=settings.LOSS_WEIGHTINGS)
    add(diffusion, "--min-snr-gamma", "model", "gamma of --loss-weighting min_snr", type=float)
    opt = p.add_argument_group("optimization")
    add(opt, "--epochs", "optimization", "training epochs", type=positive_int_argument)
    add(opt, "--batch-size", "optimization", "images per step", type=positive_int_argument)
    add(opt, "--optimizer", "optimization", "adamw, or muon: orthogonalised updates for the "
        "U-Net's kernels (Jordan et al. 2024), AdamW for the rest", choices=settings.OPTIMIZERS)
    add(opt, "--learning-rate", "optimization", "peak learning rate", type=float)
    add(opt, "--learning-rate-schedule", "optimization",
        "after the warm-up: constant, or cosine decay to 0 at the last epoch",
        choices=settings.LEARNING_RATE_SCHEDULES)
    add(opt, "--warmup-steps", "optimization", "optimizer updates of linear learning-rate warm-up",
        type=int)
    add(opt, "--weight-decay", "optimization", "decoupled weight decay", type=float)
    add(opt, "--ema", "model", "EMA momentum of the sampling network", type=float)
    add(opt, "--ema-warmup", "model",
        "EMA warm-up power p: momentum min(--ema, 1 - (1 + updates)^-p); 0: --ema from the start",
        type=float)
    add(opt, "--posthoc-ema", "model", "also keep EDM2's power-function EMA averages (relative "
        f"widths {shown(settings.POSTHOC_EMA_WIDTHS)}) and snapshots of them, so any EMA length "
        "can be rebuilt after training (generate.py/evaluate.py --ema-length)",
        action="store_const", const=settings.POSTHOC_EMA_WIDTHS)
    add(opt, "--ema-snapshots", "run", "with --posthoc-ema: snapshots spread over the run (each "
        "holds two copies of the network's weights)", type=positive_int_argument)
    add(opt, "--clip-norm", "optimization",
        "clip gradients to this global norm (e.g. 1.0) if the loss diverges (default: off)",
        type=float)
    add(opt, "--precision", "optimization",
        "Keras dtype policy (default: the fastest measured here; see BENCHMARKS.md)",
        choices=settings.PRECISIONS)
    add(opt, "--accumulate-steps", "optimization",
        "average gradients over N batches per update (large batches, less memory)",
        type=positive_int_argument)
    out = p.add_argument_group("output")
    add(out, "--run-dir", "run", "run folder (default: runs/<timestamp>)")
    add(out, "--plot-every", "run", "save a sample grid every N epochs", type=positive_int_argument)
    add(out, "--keep-checkpoints", "run", "epoch checkpoints to keep (best.keras is kept as well)",
        type=positive_int_argument)
    add(out, "--eval-every", "run", "score the EMA network's samples by FD every N epochs "
        "(CIFAR-10 classifier features for 32x32 RGB images, else InceptionV3's), logged beside "
        "the losses; best.keras is then the lowest FD", type=positive_int_argument)
    add(out, "--eval-images", "run", "samples per --eval-every FD", type=positive_int_argument)
    add(out, "--seed", "run", "seed for data order, noise and samples", type=int)
    add(out, "--tensorboard", "run", "also log losses, learning rate and sample grids for "
        "TensorBoard in RUN_DIR/tensorboard (tensorboard --logdir runs/); needs tensorflow",
        action="store_const", const=True)
    p.add_argument("--resume", nargs="?", const="", default=argparse.SUPPRESS, metavar="RUN_DIR",
                   help="continue an interrupted run after its last completed epoch (the newest "
                        "run under runs/ without RUN_DIR), with its saved settings; only --epochs, "
                        "--plot-every, --keep-checkpoints, --tensorboard, --cache-dir and "
                        "--distribute may change")
    return p


def given_settings(args):
    """{section: {field: value}} of the settings flags given on the command line."""
    changes = {}
    for dest, value in vars(args).items():
        if "." in dest:
            section, field = dest.split(".")
            changes.setdefault(section, {})[field] = value
    return changes


def flag_name(section, field, make_parser=None):
    for action in (make_parser or parser)()._actions:
        if action.dest == f"{section}.{field}":
            return action.option_strings[0]
    return f"{section}.{field}"


def resumed_config(args, make_parser=None):
    """The run folder and the settings saved in its config.json, with the changeable flags applied
    (`make_parser`: the command's parser, default train.py's; distill.py passes its own)."""
    from diffusion_keras import runs
    from diffusion_keras.training import RESUME_CHANGEABLE, check_made_by, resume_changes

    run_dir = args.resume or runs.newest_run()
    saved = settings.read_config(os.path.join(run_dir, "config.json"))
    check_made_by(saved, make_parser is not None, run_dir)  # only distill.py passes a parser
    config = saved.updated(given_settings(args))
    changed = resume_changes(saved, config)
    extra = [flag for flag in ("--config", "--recipe", "--preset") if hasattr(args, flag[2:])]
    if changed or extra:
        flags = ", ".join([flag_name(*name, make_parser) for name in changed] + extra)
        names = [flag_name(*name.split("."), make_parser) for name in RESUME_CHANGEABLE]
        changeable = ", ".join(name for name in names if name.startswith("--"))
        raise UsageError(f"--resume continues {run_dir!r} with its saved settings; drop {flags} "
                         f"(only {changeable} may change)")
    return run_dir, config


def config_from_args(args):
    """A new run's settings: the defaults, then the --preset, the --recipe, the --config file and
    the given flags. A config file is a template: its run folder is not reused (a new run gets
    --run-dir or a new runs/<timestamp>), nor its model's seed (the run's --seed seeds the model)."""
    base = settings.TrainingConfig().updated(settings.PRESETS.get(getattr(args, "preset", ""), {}))
    base = base.updated(settings.RECIPES.get(getattr(args, "recipe", ""), {}))
    if hasattr(args, "config"):
        base = settings.read_config(args.config, base).updated({"run": {"run_dir": None},
                                                                "model": {"seed": None}})
    given = given_settings(args)
    saved = None
    if "init_from" in given.get("run", {}):
        base, saved = fine_tuning_base(base, given["run"])
    config = base.updated(given)
    if saved is not None:  # before any data (its classes are checked by train)
        from diffusion_keras import fine_tuning

        fine_tuning.check_architecture(config.model.replace(class_names=saved.class_names), saved,
                                       config.run.init_from)
    if config.distillation is not None:
        raise UsageError(f"{args.config} is a distillation run's config (distill.py made it); "
                         "train.py --config takes a training run's config.json")
    if "timesteps" in given.get("model", {}) and config.model.formulation != "ddpm":
        raise UsageError(f"--timesteps sets the DDPM formulation's integer steps; the "
                         f"{config.model.formulation} formulation has none: drop it, or add "
                         "--formulation ddpm")
    return config


def fine_tuning_base(base, run_flags):
    """(`base` with the model section of the checkpoint `--init-from` names, that checkpoint's
    `ModelConfig`); its path is resolved to the .keras file in `run_flags`. A fine-tuned run learns
    what that model learnt, unless flags say otherwise; its seed and classes are the new run's."""
    from diffusion_keras import runs

    checkpoint = os.path.abspath(runs.find_checkpoint(run_flags["init_from"]))
    run_flags["init_from"] = checkpoint
    saved = runs.saved_model_config(checkpoint)
    model = saved.to_dict()
    for name in ("seed", "class_names", "distillation", "student_calls", "teacher_steps"):
        model.pop(name)
    return base.updated({"model": model}), saved


def open_run(args):
    """The settings and resume point (None for a new run), checked before any data. A multi-host
    run joins the other processes here, before any model is loaded."""
    from diffusion_keras import distributed, runs
    from diffusion_keras.training import check_resume

    if not hasattr(args, "resume"):
        config = config_from_args(args)
        if config.run.distribute:
            distributed.start(config.optimization.batch_size)
        if config.run.run_dir:
            runs.check_new_run_dir(config.run.run_dir)
        return config, None
    run_dir, config = resumed_config(args)
    if config.run.distribute:
        distributed.start(config.optimization.batch_size)
    resume_from = runs.resume_point(run_dir)
    for _, reason in resume_from.skipped:
        print(f"warning: {reason}; skipping it", file=sys.stderr)
    check_resume(run_dir, config, resume_from)  # before any data is read
    return config.updated({"run": {"run_dir": run_dir}}), resume_from


def open_run_images(config, resume_from):
    """The run's prepared images (prepared now if needed), with a note where a resumed run's data
    no longer matches what it started on."""
    from diffusion_keras.data import open_images

    run = config.run
    channels = resume_from.model.config.channels if resume_from is not None else None
    if run.init_from is not None:  # the fine-tuned model's
        channels = config.model.channels
    images = open_images(config.model.image_size, run.dataset, run.data_dir, run.limit, run.seed,
                         channels, run.cache_dir, conditional=run.conditional)
    if resume_from is not None:
        started_with = settings.run_metadata(os.path.join(run.run_dir, "config.json")).get(
            "num_images")
        if started_with is not None and len(images) != started_with:
            print(f"warning: the data now has {len(images)} images, the run started with "
                  f"{started_with}; the resumed run will not match an uninterrupted one",
                  file=sys.stderr)
    return images


def what_is_trained(images, config):
    """'1900 images of shape (32, 32, 3) (100 more held out to score the EMA network each epoch)'."""
    from diffusion_keras.training import MIN_VALIDATION_IMAGES, split_indices

    run = config.run
    classes = f" in {len(images.class_names)} classes" if run.conditional else ""
    trained, held_out = split_indices(len(images), run.validation_split, run.seed)
    if run.eval_every is not None:
        validation = (f"{len(held_out) if held_out is not None else 'none'} held out; FD of "
                      f"{run.eval_images} samples every {run.eval_every} epoch(s) picks best.keras")
    elif held_out is not None:
        validation = (f"{len(held_out)} more held out to score the EMA network each epoch; "
                      "best.keras is the lowest validation loss")
    elif not run.validation_split:
        validation = "none held out (--validation-split 0), so best.keras is the lowest training loss"
    else:
        validation = (f"none held out: {run.validation_split:.0%} of them would be fewer than "
                      f"{MIN_VALIDATION_IMAGES}, so best.keras is the lowest training loss")
    return f"{counted(len(trained), 'image')} of shape {images.shape[1:]}{classes} ({validation})"


def what_is_saved(run_dir, script="train.py"):
    from diffusion_keras import runs

    checkpoints = runs.run_checkpoints(run_dir)
    if not checkpoints:
        return "no epoch had completed, so nothing was saved"
    return (f"epochs up to {runs.checkpoint_epoch(checkpoints[-1])} are saved in {run_dir}; "
            f"resume with: {resume_command(run_dir, script)}")


def resume_command(run_dir, script="train.py"):
    """The command that continues `run_dir`, with the interpreter and backend this one used."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
    backend = os.environ.get("KERAS_BACKEND")
    return f"{f'KERAS_BACKEND={backend} ' if backend else ''}{python} {script} --resume {run_dir}"


def progress_verbosity():
    """Keras' progress bars only where someone watches (a terminal), else a line per epoch."""
    return 1 if sys.stdout.isatty() else 2


def run_in_folder(work, run_dir, made_here, script="train.py"):
    """`work()`, which writes `run_dir`: 0, or on Ctrl-C (130) or a failed write such as a full
    disk (1) one line of what is saved and how to resume; a folder this command made and nothing
    wrote in is removed again."""
    from diffusion_keras import runs

    try:
        work()
    except KeyboardInterrupt:
        print(f"interrupted: {what_is_saved(run_dir, script)}", file=sys.stderr)
        return 130
    except OSError as error:  # every file already written is whole
        print(f"error: {error}; {what_is_saved(run_dir, script)}", file=sys.stderr)
        return 1
    finally:
        if made_here:
            runs.release_run_dir(run_dir)  # only if the run never started (the folder is empty)
    return 0


def train_from_args(args):
    from diffusion_keras import distributed, runs, training

    config, resume_from = open_run(args)
    images = open_run_images(config, resume_from)
    run_dir, made_here = config.run.run_dir, not config.run.run_dir and distributed.is_writer()
    if resume_from is not None:
        print(f"resuming {run_dir} after epoch {resume_from.epoch} of {config.optimization.epochs}")
    else:  # a new folder is claimed only now, when every check has passed and the data is ready
        run_dir = run_dir or distributed.shared_value("run_dir", runs.new_run_dir)
        print(f"training on {what_is_trained(images, config)}; run folder {run_dir}")
    code = run_in_folder(lambda: training.train(
        images, run_dir, config.updated({"run": {"run_dir": run_dir}}), verbose=progress_verbosity(),
        resume_from=resume_from), run_dir, made_here)
    if code:
        return code
    print(f"done: checkpoints in {os.path.join(run_dir, runs.CHECKPOINT_DIR)}, samples in "
          f"{os.path.join(run_dir, runs.SAMPLES_DIR)}, log in {os.path.join(run_dir, 'log.csv')}")
    return 0


def main(argv=None):
    return run(train_from_args, parser().parse_args(argv), what="training")


if __name__ == "__main__":
    sys.exit(main())
