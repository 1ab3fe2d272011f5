"""python generate.py: sample an image grid (and an interpolation strip and GIF) from a checkpoint."""

import os
import sys

from diffusion_keras.cli import (
    Parser,
    add_checkpoint_argument,
    add_sampling_arguments,
    non_negative_int,
    positive_int,
    run,
    sampling_settings,
)


def parser():
    p = Parser(
        description="Generate images with a trained diffusion model.",
    )
    add_checkpoint_argument(p)
    p.add_argument("--num-images", type=positive_int, default=36, help="images in the grid")
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


def generate_from_args(args):
    from diffusion_keras import backend, runs
    from diffusion_keras.interpolation import interpolation_images
    from diffusion_keras.plotting import image_grid, save_gif, save_image_grid, save_png
    from diffusion_keras.samplers import network_evaluations

    sampling = sampling_settings(args)
    checkpoint = runs.find_checkpoint(args.checkpoint)
    output = runs.check_creatable(args.output or default_output(checkpoint), "output folder",
                                  "--output")  # before any sampling, so no work is lost
    model = runs.load_checkpoint(checkpoint)
    name = f"{args.sampler}_seed{args.seed}_steps{args.steps}"
    batch_size = args.batch_size or backend.default_sample_batch_size()

    images = model.generate(args.num_images, args.steps, seed=args.seed, batch_size=batch_size,
                            verbose=not args.quiet, **sampling)
    os.makedirs(output, exist_ok=True)
    written = [save_image_grid(images, os.path.join(output, f"samples_{name}.png"))]
    if args.individual:
        for index, image in enumerate(images):
            save_png((image * 255).round().astype("uint8"),
                     os.path.join(output, f"sample_{name}_{index:04d}.png"))
    if args.interpolate:
        frames = interpolation_images(model, args.frames, args.steps, args.seed, **sampling)
        written.append(save_image_grid(frames, os.path.join(output, f"interpolation_{name}.png"),
                                       rows=1))
        pictures = [image_grid(frame[None], padding=0) for frame in [*frames, *frames[-2:0:-1]]]
        written.append(save_gif(pictures, os.path.join(output, f"interpolation_{name}.gif"),
                                final_hold=120))
    runs.write_json(os.path.join(output, f"samples_{name}.json"), {
        "checkpoint": os.path.abspath(checkpoint), **sampling, "steps": args.steps,
        "network_evaluations": network_evaluations(args.sampler, args.steps),
        "num_images": args.num_images, "batch_size": batch_size, "seed": args.seed,
        "files": written,
    })
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv=None):
    return run(generate_from_args, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
