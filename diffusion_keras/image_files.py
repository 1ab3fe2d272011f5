"""Image files to uint8 arrays: listing, decoding, cropping and resizing, in parallel.

Pillow and NumPy only (no Keras), so the decoding worker processes start in a fraction of a second
and JAX and PyTorch users need no TensorFlow.
"""

import collections
import concurrent.futures
import hashlib
import io
import itertools
import logging
import multiprocessing
import os
import threading
import time

import numpy as np
from PIL import Image, ImageOps

from diffusion_keras.errors import UsageError

log = logging.getLogger("diffusion_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
MAX_UPSCALE = 4  # images whose shorter side is under image_size / 4 would only teach blur
UNREADABLE, TOO_SMALL = "unreadable", "too small"
PARALLEL_FROM = 256  # fewer images decode faster in this process than worker processes start
WINDOW = 2048  # images decoded ahead of the writer: bounds memory however large the dataset


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


def content_digests(files):
    """SHA-256 of each file's bytes (0.5 s for CIFAR-10's 50,000 JPEGs here): what keys a prepared
    dataset, as EDM's dataset tool and most caches do."""
    digests = []
    for path in files:
        with open(path, "rb") as file:
            digests.append(hashlib.sha256(file.read()).hexdigest())
    return digests


def folder_classes(files, data_dir):
    """Each file's class index and the sorted class names: its first-level sub-folder under
    `data_dir` (-1 for images directly in `data_dir`)."""
    parts = [os.path.relpath(path, data_dir).split(os.sep) for path in files]
    folders = [part[0] if len(part) > 1 else None for part in parts]
    names = sorted({folder for folder in folders if folder is not None})
    index = {name: position for position, name in enumerate(names)}
    return np.array([index.get(folder, -1) for folder in folders], "int32"), names


def min_side(image_size):
    """The shortest image side worth training on: at most MAX_UPSCALE times enlarged."""
    return -(-image_size // MAX_UPSCALE)


def seeded_subset(count, limit, seed):
    """Sorted indices of a seeded random `limit` of `count` items (all of them when limit is None)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def fit_image(image, image_size, channels):
    """Centre-crop to a square, resize to `image_size` and convert to 1 or 3 channels (uint8)."""
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's convert would clip 16-bit values to white
        image = Image.fromarray((np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (image_size, image_size), Image.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def decode(source, image_size, channels):
    """One image file (a path, or its encoded bytes) -> (uint8 array, is grayscale), or
    (UNREADABLE or TOO_SMALL, None). `channels=None` decodes 3 channels and reports the mode."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos: upright, as viewers show them
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return UNREADABLE, None
    if min(image.size) < min_side(image_size):
        return TOO_SMALL, None
    return fit_image(image, image_size, channels or 3), image.mode in GRAYSCALE_MODES


def _decode_task(task):
    return decode(*task)


def decode_all(sources, count, image_size, channels=None, workers=None):
    """`decode` over the `count` `sources` (any iterable) in order, in `workers` processes (default:
    one per CPU core), reading at most WINDOW sources ahead. The workers are spawned, not forked: a
    fork of a process running JAX or TensorFlow threads can deadlock."""
    workers = workers or os.cpu_count() or 1
    tasks = ((source, image_size, channels) for source in sources)
    if workers == 1 or count < PARALLEL_FROM:
        yield from map(_decode_task, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=end_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        while window := list(itertools.islice(tasks, WINDOW)):
            yield from pool.map(_decode_task, window, chunksize=32)


def end_with_parent(parent, interval=1.0):
    """In a decoding worker: exit as soon as `parent` is gone (killed outright, it cannot stop its
    workers, which would otherwise wait for work for ever)."""
    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def decode_usable(items, count, image_size, channels, where, workers=None):
    """(position, uint8 array, is grayscale, label) of every usable one of the `count` `items`
    ((name, path or encoded bytes, label), in order), decoded by `decode_all`; the others are
    reported in one warning at the end (one error when none is usable, naming `where`)."""
    report = SkipReport(where, image_size)
    pending = collections.deque()  # names and labels of the items being decoded, in order

    def sources():
        for name, item, label in items:
            pending.append((name, label))
            yield item

    used = 0
    for position, (array, gray) in enumerate(decode_all(sources(), count, image_size, channels,
                                                        workers)):
        name, label = pending.popleft()
        if report.add(name, array):
            used += 1
            yield position, array, gray, label
    report.finish(used)


class SkipReport:
    """Counts the images `decode` could not use and reports them in one warning, or one error
    when none was usable."""

    def __init__(self, where, image_size):
        self.where, self.image_size = where, image_size
        self.skipped = {UNREADABLE: [], TOO_SMALL: []}
        self.total = 0

    def add(self, name, outcome):
        """Count one `decode` outcome (its array, or why not); whether it is usable."""
        self.total += 1
        if isinstance(outcome, str):
            self.skipped[outcome].append(name)
            return False
        return True

    def finish(self, used):
        unreadable, too_small = self.skipped[UNREADABLE], self.skipped[TOO_SMALL]
        if unreadable or too_small:
            reasons = [f"{len(unreadable)} unreadable"] if unreadable else []
            if too_small:
                reasons.append(f"{len(too_small)} under {min_side(self.image_size)} pixels on a side")
            log.warning("skipped %d image file(s) of %d in %s: %s (e.g. %s)",
                        len(unreadable) + len(too_small), self.total, self.where,
                        ", ".join(reasons), ", ".join((unreadable + too_small)[:3]))
        if not used:
            kinds = "/".join(sorted({extension[1:].upper() for extension in IMAGE_EXTENSIONS}))
            raise UsageError(f"none of the {self.total} image files in {self.where!r} could be "
                             f"used; check that they are valid {kinds} files of at least "
                             f"{min_side(self.image_size)} pixels on a side")
