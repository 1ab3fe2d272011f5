"""How fast the input path alone feeds training: images/second from a prepared file to the shuffled,
flipped uint8 batches `fit` receives (`ImageBatches(...).fit_input()`), no model.

    python benchmarks/loader_throughput.py --data-dir /tmp/cifar/train --sizes 32,64,128

One JSON line per image size on the running KERAS_BACKEND: TensorFlow's tf.data pipeline as `fit`
iterates it, or the PyDataset's batches read one after another in this thread (one core; `fit`'s
worker threads read ahead of the step). Images are prepared once into --cache-dir first (not timed).
"""

import argparse
import json
import os
import time

from diffusion_keras import backend
from diffusion_keras.data import ImageBatches, open_images


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="a folder of images (e.g. CIFAR-10's train/)")
    p.add_argument("--sizes", default="32,64,128", help="image sides, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=200, help="timed batches per size")
    p.add_argument("--limit", type=int, default=20000, help="images prepared per size")
    p.add_argument("--cache-dir", help="where the prepared files go (default: the project's)")
    return p


def images_per_second(images, batch_size, count):
    """Images/s over `count` batches after two untimed ones, as `fit` would be given them."""
    batches = ImageBatches(images, batch_size, seed=0)
    epochs = count // len(batches) + 2
    if backend.BACKEND == "tensorflow":
        stream = iter(batches.fit_input(0, epochs))
        read = lambda index: next(stream)  # noqa: E731 (the pipeline keeps its own position)
    else:
        read = lambda index: batches[index % len(batches)]  # noqa: E731
    for index in range(2):
        read(index)
    started = time.perf_counter()
    for index in range(2, count + 2):
        read(index)
    return count * batch_size / (time.perf_counter() - started)


def main(argv=None):
    args = parser().parse_args(argv)
    for size in (int(side) for side in args.sizes.split(",")):
        images = open_images(size, data_dir=args.data_dir, limit=args.limit, cache_dir=args.cache_dir)
        rate = images_per_second(images, args.batch_size, args.batches)
        print(json.dumps({"backend": backend.BACKEND, "image_size": size,
                          "batch_size": args.batch_size, "images_per_second": round(rate),
                          "cpu_count": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()
