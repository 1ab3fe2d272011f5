"""Sample quality against network evaluations (NFE) for every sampler, from one checkpoint.

    python benchmarks/sampler_quality.py --checkpoint runs/X/checkpoints/best.keras \
        --real-dir /tmp/cifar/test --num-images 2000 [--features cifar10]

Every cell is `evaluation.evaluate` (the library's scoring, as `evaluate.py` does it): the same
seeded images for every sampler, scored against the real images' cached statistics, in InceptionV3
features (FID, KID) or the project's CIFAR-10 classifier's (FD-cifar10, KD-cifar10). Writes a JSON
and a Markdown table (rows: sampler, columns: NFE) next to the checkpoint, or to --output. Not a
test: it needs a trained model and a lot of compute (sum of NFE x num_images).
"""

import argparse
import os
import sys

DEFAULT_NFES = (5, 10, 20, 50, 100)
SETTINGS = {  # name in the table -> generate's sampler settings
    "ddim": {"sampler": "ddim"},
    "ddim_eta1": {"sampler": "ddim", "eta": 1.0},
    "ddpm": {"sampler": "ddpm"},
    "dpmpp2m": {"sampler": "dpmpp2m"},
    "dpmpp3m": {"sampler": "dpmpp3m"},
    "heun": {"sampler": "heun"},
}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--real-dir", required=True, help="folder of reference images")
    p.add_argument("--features", default="auto", choices=("auto", "inception", "cifar10"))
    p.add_argument("--inception-weights", default="imagenet",
                   help="'imagenet', a local no-top .h5 file, or 'random' (ranks only)")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--nfe", default=",".join(map(str, DEFAULT_NFES)))
    p.add_argument("--samplers", default=",".join(SETTINGS))
    p.add_argument("--spacing", help="one grid for every sampler (default: each sampler's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--output", help="output prefix (default: <checkpoint folder>/sampler_quality)")
    return p


def markdown_table(results, nfes):
    """One row per sampler setting, one column per NFE; each cell the metric value(s)."""
    lines = ["| sampler | " + " | ".join(f"NFE {nfe}" for nfe in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for name, row in results.items():
        cells = [row.get(str(nfe), "") for nfe in nfes]
        cells = [", ".join(f"{k} {v:.4g}" for k, v in cell.items()) if isinstance(cell, dict)
                 else "" for cell in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras import runs, samplers
    from diffusion_keras.evaluation import METRIC_NAMES, evaluate

    nfes = [int(value) for value in args.nfe.split(",")]
    weights = None if args.inception_weights == "random" else args.inception_weights
    results = {}
    for name in args.samplers.split(","):
        sampling = dict(SETTINGS[name])
        if args.spacing:
            sampling["spacing"] = args.spacing
        results[name] = {}
        for nfe in nfes:
            steps = samplers.SAMPLERS[sampling["sampler"]].steps_for(nfe)
            result = evaluate(args.checkpoint, args.num_images, steps, data_dir=args.real_dir,
                              inception_weights=weights, kid_images=args.num_images,
                              batch_size=args.batch_size, seed=args.seed, features=args.features,
                              sampling=sampling)
            metric_names = METRIC_NAMES[result["features"]]
            calls = samplers.SAMPLERS[sampling["sampler"]].network_evaluations(steps)
            results[name][str(calls)] = {key: result[key] for key in metric_names}
            print(name, calls, results[name][str(calls)], flush=True)
    prefix = args.output or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                         "sampler_quality")
    runs.write_json(prefix + ".json", {"checkpoint": os.path.abspath(args.checkpoint),
                                       "num_images": args.num_images, "spacing": args.spacing,
                                       "features": args.features, "results": results})
    columns = sorted({int(calls) for row in results.values() for calls in row})
    with runs.atomic_write(prefix + ".md") as temporary, open(temporary, "w") as file:
        file.write(markdown_table(results, columns))
    print(f"wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
