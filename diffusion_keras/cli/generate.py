"""python generate.py: sample an image grid (and an interpolation strip and GIF) from a checkpoint;
from a class-conditional one, a row per class at one or several guidance weights.

Every file of one call is named by everything that changes its images (checkpoint, sampler and its
settings, grid, calls, seed, count, classes, guidance), and the call's JSON, which lists them, is
written last and removed first: where the JSON is, its files are whole and from that one call.
"""

import os
import re
import shutil
import sys

from diffusion_keras.checks import (
    non_negative_float_list_argument,
    non_negative_int_argument,
    positive_int_argument,
)
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
from diffusion_keras.errors import UsageError

GRID_IMAGES, IMAGES_PER_CLASS = 36, 8


def parser():
    p = Parser(
        description="Generate images with a trained diffusion model.",
    )
    add_checkpoint_argument(p)
    p.add_argument("--num-images", type=positive_int_argument,
                   help=f"images in the grid (default: {GRID_IMAGES}); with --class, images per "
                        f"class (default: {IMAGES_PER_CLASS})")
    p.add_argument("--class", dest="classes", action="append", metavar="NAME_OR_INDEX",
                   help="a class of a class-conditional model, by name or index: one row of "
                        "--num-images images per class, the same seeds in every row (repeatable; "
                        "'all': every class)")
    p.add_argument("--guidance", type=non_negative_float_list_argument,
                   help="classifier-free guidance weight for --class (0: unconditional, "
                        "1: conditional, above 1: more typical of the class; default: 1); several, "
                        "e.g. 0,1,3,7, draw one column group per weight, side by side")
    p.add_argument("--interpolate", action="store_true",
                   help="also render a spherical interpolation between two noises (strip and GIF)")
    p.add_argument("--frames", type=positive_int_argument, default=8, help="images in the interpolation")
    p.add_argument("--seed", type=non_negative_int_argument, default=0,
                   help="image i depends only on (seed, i) and the sampler settings")
    p.add_argument("--batch-size", type=positive_int_argument,
                   help="images per sampler call (default: 256 on a GPU, 64 on a CPU); changes "
                        "speed, not images")
    p.add_argument("--individual", action="store_true",
                   help="also save each image as its own PNG, in a sub-folder named like the grid")
    p.add_argument("--output", help="output folder (default: <run folder>/generated)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--save-checkpoint", metavar="PATH",
                   help="with --ema-length: also save the model with that EMA as a .keras file, "
                        "which every command then loads like any checkpoint")
    add_distribute_argument(p)
    add_sampling_arguments(p)
    add_ema_length_argument(p)
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


def safe(text):
    return re.sub(r"[^\w.-]+", "_", text)


class Generation:
    """The files of one generate call in `output`, as a context: named from `name`, written by this
    process only if `writes` (process 0 of a multi-host run); an earlier call's JSON of the same
    name is removed first, the individual images are staged in a hidden folder and moved into
    place whole, and the JSON listing everything is written last (`finish`). Leaving the block
    with an error removes what was staged."""

    def __init__(self, output, name, writes):
        self.output, self.name, self.writes, self.written = output, name, writes, []
        self.json_path = os.path.join(output, f"samples_{name}.json")
        self.individual = os.path.join(output, f"samples_{name}")
        self.staged = os.path.join(output, f".samples_{name}.tmp{os.getpid()}")

    def __enter__(self):
        from diffusion_keras import runs

        if self.writes and os.path.isdir(self.output):
            runs.remove_stale_temporaries(self.output)
            if os.path.exists(self.json_path):  # its files are about to be replaced
                os.remove(self.json_path)
        return self

    def __exit__(self, *error):
        shutil.rmtree(self.staged, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.output, name)

    def save(self, write, path):
        """`write(path)` if this process writes; the path is listed in the JSON."""
        if self.writes:
            os.makedirs(self.output, exist_ok=True)
            write(path)
            self.written.append(path)

    def save_individually(self, images, prefix=""):
        from diffusion_keras.plotting import save_png

        if self.writes:
            os.makedirs(self.staged, exist_ok=True)
            for index, image in enumerate(images):
                save_png((image * 255).round().astype("uint8"),
                         os.path.join(self.staged, f"{prefix}{index:04d}.png"))

    def finish(self, metadata):
        """Move the individual images into place (replacing an earlier call's), then the JSON;
        returns the paths written."""
        from diffusion_keras import runs

        if not self.writes:
            return []
        if os.path.isdir(self.staged):
            if os.path.lexists(self.individual):
                old = os.path.join(self.output, f".samples_{self.name}.old.tmp{os.getpid()}")
                os.replace(self.individual, old)
                shutil.rmtree(old)
            os.replace(self.staged, self.individual)
            self.written.append(self.individual)
            metadata["individual_images"] = len(os.listdir(self.individual))
        os.makedirs(self.output, exist_ok=True)
        runs.write_json(self.json_path, {**metadata, "files": self.written})
        return [*self.written, self.json_path]


def generate_from_args(args):
    from diffusion_keras import backend, distributed, posthoc_ema, runs
    from diffusion_keras.interpolation import interpolation_images
    from diffusion_keras.plotting import image_grid, plot_image_table, save_gif, save_image_grid
    from diffusion_keras.samplers import SAMPLERS, sampling_name

    sampler_options(args)  # options of another sampler fail before any checkpoint is looked for
    checkpoint = runs.find_checkpoint(args.checkpoint)
    if args.ema_length is not None:
        posthoc_ema.check_length(checkpoint, args.ema_length)
    if args.save_checkpoint is not None and (args.ema_length is None
                                             or not args.save_checkpoint.endswith(".keras")):
        raise UsageError("--save-checkpoint saves the EMA --ema-length rebuilds, as a .keras file: "
                         "give both, e.g. --ema-length 0.1 --save-checkpoint ema0.1.keras")
    output = runs.check_creatable(args.output or default_output(checkpoint), "output folder",
                                  "--output")  # before any sampling, so no work is lost
    if args.distribute:
        distributed.start()  # before the model's variables are made
    model = runs.load_checkpoint(checkpoint)
    ema_updates = None
    if args.ema_length is not None:
        ema_updates = posthoc_ema.use_length(model, checkpoint, args.ema_length)
        if args.save_checkpoint is not None and distributed.is_writer():
            runs.save_model(model, args.save_checkpoint)
            print(f"wrote {args.save_checkpoint} (the EMA of length {args.ema_length:g} at "
                  f"update {ema_updates})")
    sampling = sampling_settings(args, model.config)
    classes = chosen_classes(model, args)
    guidances = args.guidance or [1.0]
    ema = "" if args.ema_length is None else f"_ema{args.ema_length:g}"
    base = f"{safe(os.path.splitext(os.path.basename(checkpoint))[0])}{ema}_" \
           f"{sampling_name(sampling, args.steps, args.seed)}"
    batch_size = args.batch_size or backend.default_sample_batch_size()
    settings = {"seed": args.seed, "batch_size": batch_size, **sampling}
    if classes is None:
        num_images = args.num_images or GRID_IMAGES
        names, name = None, f"{base}_n{num_images}"
    else:
        num_images = args.num_images or IMAGES_PER_CLASS
        names = [model.config.class_names[index] for index in classes]
        weights = [f"{guidance:g}" for guidance in guidances]
        chosen = "all" if "all" in args.classes else "-".join(safe(class_name) for class_name in names)
        name = f"{base}_n{num_images}_classes-{chosen}_guidance{'-'.join(weights)}"
    with Generation(output, name, distributed.is_writer()) as generation:
        if classes is None:
            images = model.generate(num_images, args.steps, verbose=not args.quiet, **settings)
            generation.save(lambda path: save_image_grid(images, path),
                            generation.path(f"samples_{name}.png"))
            if args.individual:
                generation.save_individually(images)
        else:
            # rows[g][c]: class c at guidance g; every row holds images 0.. of the seed
            rows = [[model.generate(num_images, args.steps, labels=index, guidance=guidance,
                                    verbose=False if args.quiet else "auto", **settings)
                     for index in classes] for guidance in guidances]
            generation.save(lambda path: plot_image_table(
                [[image_grid(row, rows=1) / 255.0 for row in group] for group in rows],
                [f"guidance {weight}" for weight in weights],
                f"Rows: classes; images 0-{num_images - 1} of seed {args.seed} in each row",
                path, size=1.0, row_titles=names), generation.path(f"samples_{name}.png"))
            if args.individual:
                for weight, group in zip(weights, rows):
                    for index, row in zip(classes, group):
                        generation.save_individually(row, f"class{index}_guidance{weight}_")
        if args.interpolate:
            frames = interpolation_images(model, args.frames, args.steps, args.seed, **sampling)
            strip = f"interpolation_{base}_frames{args.frames}"
            generation.save(lambda path: save_image_grid(frames, path, rows=1),
                            generation.path(f"{strip}.png"))
            pictures = [image_grid(frame[None], padding=0) for frame in [*frames, *frames[-2:0:-1]]]
            generation.save(lambda path: save_gif(pictures, path, final_hold=120),
                            generation.path(f"{strip}.gif"))
        written = generation.finish({
            "checkpoint": os.path.abspath(checkpoint),
            "checkpoint_modified": os.path.getmtime(checkpoint), **sampling, "steps": args.steps,
            "network_evaluations": SAMPLERS[sampling["sampler"]].network_evaluations(args.steps),
            "num_images": num_images, "batch_size": batch_size, "seed": args.seed,
            "classes": names, "guidance": guidances if names else None,
            "frames": args.frames if args.interpolate else None,
            "ema_length": args.ema_length, "ema_updates": ema_updates,
        })
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv=None):
    return run(generate_from_args, parser().parse_args(argv), what="generating")


if __name__ == "__main__":
    sys.exit(main())
