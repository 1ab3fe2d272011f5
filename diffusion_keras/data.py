"""Training images: folders of image files or tensorflow-datasets, as float32 NHWC in [0, 1].

The folder path uses Pillow and NumPy only, so JAX and PyTorch users can train without TensorFlow.
"""

import logging
import os
import socket

import keras
import numpy as np
from PIL import Image, ImageOps

from diffusion_keras.config import DATASETS
from diffusion_keras.errors import UsageError

log = logging.getLogger("diffusion_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAYSCALE_DATASETS = ("mnist", "fashion_mnist")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
MAX_UPSCALE = 4  # images whose shorter side is under image_size / 4 would only teach blur
# where tensorflow-datasets downloads from first (its mirror), checked before a download is tried
TFDS_HOST = ("storage.googleapis.com", 443)


def preprocess(imgs):
    """Any image array (N, H, W) or (N, H, W, C), uint8 or float, -> float32 NHWC in [0, 1]."""
    imgs = np.asarray(imgs)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4:
        raise UsageError(f"expected a batch of images (N, H, W[, C]), got shape {imgs.shape}")
    if np.issubdtype(imgs.dtype, np.integer):
        return (imgs / 255.0).astype("float32")
    return np.clip(imgs, 0.0, 1.0).astype("float32")


def fit_image(image, image_size, channels):
    """Centre-crop to a square, resize to `image_size` and convert to 1 or 3 channels (uint8)."""
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's convert would clip 16-bit values to white
        image = Image.fromarray((np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (image_size, image_size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def list_image_files(data_dir):
    """Every image file under `data_dir` (class sub-folders allowed), sorted for repeatability."""
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data-dir {data_dir!r} does not exist or is not a folder; "
                         "point it at a folder of images")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(data_dir)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise UsageError(f"--data-dir {data_dir!r} holds no image files "
                         f"({'/'.join(IMAGE_EXTENSIONS)}); point it at a folder of images")
    return files


def min_side(image_size):
    """The shortest image side worth training on: at most MAX_UPSCALE times enlarged."""
    return -(-image_size // MAX_UPSCALE)


def seeded_subset(items, limit, seed):
    """A seeded random subset of `limit` items in their original order (all when limit is None)."""
    if limit is None or limit >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
    return [items[i] for i in keep]


def load_image_folder(data_dir, image_size, channels=None, limit=None, seed=0):
    """Decode every usable image under `data_dir`; the others are skipped with one warning.

    Unusable: unreadable (corrupt, truncated, empty, not an image) or too small to train on (see
    `min_side`). `channels=None` picks 1 when every image is grayscale, else 3.
    """
    files = seeded_subset(list_image_files(data_dir), limit, seed)
    opened, unreadable, too_small = [], [], []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)  # phone photos: upright, as viewers show them
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            unreadable.append(path)
            continue
        if min(image.size) < min_side(image_size):
            too_small.append(path)
        else:
            opened.append(image)
    if unreadable or too_small:
        reasons = [f"{len(unreadable)} unreadable"] if unreadable else []
        if too_small:
            reasons.append(f"{len(too_small)} under {min_side(image_size)} pixels on a side")
        examples = ", ".join(os.path.relpath(path, data_dir) for path in (unreadable + too_small)[:3])
        log.warning("skipped %d image file(s) of %d in %s: %s (e.g. %s)",
                    len(unreadable) + len(too_small), len(files), data_dir, ", ".join(reasons),
                    examples)
    if not opened:
        kinds = "/".join(sorted({extension[1:].upper() for extension in IMAGE_EXTENSIONS}))
        raise UsageError(f"none of the {len(files)} image files in {data_dir!r} could be used; "
                         f"check that they are valid {kinds} files of at least "
                         f"{min_side(image_size)} pixels on a side")
    if channels is None:
        channels = 1 if all(image.mode in GRAYSCALE_MODES for image in opened) else 3
    return preprocess(np.stack([fit_image(image, image_size, channels) for image in opened]))


def load_tfds(name, image_size, split="train", limit=None, seed=0):
    """A tensorflow-datasets image dataset, downloaded on first use, resized like a folder."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {list(DATASETS)} "
                         "or pass --data-dir FOLDER")
    import tensorflow_datasets as tfds

    offline = UsageError(
        f"tensorflow-datasets {name!r} is not downloaded yet and {TFDS_HOST[0]} cannot be reached; "
        "download it once with network access, or pass --data-dir FOLDER of images instead")
    try:
        prepared = tfds.builder(name).is_prepared()
    except Exception as error:  # a builder that cannot even be made is treated as not prepared
        prepared = False
        log.debug("tfds builder %s: %s", name, error)
    if not prepared and not reachable(TFDS_HOST):
        raise offline  # seconds, not minutes of tensorflow-datasets' download retries
    try:
        dataset = tfds.load(name, split=split)
    except Exception as error:  # tfds raises many kinds of download errors
        raise UsageError(
            f"could not load tensorflow-datasets {name!r} ({type(error).__name__}); it must be "
            "downloaded once with network access, or pass --data-dir FOLDER of images instead"
        ) from error
    channels = 1 if name in GRAYSCALE_DATASETS else 3
    arrays = [example["image"] for example in tfds.as_numpy(dataset)]
    arrays = seeded_subset(arrays, limit, seed)
    images = [fit_image(Image.fromarray(np.squeeze(a)), image_size, channels) for a in arrays]
    return preprocess(np.stack(images))


def reachable(address, timeout=3.0):
    """Whether a TCP connection to (host, port) opens within `timeout` seconds."""
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


def load_images(image_size, dataset="cifar10", data_dir=None, limit=None, seed=0):
    """The training images a CLI asked for: `data_dir` when given, else the tfds `dataset`."""
    if data_dir is not None:
        return load_image_folder(data_dir, image_size, limit=limit, seed=seed)
    return load_tfds(dataset, image_size, limit=limit, seed=seed)


class ImageBatches(keras.utils.PyDataset):
    """Shuffled batches with optional random horizontal flips, reproducible from (seed, epoch).

    The last incomplete batch is dropped so every training step has the same (compiled) shape.
    """

    def __init__(self, images, batch_size, flip=True, seed=0, shuffle=True, epoch=0, **kwargs):
        super().__init__(**kwargs)
        if len(images) < batch_size:
            raise UsageError(f"only {len(images)} images for batch size {batch_size}; "
                             "use a smaller --batch-size or more images")
        self.images = images
        self.batch_size = batch_size
        self.flip = flip
        self.seed = seed
        self.shuffle = shuffle
        self.set_epoch(epoch)

    def plan(self, epoch):
        """Image indices and flip flags of epoch `epoch`, batch after batch, from (seed, epoch).

        Within a batch the indices are sorted (faster gathers; the order inside a batch is moot).
        """
        rng = np.random.default_rng((self.seed, epoch))
        count = len(self) * self.batch_size
        order = rng.permutation(len(self.images)) if self.shuffle else np.arange(len(self.images))
        order = np.sort(order[:count].reshape(len(self), self.batch_size), axis=1).reshape(-1)
        flips = rng.random(count) < 0.5 if self.flip else np.zeros(count, dtype=bool)
        return order, flips

    def set_epoch(self, epoch):
        """Order the images as epoch `epoch` sees them (resuming a run starts mid-sequence)."""
        self.epoch = epoch
        self.order, self.flips = self.plan(epoch)

    def __len__(self):
        return len(self.images) // self.batch_size

    def __getitem__(self, index):
        in_batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        batch = self.images[self.order[in_batch]]
        flips = self.flips[in_batch]
        batch[flips] = batch[flips, :, ::-1]
        return batch

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)
