"""python generate.py: sample an image grid (and an interpolation strip and GIF) from a checkpoint."""

import os
import sys

from diffusion_keras.cli import Parser, positive_int, run
from diffusion_keras.errors import UsageError
from diffusion_keras.samplers import SAMPLERS, SPACINGS, VARIANCES, network_evaluations


def parser():
    p = Parser(
        description="Generate images with a trained diffusion model.",
    )
    p.add_argument("--checkpoint", help="a .keras checkpoint (default: the newest under runs/)")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS),
                   help="ddim, ddpm (ancestral), dpmpp2m (DPM-Solver++(2M)) or heun (2 calls a step)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM noise: 0 deterministic, 1 like ancestral sampling")
    p.add_argument("--variance", default="posterior", choices=VARIANCES,
                   help="DDPM sigma^2: the posterior variance or beta_t")
    p.add_argument("--spacing", default="uniform", choices=SPACINGS,
                   help="timestep spacing: uniform in time, or quadratic (denser near the image)")
    p.add_argument("--num-images", type=positive_int, default=36, help="images in the grid")
    p.add_argument("--interpolate", action="store_true",
                   help="also render a spherical interpolation between two noises (strip and GIF)")
    p.add_argument("--frames", type=positive_int, default=8, help="images in the interpolation")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per sampler call (default: 256 on a GPU, 64 on a CPU)")
    p.add_argument("--individual", action="store_true", help="also save each image as its own PNG")
    p.add_argument("--output", help="output folder (default: <run folder>/generated)")
    return p


def default_output(checkpoint):
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if os.path.basename(folder) == "checkpoints":
        folder = os.path.dirname(folder)
    return os.path.join(folder, "generated")


def sampler_options(args):
    """The options the chosen sampler takes (eta for DDIM, variance for DDPM)."""
    if args.eta and args.sampler != "ddim":
        raise UsageError(f"--eta is a DDIM setting; drop it or use --sampler ddim (got --sampler "
                         f"{args.sampler})")
    return {"ddim": {"eta": args.eta}, "ddpm": {"variance": args.variance}}.get(args.sampler, {})


def generate_from_args(args):
    from diffusion_keras import backend, runs
    from diffusion_keras.interpolation import interpolation_images
    from diffusion_keras.plotting import image_grid, save_gif, save_image_grid, save_png

    checkpoint = args.checkpoint or runs.newest_checkpoint()
    model = runs.load_checkpoint(checkpoint)
    output = args.output or default_output(checkpoint)
    os.makedirs(output, exist_ok=True)
    name = f"seed{args.seed}_steps{args.steps}"
    if args.sampler != "ddim":
        name = f"{args.sampler}_{name}"
    options = sampler_options(args)
    # stochastic samplers draw fresh noise per batch, so the batch size is part of the recipe
    batch_size = args.batch_size or backend.default_sample_batch_size()

    images = model.generate(args.num_images, args.steps, seed=args.seed,
                            batch_size=batch_size, sampler=args.sampler,
                            spacing=args.spacing, **options)
    written = [save_image_grid(images, os.path.join(output, f"samples_{name}.png"))]
    if args.individual:
        for index, image in enumerate(images):
            save_png((image * 255).round().astype("uint8"),
                     os.path.join(output, f"sample_{name}_{index:04d}.png"))
    if args.interpolate:
        frames = interpolation_images(model, args.frames, args.steps, args.seed)
        written.append(save_image_grid(frames, os.path.join(output, f"interpolation_{name}.png"),
                                       rows=1))
        pictures = [image_grid(frame[None], padding=0) for frame in [*frames, *frames[-2:0:-1]]]
        written.append(save_gif(pictures, os.path.join(output, f"interpolation_{name}.gif"),
                                final_hold=120))
    runs.write_json(os.path.join(output, f"samples_{name}.json"), {
        "checkpoint": os.path.abspath(checkpoint), "sampler": args.sampler, "steps": args.steps,
        "spacing": args.spacing, **options,
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
