"""Sample quality against network evaluations (NFE) for every sampler and grid, from one checkpoint.

    python benchmarks/sampler_quality.py --checkpoint runs/X/checkpoints/best.keras \
        --real-dir /tmp/cifar/train --num-images 2000 --nfe 10,20 \
        --spacings uniform,log_snr,karras --features cifar10

Every cell is `evaluation.evaluate` (the library's scoring, as `evaluate.py` does it, sampling
through `model.generate`): the same seeded images for every sampler, scored against the real
images' cached statistics, in InceptionV3 features (FID, KID) or the project's CIFAR-10
classifier's (FD-cifar10, KD-cifar10). Each sampler runs on each of `--spacings` (default: its own
grid). Writes results.json and table.md (rows: sampler and grid, columns: NFE) beside a manifest
in benchmarks/results/<date>-<name>/. Not a test: it needs a trained model and a lot of compute
(sum of NFE x num_images).
"""

import argparse
import json
import os
import sys

from manifest import RESULTS_ROOT, open_results

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
    p.add_argument("--spacings", help="comma-separated grids, each sampler on each (default: each "
                                      "sampler's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--name", default="sampler-quality", help="results folder <date>-NAME")
    p.add_argument("--results-root", default=RESULTS_ROOT)
    return p


def markdown_table(results, nfes):
    """One row per sampler setting and grid, one column per NFE; each cell the metric value(s)."""
    lines = ["| sampler, grid | " + " | ".join(f"NFE {nfe}" for nfe in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for name, row in results.items():
        cells = [row.get(str(nfe), "") for nfe in nfes]
        cells = [", ".join(f"{k} {v:.4g}" for k, v in cell.items()) if isinstance(cell, dict)
                 else "" for cell in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parser().parse_args(argv)
    from diffusion_keras import samplers
    from diffusion_keras.evaluation import METRIC_NAMES, evaluate

    nfes = [int(value) for value in args.nfe.split(",")]
    weights = None if args.inception_weights == "random" else args.inception_weights
    grids = args.spacings.split(",") if args.spacings else [None]
    folder = open_results(args.name, args.results_root,
                          ["benchmarks/sampler_quality.py", *(argv or sys.argv[1:])])
    results = {}
    for name in args.samplers.split(","):
        record = samplers.sampler_record(SETTINGS[name]["sampler"])
        for grid in grids:
            sampling = {**SETTINGS[name], "spacing": grid or record.default_spacing}
            row = results[f"{name}, {sampling['spacing']}"] = {}
            for nfe in nfes:
                steps = record.steps_for(nfe)
                result = evaluate(args.checkpoint, args.num_images, steps, data_dir=args.real_dir,
                                  inception_weights=weights, kid_images=args.num_images,
                                  batch_size=args.batch_size, seed=args.seed,
                                  features=args.features, sampling=sampling)
                calls = record.network_evaluations(steps)
                row[str(calls)] = {key: result[key] for key in METRIC_NAMES[result["features"]]}
                print(name, sampling["spacing"], calls, row[str(calls)], flush=True)
            with open(os.path.join(folder, "results.json"), "w") as file:  # as the cells come
                json.dump({"checkpoint": os.path.abspath(args.checkpoint),
                           "num_images": args.num_images, "features": args.features,
                           "results": results}, file, indent=1)
    columns = sorted({int(calls) for row in results.values() for calls in row})
    with open(os.path.join(folder, "table.md"), "w") as file:
        file.write(markdown_table(results, columns))
    print(f"wrote {folder}: results.json, table.md, manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
