"""python train.py: train a diffusion model and leave a run folder behind."""

import functools
import os
import signal
import sys

from diffusion_keras.cli import Parser, int_list, positive_int, run
from diffusion_keras.data import TFDS_DATASETS, load_images
from diffusion_keras.errors import UsageError
from diffusion_keras.layers import NORMALIZATIONS
from diffusion_keras.model import FORMULATIONS, LOSSES
from diffusion_keras.schedules import SCHEDULES
from diffusion_keras.targets import TARGETS
from diffusion_keras.unet import DEFAULT_WIDTHS, EMBEDDINGS, check_image_size

RESUME_CHANGEABLE = ("resume", "epochs", "plot_every", "keep_checkpoints")


def parser():
    p = Parser(
        description="Train a denoising diffusion model (DDIM) on images.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="cifar10", choices=TFDS_DATASETS,
                      help="tensorflow-datasets dataset (ignored with --data-dir)")
    data.add_argument("--data-dir", help="folder of images (searched recursively) to train on")
    data.add_argument("--image-size", type=positive_int, default=32, help="square image size")
    data.add_argument("--limit", type=positive_int, help="train on a seeded random N-image subset")
    data.add_argument("--no-flip", action="store_true",
                      help="disable random horizontal flips (on for natural images)")
    data.add_argument("--validation-split", type=float, default=0.05,
                      help="fraction held out to score the EMA network each epoch")
    arch = p.add_argument_group("architecture")
    arch.add_argument("--widths", type=int_list, default=list(DEFAULT_WIDTHS),
                      help="U-Net channel widths per resolution, comma-separated")
    arch.add_argument("--block-depth", type=positive_int, default=2,
                      help="residual blocks per resolution")
    arch.add_argument("--schedule", choices=sorted(SCHEDULES),
                      help="diffusion schedule (default: offset_cosine; linear with --formulation ddpm)")
    arch.add_argument("--formulation", default="continuous", choices=FORMULATIONS,
                      help="continuous times in [0, 1] (DDIM) or integer timesteps (DDPM)")
    arch.add_argument("--timesteps", type=positive_int, default=1000,
                      help="DDPM discrete timesteps T (with --formulation ddpm)")
    arch.add_argument("--prediction", default="epsilon", choices=TARGETS,
                      help="what the network predicts: noise, clean image or velocity")
    arch.add_argument("--loss", default="mae", choices=LOSSES, help="training loss")
    arch.add_argument("--loss-target", default="epsilon", choices=TARGETS,
                      help="the space the loss is measured in")
    arch.add_argument("--attention-resolutions", type=int_list, default=[],
                      help="feature-map sides with self-attention, comma-separated (e.g. 16)")
    arch.add_argument("--norm", default="batch", choices=NORMALIZATIONS,
                      help="normalisation in the residual blocks")
    arch.add_argument("--embedding", default="input", choices=EMBEDDINGS,
                      help="noise embedding joins at the input or in every residual block")
    arch.add_argument("--dropout", type=float, default=0.0, help="dropout in the residual blocks")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--epochs", type=positive_int, default=50, help="training epochs")
    opt.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    opt.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate")
    opt.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    opt.add_argument("--ema", type=float, default=0.999, help="EMA momentum of the sampling network")
    opt.add_argument("--clip-norm", type=float,
                     help="clip gradients to this global norm (e.g. 1.0) if the loss diverges")
    opt.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                     help="Keras dtype policy (default: the fastest measured here; see BENCHMARKS.md)")
    opt.add_argument("--accumulate-steps", type=positive_int, default=1,
                     help="average gradients over N batches per update (large batches, less memory)")
    out = p.add_argument_group("output")
    out.add_argument("--run-dir", help="run folder (default: runs/<timestamp>)")
    out.add_argument("--plot-every", type=positive_int, default=1,
                     help="save a sample grid every N epochs")
    out.add_argument("--keep-checkpoints", type=positive_int, default=3,
                     help="epoch checkpoints to keep (best.keras is kept as well)")
    out.add_argument("--seed", type=int, default=0, help="seed for data order, noise and samples")
    out.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                     help="continue an interrupted run after its last completed epoch (the newest "
                          "run under runs/ without RUN_DIR), with its saved settings; only --epochs, "
                          "--plot-every and --keep-checkpoints may change")
    return p


def model_options(args):
    """The settings beyond the basic architecture (formulation, target, U-Net, precision)."""
    return {"formulation": args.formulation, "timesteps": args.timesteps,
            "prediction": args.prediction, "loss_function": args.loss,
            "loss_target": args.loss_target, "attention_resolutions": args.attention_resolutions,
            "norm": args.norm, "embedding": args.embedding, "dropout": args.dropout,
            "precision": args.precision, "accumulate_steps": args.accumulate_steps}



def resumed_args(args, argv):
    """The settings saved in the resumed run's config.json, with the changeable flags of `argv`."""
    from diffusion_keras import runs

    run_dir = args.resume or runs.newest_run()
    config = runs.read_json(os.path.join(run_dir, "config.json"), "run settings")
    saved = parser()
    saved.set_defaults(**config)
    merged = saved.parse_args(argv)
    changed = [name for name, value in vars(merged).items()
               if name in config and name not in RESUME_CHANGEABLE and value != config[name]]
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise UsageError(f"--resume continues {run_dir!r} with its saved settings; drop {flags} "
                         "(only --epochs, --plot-every and --keep-checkpoints may change)")
    merged.run_dir = run_dir
    return merged


def interrupt(signum, frame):
    raise KeyboardInterrupt


def open_run(args, argv):
    """The settings, run folder and resume point (None for a new run), checked before any data."""
    from diffusion_keras import runs

    if args.resume is None:
        check_image_size(args.image_size, args.widths)
        run_dir = runs.prepare_run_dir(args.run_dir) if args.run_dir else runs.new_run_dir()
        return args, run_dir, None
    args = resumed_args(args, argv)
    run_dir = runs.prepare_run_dir(args.run_dir)
    resume_from = runs.resume_point(run_dir)
    for _, reason in resume_from.skipped:
        print(f"warning: {reason}; skipping it", file=sys.stderr)
    if args.epochs <= resume_from.epoch:
        raise UsageError(f"run {run_dir!r} has completed {resume_from.epoch} of --epochs "
                         f"{args.epochs}; pass a larger --epochs to train it further")
    return args, run_dir, resume_from


def fit_run(args, run_dir, resume_from):
    from diffusion_keras import runs, training

    images = load_images(args.image_size, args.dataset, args.data_dir, args.limit, args.seed)
    if resume_from is not None and len(images) != args.num_images:
        print(f"warning: the data now has {len(images)} images, the run started with "
              f"{args.num_images}; the resumed run will not match an uninterrupted one",
              file=sys.stderr)
    flip = not args.no_flip and (args.data_dir is not None or args.dataset not in (
        "mnist", "fashion_mnist"))
    runs.write_json(os.path.join(run_dir, "config.json"), {
        **vars(args), "resume": None, "channels": int(images.shape[-1]), "num_images": len(images),
        "flip": flip,
    })
    if resume_from is None:
        print(f"training on {len(images)} images of shape {images.shape[1:]}; run folder {run_dir}")
    else:
        print(f"resuming {run_dir} after epoch {resume_from.epoch} of {args.epochs}")
    training.train(
        images, run_dir, args.epochs, args.batch_size, args.widths, args.block_depth,
        args.schedule, args.ema, args.learning_rate, args.weight_decay, args.seed, flip,
        args.validation_split, args.plot_every, args.keep_checkpoints,
        verbose=1 if sys.stdout.isatty() else 2,  # progress bars only where someone watches
        clip_norm=args.clip_norm, resume_from=resume_from,
        model_options=model_options(args),
    )


def what_is_saved(run_dir):
    from diffusion_keras import runs

    checkpoints = runs.run_checkpoints(run_dir)
    if not checkpoints:
        return "no epoch had completed, so nothing was saved"
    return (f"epochs up to {runs.checkpoint_epoch(checkpoints[-1])} are saved in {run_dir}; "
            f"resume with: python train.py --resume {run_dir}")


def train_from_args(args, argv=None):
    from diffusion_keras import runs

    args, run_dir, resume_from = open_run(args, argv)
    previous_handler = signal.signal(signal.SIGTERM, interrupt)  # a scheduler's kill = Ctrl-C
    try:
        fit_run(args, run_dir, resume_from)
    except KeyboardInterrupt:
        print(f"interrupted: {what_is_saved(run_dir)}", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, say: every file already written is whole
        print(f"error: {error}; {what_is_saved(run_dir)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"done: checkpoints in {os.path.join(run_dir, runs.CHECKPOINT_DIR)}, samples in "
          f"{os.path.join(run_dir, runs.SAMPLES_DIR)}, log in {os.path.join(run_dir, 'log.csv')}")
    return 0


def main(argv=None):
    return run(functools.partial(train_from_args, argv=argv), parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
