"""A folder of synthetic pictures (one coloured square on a grey left-to-right ramp, in two class
folders), to try training offline in a few minutes or test on tiny data, and `shape_likeness`,
which tells such pictures from noise:

    python -m diffusion_keras.demo_images /tmp/shapes [--count 512] [--size 16]
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image


def write_shapes(folder, count=512, size=16, seed=0):
    """`count` size x size pictures as PNG and JPEG files under folder/a and folder/b."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)[None, :, None]
    for index in range(count):
        label = "a" if index % 2 else "b"
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        image = np.broadcast_to(ramp, (size, size, 3)).copy()
        top, left = rng.integers(0, size // 2, 2)
        image[top:top + size // 3, left:left + size // 3] = rng.integers(0, 256, 3)
        extension = "png" if index % 3 else "jpg"
        Image.fromarray(image.astype(np.uint8)).save(
            os.path.join(folder, label, f"{index:04d}.{extension}"))
    return folder


def shape_likeness(images, threshold=60):
    """The fraction of `images` (uint8 (N, S, S, 3)) that look like `write_shapes`' pictures: the
    grey ramp, either way round (training flips them), with one solid square on it. An image
    passes when the pixels off the ramp by more than `threshold` in some channel cover 0.3-2.5
    times the square's area and at least half of their bounding box, and the rest of the image
    is within 30 of the ramp (median). Real pictures pass (94% at 16 pixels: JPEG and squares
    coloured like the ramp fail), noise and flat or blurred-noise images never do."""
    images = np.asarray(images, dtype=np.float64)
    size = images.shape[1]
    ramp = np.linspace(0, 255, size)[None, :, None]
    side = size // 3
    passed = 0
    for image in images:
        off = min((np.abs(image - background).max(-1) for background in (ramp, ramp[:, ::-1])),
                  key=np.mean)
        mask = off > threshold
        area = mask.sum()
        if not 0.3 * side * side <= area <= 2.5 * side * side:
            continue
        rows, cols = np.nonzero(mask)
        box = np.zeros_like(mask)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        background = np.median(off[~box]) if (~box).any() else 0.0
        passed += area / box.sum() >= 0.5 and background < 30
    return passed / len(images)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args(argv)
    write_shapes(args.folder, args.count, args.size)
    print(f"wrote {args.count} pictures to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
