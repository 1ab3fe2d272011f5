"""Classifier-free guidance on CIFAR-10: how often the shipped CIFAR-10 classifier recognises the
class asked for, and the Frechet distance in its features, at each guidance weight.

    python benchmarks/guidance_sweep.py --checkpoint runs/cifar_conditional \
        --real-dir /tmp/cifar/test --per-class 50 --guidance 0,1,2,4

Every weight samples the same seeds (image i of each class starts from the same noise), so the
weights differ only in guidance. Writes results.json and table.md beside a manifest in
benchmarks/results/<date>-<name>/.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from manifest import RESULTS_ROOT, open_results

from diffusion_keras import cifar10_features, metrics, runs
from diffusion_keras.data import load_image_folder, preprocess
from diffusion_keras.evaluation import extract_features


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a .keras file or a run folder")
    parser.add_argument("--real-dir", required=True, help="real CIFAR-10 images (class folders)")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", default="0,1,2,4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="guidance-sweep", help="results folder <date>-NAME")
    parser.add_argument("--results-root", default=RESULTS_ROOT)
    args = parser.parse_args()
    folder = open_results(args.name, args.results_root, ["benchmarks/guidance_sweep.py", *sys.argv[1:]])

    model = runs.load_checkpoint(runs.find_checkpoint(args.checkpoint))
    names = model.config.class_names
    asked = np.repeat(np.arange(len(names)), args.per_class)
    classifier_index = np.array([cifar10_features.CLASSES.index(name) for name in names])
    classifier = cifar10_features.cifar10_classifier()
    extractor = cifar10_features.cifar10_extractor()
    real = preprocess(load_image_folder(args.real_dir, 32, 3, len(asked), args.seed))
    real_statistics = metrics.FeatureStatistics()
    real_statistics.update(extract_features(extractor, real, 256))
    rows = []
    for guidance in map(float, args.guidance.split(",")):
        started = time.perf_counter()
        images = np.concatenate([  # class by class: image i of every class from seed's image i
            model.generate(args.per_class, args.steps, seed=args.seed, labels=label,
                           guidance=guidance, verbose=False) for label in range(len(names))])
        seconds = time.perf_counter() - started
        predicted = np.argmax(extract_features(classifier, images, 256), axis=-1)
        generated = metrics.FeatureStatistics()
        generated.update(extract_features(extractor, images, 256))
        row = {"guidance": guidance, "accuracy": float(np.mean(predicted == classifier_index[asked])),
               "fd_cifar10": float(metrics.fid(real_statistics, generated)),
               "images": len(images), "sampling_seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"checkpoint": runs.find_checkpoint(args.checkpoint), "steps": args.steps,
              "per_class": args.per_class, "real_images": len(real), "seed": args.seed,
              "rows": rows}
    with open(os.path.join(folder, "results.json"), "w") as file:
        json.dump(result, file, indent=2)
    with open(os.path.join(folder, "table.md"), "w") as file:
        file.write("| guidance | classified as asked | FD-cifar10 | sampling s |\n|---|---|---|---|\n")
        for row in rows:
            file.write(f"| {row['guidance']:g} | {row['accuracy']:.1%} | {row['fd_cifar10']:.3f} | "
                       f"{row['sampling_seconds']} |\n")


if __name__ == "__main__":
    main()
