"""Sample quality against network evaluations (NFE) for every sampler, from one checkpoint.

    python benchmarks/sampler_quality.py --checkpoint runs/X/checkpoints/best.keras \
        --real-dir /tmp/cifar/test --num-images 2000 [--inception-weights random]

Every cell is the KID and FID of `--num-images` samples (all from the same initial noise) against as
many real images, whose InceptionV3 features are extracted once. Writes a JSON and a Markdown table
(rows: sampler, columns: NFE) next to the checkpoint, or to --output. Not a test: it needs a trained
model and a lot of compute (1000 NFE x num_images).
"""

import argparse
import os
import sys

import numpy as np

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
    p.add_argument("--inception-weights", default="imagenet",
                   help="'imagenet', a local no-top .h5 file, or 'random' (ranks only)")
    p.add_argument("--inception-size", type=int, default=299, help="InceptionV3 input size (>= 75)")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--nfe", default=",".join(map(str, DEFAULT_NFES)))
    p.add_argument("--samplers", default=",".join(SETTINGS))
    p.add_argument("--spacing", default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--output", help="output prefix (default: <checkpoint folder>/sampler_quality)")
    return p


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
    from diffusion_keras import metrics, runs, samplers
    from diffusion_keras.data import load_image_folder
    from diffusion_keras.evaluation import extract_features

    model = runs.load_checkpoint(args.checkpoint)
    weights = None if args.inception_weights == "random" else args.inception_weights
    extractor = metrics.inception_extractor(model.config.channels, args.inception_size, weights, args.seed)
    real = load_image_folder(args.real_dir, model.config.image_size)
    real = real[np.random.default_rng(args.seed).permutation(len(real))[:args.num_images]]
    real_features = extract_features(extractor, real, args.batch_size)
    real_statistics = metrics.FeatureStatistics().update(real_features)
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
            features = extract_features(extractor, images, args.batch_size)
            results[name][str(nfe)] = {
                "kid": float(metrics.kernel_inception_distance(real_features, features)),
                "fid": metrics.fid(real_statistics, metrics.FeatureStatistics().update(features))}
            print(name, nfe, results[name][str(nfe)], flush=True)
    prefix = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                         "sampler_quality")
    runs.write_json(prefix + ".json", {"checkpoint": os.path.abspath(args.checkpoint),
                                       "num_images": args.num_images, "spacing": args.spacing,
                                       "inception_weights": args.inception_weights,
                                       "inception_size": args.inception_size,
                                       "results": results})
    with runs.atomic_write(prefix + ".md") as temporary, open(temporary, "w") as file:
        file.write(markdown_table(results, nfes))
    print(f"wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
