"""python generate.py: sample an image grid (and an interpolation strip and GIF) from a checkpoint;
from a class-conditional one, a row per class at one or several guidance weights."""

import os
import re
import sys

from diffusion_keras.cli import (
    Parser,
    add_checkpoint_argument,
    add_sampling_arguments,
    non_negative_float_list,
    non_negative_int,
    positive_int,
    run,
    sampling_settings,
)
from diffusion_keras.errors import UsageError

GRID_IMAGES, IMAGES_PER_CLASS = 36, 8


def parser():
    p = Parser(
        description="Generate images with a trained diffusion model.",
    )
    add_checkpoint_argument(p)
    p.add_argument("--num-images", type=positive_int,
                   help=f"images in the grid (default: {GRID_IMAGES}); with --class, images per "
                        f"class (default: {IMAGES_PER_CLASS})")
    p.add_argument("--class", dest="classes", action="append", metavar="NAME_OR_INDEX",
                   help="a class of a class-conditional model, by name or index: one row of "
                        "--num-images images per class, the same seeds in every row (repeatable; "
                        "'all': every class)")
    p.add_argument("--guidance", type=non_negative_float_list,
                   help="classifier-free guidance weight for --class (0: unconditional, "
                        "1: conditional, above 1: more typical of the class; default: 1); several, "
                        "e.g. 0,1,3,7, draw one column group per weight, side by side")
    p.add_argument("--interpolate", action="store_true",
                   help="also render a spherical interpolation between two noises (strip and GIF)")
    p.add_argument("--frames", type=positive_int, default=8, help="images in the interpolation")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="image i depends only on (seed, i) and the sampler settings")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per sampler call (default: 256 on a GPU, 64 on a CPU); changes "
                        "speed, not images")
    p.add_argument("--individual", action="store_true", help="also save each image as its own PNG")
    p.add_argument("--output", help="output folder (default: <run folder>/generated)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampling_arguments(p)
    return p


def default_output(checkpoint):
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.basename(folder) == "checkpoints":
        folder = os.path.dirname(folder)
    return os.path.join(folder, "generated")


def chosen_classes(model, args):
    """The class indices --class names ('all': every class), or None; checked before sampling."""
    if (args.classes or args.guidance) and not model.config.class_names:
        raise UsageError("--class and --guidance need a class-conditional model (trained with "
                         "train.py --conditional); this checkpoint is unconditional")
    if args.guidance and not args.classes:
        raise UsageError("--guidance steers towards classes: add --class NAME (or --class all)")
    if not args.classes:
        return None
    every = range(len(model.config.class_names))
    return list(every) if "all" in args.classes else model.class_indices(args.classes)


def generate_from_args(args):
    from diffusion_keras import backend, runs
    from diffusion_keras.interpolation import interpolation_images
    from diffusion_keras.plotting import (
        image_grid,
        plot_image_table,
        save_gif,
        save_image_grid,
        save_png,
    )
    from diffusion_keras.samplers import network_evaluations

    sampling = sampling_settings(args)
    checkpoint = runs.find_checkpoint(args.checkpoint)
    output = runs.check_creatable(args.output or default_output(checkpoint), "output folder",
                                  "--output")  # before any sampling, so no work is lost
    model = runs.load_checkpoint(checkpoint)
    classes = chosen_classes(model, args)
    guidances = args.guidance or [1.0]
    name = base = f"{args.sampler}_seed{args.seed}_steps{args.steps}"
    batch_size = args.batch_size or backend.default_sample_batch_size()
    settings = {"seed": args.seed, "batch_size": batch_size, **sampling}

    def save_individually(images, prefix):
        for index, image in enumerate(images):
            save_png((image * 255).round().astype("uint8"),
                     os.path.join(output, f"{prefix}_{index:04d}.png"))

    if classes is None:
        num_images = args.num_images or GRID_IMAGES
        images = model.generate(num_images, args.steps, verbose=not args.quiet, **settings)
        os.makedirs(output, exist_ok=True)
        written = [save_image_grid(images, os.path.join(output, f"samples_{name}.png"))]
        if args.individual:
            save_individually(images, f"sample_{name}")
        names = None
    else:
        # rows[g][c]: class c at guidance g; every row holds images 0.. of the seed
        num_images = args.num_images or IMAGES_PER_CLASS
        rows = [[model.generate(num_images, args.steps, labels=index, guidance=guidance,
                                verbose=False if args.quiet else "auto", **settings)
                 for index in classes] for guidance in guidances]
        names = [model.config.class_names[index] for index in classes]
        weights = [f"{guidance:g}" for guidance in guidances]
        chosen = "all" if "all" in args.classes else "-".join(re.sub(r"[^\w.]+", "_", class_name)
                                                               for class_name in names)
        name = f"{base}_classes-{chosen}_guidance{'-'.join(weights)}"
        os.makedirs(output, exist_ok=True)
        path = os.path.join(output, f"samples_{name}.png")
        plot_image_table([[image_grid(row, rows=1) / 255.0 for row in group] for group in rows],
                         [f"guidance {weight}" for weight in weights],
                         f"Rows: classes; images 0-{num_images - 1} of seed {args.seed} in each row",
                         path, size=1.0, row_titles=names)
        written = [path]
        if args.individual:
            for weight, group in zip(weights, rows):
                for index, row in zip(classes, group):
                    save_individually(row, f"sample_{base}_class{index}_guidance{weight}")
    if args.interpolate:
        frames = interpolation_images(model, args.frames, args.steps, args.seed, **sampling)
        written.append(save_image_grid(frames, os.path.join(output, f"interpolation_{base}.png"),
                                       rows=1))
        pictures = [image_grid(frame[None], padding=0) for frame in [*frames, *frames[-2:0:-1]]]
        written.append(save_gif(pictures, os.path.join(output, f"interpolation_{base}.gif"),
                                final_hold=120))
    runs.write_json(os.path.join(output, f"samples_{name}.json"), {
        "checkpoint": os.path.abspath(checkpoint), **sampling, "steps": args.steps,
        "network_evaluations": network_evaluations(args.sampler, args.steps),
        "num_images": num_images, "batch_size": batch_size, "seed": args.seed,
        "classes": names, "guidance": guidances if names else None, "files": written,
    })
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv=None):
    return run(generate_from_args, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
