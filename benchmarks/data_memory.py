"""Prepare speed, and peak resident memory while training on small and large prepared datasets.

    python benchmarks/data_memory.py --data-dir /tmp/cifar/train --image-size 64 --counts 2000,40000

For each count: prepare a seeded subset of the folder (timed, images/s, the first time only), then
train `--steps` steps in a fresh process and report its peak resident set size (ru_maxrss). With
images read batch by batch from the prepared file, the peak should barely depend on the count.
Writes results.json beside a manifest in benchmarks/results/<date>-<name>/.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import keras
from manifest import RESULTS_ROOT, open_results


class StopAfter(keras.callbacks.Callback):
    """End training after `steps` batches (the epoch-end callbacks still run: samples, checkpoint)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 >= self.steps:
            self.model.stop_training = True


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args, count):
    """Open the prepared images, train `args.steps` steps; print the peak memory as JSON."""
    from diffusion_keras import training
    from diffusion_keras.config import TrainingConfig
    from diffusion_keras.data import open_images

    images = open_images(args.image_size, data_dir=args.data_dir, limit=count, seed=0,
                         cache_dir=args.cache_dir)
    opened = peak_rss_mib()
    config = TrainingConfig().updated({
        "model": {"image_size": args.image_size},
        "optimization": {"epochs": 1, "batch_size": args.batch_size},
        "run": {"validation_split": 0.0}})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        training.train(images, run_dir, config, verbose=0, callbacks=[StopAfter(args.steps)])
    print(json.dumps({"count": len(images), "dataset_mib": round(images.shape[0] * images.image_bytes
                                                                 / 2**20, 1),
                      "peak_rss_after_open_mib": round(opened, 1),
                      "peak_rss_training_mib": round(peak_rss_mib(), 1),
                      "train_seconds": round(time.perf_counter() - started, 1)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--counts", default="2000,40000")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-dir", help="default: a new temporary folder, so the prepare is "
                        "timed from scratch")
    parser.add_argument("--name", default="data-memory", help="results folder <date>-NAME")
    parser.add_argument("--results-root", default=RESULTS_ROOT)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args, args.child)

    from diffusion_keras.data import open_images

    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="data_memory_")
    folder = open_results(args.name, args.results_root, ["benchmarks/data_memory.py", *sys.argv[1:]])
    results = []
    for count in map(int, args.counts.split(",")):
        started = time.perf_counter()
        images = open_images(args.image_size, data_dir=args.data_dir, limit=count, seed=0,
                             cache_dir=args.cache_dir)
        seconds = time.perf_counter() - started
        result = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--cache-dir",
                                 args.cache_dir, "--child", str(count)],
                                capture_output=True, text=True, check=True)
        row = {**json.loads(result.stdout.strip().splitlines()[-1]),
               "open_or_prepare_seconds": round(seconds, 1),
               "prepare_images_per_second": round(len(images) / seconds, 1),
               "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
               "cpu_count": os.cpu_count(), "backend": keras.backend.backend()}
        print(json.dumps(row), flush=True)
        results.append(row)
    with open(os.path.join(folder, "results.json"), "w") as file:
        json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
