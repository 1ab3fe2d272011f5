"""Pictures: image grids saved as PNG, and `display` for notebooks and the CLIs."""

import math

import numpy as np
from PIL import Image

from diffusion_keras.runs import atomic_write


def image_grid(images, rows=None, cols=None, padding=1):
    """Tile (N, H, W, C) images in [0, 1] into one uint8 picture, row by row."""
    images = np.asarray(images)
    count = len(images)
    cols = cols or math.ceil(math.sqrt(count))
    rows = rows or math.ceil(count / cols)
    height, width, channels = images.shape[1:]
    grid = np.ones(
        (rows * (height + padding) + padding, cols * (width + padding) + padding, channels),
        dtype=np.uint8,
    ) * 255
    for index, image in enumerate(images[: rows * cols]):
        top = padding + (index // cols) * (height + padding)
        left = padding + (index % cols) * (width + padding)
        grid[top:top + height, left:left + width] = np.round(np.clip(image, 0, 1) * 255)
    return grid


def save_png(picture, path):
    """Write a uint8 (H, W, C) picture as PNG, atomically."""
    picture = picture[..., 0] if picture.shape[-1] == 1 else picture
    with atomic_write(path) as temporary:
        Image.fromarray(picture).save(temporary, format="PNG")
    return path


def save_image_grid(images, path, rows=None, cols=None):
    return save_png(image_grid(images, rows, cols), path)


def display(images, n=None, size=2.0, cmap=None, as_type=None, save_to=None, cols=None):
    """Show the first `n` images in a matplotlib grid (inline in a notebook); optionally save it.

    `as_type` casts the pixels first (for example "uint8" for 0-255 data); single-channel images
    are drawn with `cmap` (gray by default).
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)[:n]
    if as_type is not None:
        images = images.astype(as_type)
    cols = cols or min(len(images), 8)
    rows = math.ceil(len(images) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image in zip(axes.flat, images):
        if image.ndim == 3 and image.shape[-1] == 1:
            axis.imshow(image[..., 0], cmap=cmap or "gray")
        else:
            axis.imshow(image, cmap=cmap)
    figure.tight_layout()
    if save_to is not None:
        with atomic_write(save_to) as temporary:
            figure.savefig(temporary, format=save_to.rsplit(".", 1)[-1])
    if plt.get_backend().lower().endswith("inline"):
        plt.show()
    else:
        plt.close(figure)
    return figure
