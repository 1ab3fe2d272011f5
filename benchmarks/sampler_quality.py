"""Sample quality against network evaluations (NFE) for every sampler, from one checkpoint.

    python benchmarks/sampler_quality.py --checkpoint runs/X/checkpoints/best.keras \
        --real-dir /tmp/cifar/test --metric diffusion_keras.metrics:kid --num-images 2000

`--metric MODULE:FUNCTION` names `function(real_images, generated_images) -> float or dict of
floats`, both float32 NHWC in [0, 1] (e.g. the KID/FID of the evaluation module). Writes a JSON and
a Markdown table (rows: sampler, columns: NFE) next to the checkpoint, or to --output.
Not a test: it needs a trained model and a lot of compute (1000 NFE x num_images).
"""

import argparse
import importlib
import os
import sys

DEFAULT_NFES = (5, 10, 20, 50, 100, 1000)
SETTINGS = {  # name in the table -> (sampler, options)
    "ddim": ("ddim", {}),
    "ddim_eta1": ("ddim", {"eta": 1.0}),
    "ddpm": ("ddpm", {}),
    "dpmpp2m": ("dpmpp2m", {}),
    "heun": ("heun", {}),
}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--real-dir", required=True, help="folder of reference images")
    p.add_argument("--metric", required=True, help="MODULE:FUNCTION(real, generated)")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--nfe", default=",".join(map(str, DEFAULT_NFES)))
    p.add_argument("--samplers", default=",".join(SETTINGS))
    p.add_argument("--spacing", default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--output", help="output prefix (default: <checkpoint folder>/sampler_quality)")
    return p


def load_metric(text):
    module, _, function = text.partition(":")
    return getattr(importlib.import_module(module), function)


def markdown_table(results, nfes):
    """One row per sampler setting, one column per NFE; each cell the metric value(s)."""
    lines = ["| sampler | " + " | ".join(f"NFE {nfe}" for nfe in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for name, row in results.items():
        cells = [row.get(str(nfe), "") for nfe in nfes]
        cells = [", ".join(f"{k} {v:.4g}" for k, v in cell.items()) if isinstance(cell, dict)
                 else (f"{cell:.4g}" if cell != "" else "") for cell in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras import runs, samplers
    from diffusion_keras.data import load_image_folder

    model = runs.load_checkpoint(args.checkpoint)
    metric = load_metric(args.metric)
    real = load_image_folder(args.real_dir, model.image_size)[:args.num_images]
    noise = model.initial_noise(args.num_images, seed=args.seed)
    nfes = [int(value) for value in args.nfe.split(",")]
    results = {}
    for name in args.samplers.split(","):
        sampler, options = SETTINGS[name]
        results[name] = {}
        for nfe in nfes:
            steps = nfe // samplers.network_evaluations(sampler, 1)
            images = model.generate(args.num_images, steps, initial_noise=noise, seed=args.seed,
                                    batch_size=args.batch_size, sampler=sampler,
                                    spacing=args.spacing, **options)
            value = metric(real, images)
            results[name][str(nfe)] = ({k: float(v) for k, v in value.items()}
                                       if isinstance(value, dict) else float(value))
            print(name, nfe, results[name][str(nfe)], flush=True)
    prefix = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                         "sampler_quality")
    runs.write_json(prefix + ".json", {"checkpoint": os.path.abspath(args.checkpoint),
                                       "num_images": args.num_images, "spacing": args.spacing,
                                       "results": results})
    with runs.atomic_write(prefix + ".md") as temporary, open(temporary, "w") as file:
        file.write(markdown_table(results, nfes))
    print(f"wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
