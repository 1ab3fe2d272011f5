"""A folder of synthetic pictures (coloured squares on gradients, in two class folders), to try
training offline in a minute or test on tiny data:

    python -m diffusion_keras.demo_images /tmp/shapes [--count 512] [--size 32]
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image


def write_shapes(folder, count=512, size=32, seed=0):
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    write_shapes(args.folder, args.count, args.size)
    print(f"wrote {args.count} pictures to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
