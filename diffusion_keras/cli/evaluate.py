"""python evaluate.py: KID and FID of a checkpoint's EMA samples against real images."""

import sys

from diffusion_keras.checks import non_negative_int_argument, positive_int_argument
from diffusion_keras.cli import (
    Parser,
    add_checkpoint_argument,
    add_distribute_argument,
    add_ema_length_argument,
    add_sampling_arguments,
    run,
    sampler_options,
    sampling_settings,
)
from diffusion_keras.config import DATASETS, INCEPTION_SIZE


def parser():
    p = Parser(description="Score a trained diffusion model with KID and FID (InceptionV3 features).")
    add_checkpoint_argument(p)
    p.add_argument("--num-images", type=positive_int_argument, default=10000, help="images to generate")
    p.add_argument("--dataset", default="cifar10", choices=DATASETS,
                   help="tensorflow-datasets dataset of real images (ignored with --data-dir)")
    p.add_argument("--split", default="train", choices=("train", "test"), help="tfds split")
    p.add_argument("--data-dir", help="folder of real images instead of a tfds dataset")
    p.add_argument("--limit", type=positive_int_argument,
                   help="use a seeded random N-image subset of the real images")
    p.add_argument("--features", default="auto", choices=("auto", "inception", "cifar10"),
                   help="feature space: InceptionV3 (FID, KID), or the project's CIFAR-10 classifier "
                        "(FD-cifar10, KD-cifar10: offline, for 32x32 RGB models); auto: InceptionV3 "
                        "when its weights can be had, else cifar10")
    p.add_argument("--inception-weights", default="imagenet",
                   help="'imagenet' (downloaded once), a local no-top .h5 file, or 'random' "
                        "(mechanics only: numbers not comparable)")
    p.add_argument("--inception-size", type=positive_int_argument, default=INCEPTION_SIZE,
                   help="InceptionV3 input size (images are resized to it; at least 75)")
    p.add_argument("--kid-images", type=positive_int_argument, default=1000, help="images per side for KID")
    p.add_argument("--batch-size", type=positive_int_argument,
                   help="images per batch (default: 256 on a GPU, 64 on a CPU)")
    p.add_argument("--seed", type=non_negative_int_argument, default=0,
                   help="seed of the generated images (and of the real-image subset)")
    p.add_argument("--cache-dir", help="where reference statistics are cached "
                                       "(default: ~/.cache/diffusion_keras/reference)")
    p.add_argument("--nearest", type=positive_int_argument, metavar="K",
                   help="memorisation check: each sample's K nearest real images (in pixels and "
                        "features), the share of near-copies and a picture of them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_distribute_argument(p)
    add_sampling_arguments(p)
    add_ema_length_argument(p, several=True)
    return p


def evaluate_from_args(args):
    from diffusion_keras import distributed, posthoc_ema, runs
    from diffusion_keras.evaluation import evaluate

    sampler_options(args)  # options of another sampler fail before any checkpoint is looked for
    checkpoint = runs.find_checkpoint(args.checkpoint)
    saved = runs.saved_model_config(checkpoint)
    sampling = sampling_settings(args, saved)
    for length in args.ema_length or ():
        posthoc_ema.check_length(checkpoint, length)
    if args.distribute:
        distributed.start()  # before the model's variables are made
    weights = None if args.inception_weights == "random" else args.inception_weights
    results = []
    for length in args.ema_length or [None]:
        results.append(evaluate(
            checkpoint, args.num_images, args.steps, args.dataset,
            args.split, args.data_dir, args.limit, weights, args.inception_size, args.kid_images,
            args.batch_size, args.seed, args.cache_dir, features=args.features, sampling=sampling,
            verbose=not args.quiet, ema_length=length, nearest=args.nearest,
        ))
        report(results[-1], saved.augment)
    if len(results) > 1:
        name = "fid" if results[0]["features"] == "inception" else "fd_cifar10"
        best = min(results, key=lambda result: result[name])
        lengths = ", ".join(f"{result['ema_length']:g}" for result in results)
        print(f"best EMA length: {best['ema_length']:g} ({name.upper().replace('_', '-')} "
              f"{best[name]:.6g}; lengths {lengths})")
    return 0


def report(result, augment):
    """Print one evaluation's scores and what they were measured against (and, where the
    memorisation check found near-copies, what to do for a model trained with `augment`)."""
    from diffusion_keras import distributed, memorization

    real = result.get("data_dir") or f"{result['dataset']} {result['split']} split"
    reference = "reused from" if result["reference_reused"] else "cached in"
    if result["features"] == "inception":
        scores = f"KID {result['kid']:.6g}  FID {result['fid']:.6g}"
        space = f"inception weights {result['inception_weights']}"
    else:
        scores = f"KD-cifar10 {result['kd_cifar10']:.6g}  FD-cifar10 {result['fd_cifar10']:.6g}"
        space = "the project's CIFAR-10 classifier features: not comparable with FID/KID"
    network = ("EMA network" if result["ema_length"] is None
               else f"post-hoc EMA of length {result['ema_length']:g}")
    print(f"{scores}  ({result['num_images']} images, {result['sampler']} {result['steps']} steps, "
          f"{network}, "
          f"against {result['num_real_images']} real images of {real}; {space})")
    print(f"reference statistics {reference} {result['reference_cache']}")
    if "nearest" in result:
        print(f"memorisation check: {result['nearest']['near_copies']} of "
              f"{result['nearest']['samples']} samples are near-copies of real images "
              f"({result['nearest']['rule']}); picture {result['nearest']['picture']}")
        remedy = memorization.advice(result["nearest"], augment)
        if remedy:
            print(remedy)
    if distributed.is_writer():
        print(f"wrote {result['path']}")


def main(argv=None):
    return run(evaluate_from_args, parser().parse_args(argv), what="evaluating")


if __name__ == "__main__":
    sys.exit(main())
