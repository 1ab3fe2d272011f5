"""The prepared dataset: images decoded, cropped and resized once into one uint8 file.

As EDM's dataset tool does, a dataset is prepared once (in parallel, with a progress bar) and every
later run and `--resume` reads it; training reads it batch by batch (`PreparedImages`), so resident
memory is a few batches whatever the dataset's size. A prepared file is keyed by its source (every
image file's path, size and modification time, or the tensorflow-datasets name, split and version)
and the image settings, so a changed folder or size is never served stale. It is written under a
temporary name and renamed, its description (a JSON file holding the key) last: an interrupted
prepare leaves nothing that a later run trusts, and a damaged or mismatched file is rebuilt.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable

import keras
import numpy as np

from diffusion_keras import image_files, runs
from diffusion_keras.errors import UsageError, counted

FORMAT_VERSION = 1
SPARE_BYTES = 64 * 2**20  # left free on the disk after preparing
CHUNK_IMAGES = 4096  # images per read when a prepared file is rewritten with one channel


@dataclasses.dataclass
class Source:
    """What to prepare: `name` (for the file name), `description` (the key's source part), and
    `count` images that `items()` yields in order as (name, path or encoded bytes, class label;
    -1: none), the labels indexing `class_names`."""

    name: str
    description: dict
    count: int
    items: Callable
    class_names: list

    @property
    def where(self):
        """Where the images come from, for messages: the folder, else the name."""
        return self.description.get("data_dir", self.name)


class PreparedImages:
    """A prepared file as a read-only uint8 image array: `images[indices]` reads just those images
    (`os.preadv` into the batch, so no page of the file stays in this process's memory); `labels`
    and `class_names` come with it."""

    def __init__(self, path, description):
        self.path = path
        self.shape = tuple(description["shape"])
        self.dtype = np.dtype("uint8")
        self.labels = np.asarray(description["labels"], "int32")
        self.class_names = list(description["class_names"])
        self.image_bytes = int(np.prod(self.shape[1:]))
        self.file = os.open(path, os.O_RDONLY)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, indices):
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        indices = np.asarray(indices)
        if indices.ndim == 0:
            return self[indices[None]][0]
        batch = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for row, index in zip(batch, indices):
            os.preadv(self.file, [row], int(index) * self.image_bytes)
        return batch

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.file)


def open_prepared_file(path):
    """A prepared file (`.u8`, its `.json` description beside it) on its own: one copied to a
    machine that lacks the images it was prepared from (the GPU suite's data)."""
    stem = path[:-3] if path.endswith(".u8") else path
    try:
        with open(stem + ".json") as file:
            description = json.load(file)
    except (OSError, ValueError):
        raise UsageError(f"{stem}.u8 is not a prepared image file with its description "
                         f"{stem}.json beside it; make one with data.open_images (train.py "
                         "prepares one in its cache folder)") from None
    described, problem = read_description(stem + ".u8", stem + ".json", description.get("key"))
    if described is None:
        raise UsageError(f"the prepared images {stem}.u8 are {problem}; copy them again")
    return PreparedImages(stem + ".u8", described)


def cache_key(source, image_size, channels):
    settings = {"format": FORMAT_VERSION, "source": source.description, "image_size": image_size,
                "channels": channels}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def open_prepared(source, image_size, channels, cache_dir, workers=None):
    """The prepared images of `source`: the file in `cache_dir` for exactly these settings, prepared
    now unless a whole one is there (`channels=None`: 1 when every image is grayscale, else 3).
    Given `channels`, a file prepared with `channels=None` that came out with that many serves too
    (a resumed run asks for its model's channels; its first run left them to the images)."""
    if os.path.isdir(cache_dir):
        runs.remove_stale_temporaries(cache_dir)  # of a prepare killed outright
    for requested in dict.fromkeys([channels, None]):
        key, stem = prepared_stem(source, image_size, requested, cache_dir)
        description, problem = read_description(stem + ".u8", stem + ".json", key)
        if description is not None and channels in (None, description["shape"][-1]):
            return PreparedImages(stem + ".u8", description)
        if problem and requested == channels:
            print(f"note: the prepared images {stem}.u8 are {problem}; preparing them again",
                  file=sys.stderr)
    key, stem = prepared_stem(source, image_size, channels, cache_dir)
    return prepare(source, image_size, channels, stem + ".u8", stem + ".json", key, workers)


def prepared_stem(source, image_size, channels, cache_dir):
    """(key, path without extension) of the prepared file for these settings."""
    key = cache_key(source, image_size, channels)
    return key, os.path.join(cache_dir, f"{source.name}-{image_size}px-{key[:16]}")


def read_description(path, description_path, key):
    """(description, None) for a whole prepared file, else (None, why not; "" when there is none)."""
    if not os.path.exists(description_path):
        return None, ""
    try:
        with open(description_path) as file:
            description = json.load(file)
        if description["key"] != key:
            return None, "from other settings"
        size = int(np.prod(description["shape"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None, "described by a damaged file"
    if not os.path.exists(path) or os.path.getsize(path) != size:
        return None, "truncated"
    return description, None


def check_disk_space(folder, needed):
    """One line, before any work, when the prepared file cannot fit on the disk."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < needed + SPARE_BYTES:
        raise UsageError(f"preparing the images needs {readable_size(needed)} in {folder} (and "
                         f"{readable_size(SPARE_BYTES)} left free) but only {readable_size(free)} "
                         "is free; free some space or pass --cache-dir on a larger disk")


def readable_size(count):
    """A byte count as people write it: 12 KiB, 3.4 MiB, 2.10 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{count} bytes"


def prepare(source, image_size, channels, path, description_path, key, workers=None):
    """Decode, crop and resize every image of `source` into `path`, then describe it."""
    folder = os.path.dirname(path)
    runs.check_creatable(folder, "cache folder", "--cache-dir")
    check_disk_space(folder, source.count * image_size * image_size * (channels or 3))
    os.makedirs(folder, exist_ok=True)
    progress = None  # started at the first image, so the workers' start-up does not skew its ETA
    print(f"preparing {counted(source.count, 'image')} of {source.name} at {image_size} pixels in {path} "
          "(once; later runs reuse them)", file=sys.stderr)
    labels, all_gray, done = [], True, 0
    try:
        with runs.atomic_write(path) as temporary:
            with open(temporary, "wb") as file:
                for position, array, gray, label in image_files.decode_usable(
                        source.items(), source.count, image_size, channels, source.where, workers):
                    file.write(array.tobytes())
                    labels.append(label)
                    all_gray = all_gray and gray
                    done = position + 1
                    progress = progress or keras.utils.Progbar(source.count, unit_name="image",
                                                               interval=1.0)
                    progress.update(done)
            if progress is not None and done < source.count:  # skipped images at the end
                progress.update(source.count)
            if channels is None and all_gray:
                keep_first_channel(temporary, (len(labels), image_size, image_size, 3))
    except OSError as error:
        raise UsageError(f"could not write the prepared images to {folder} "
                         f"({error.strerror or error}); free some space or pass --cache-dir "
                         "elsewhere") from None
    shape = [len(labels), image_size, image_size, channels or (1 if all_gray else 3)]
    description = {"key": key, "shape": shape, "source": source.description,
                   "labels": labels, "class_names": source.class_names}
    runs.write_json(description_path, description)
    return PreparedImages(path, description)


def keep_first_channel(path, shape):
    """Rewrite a prepared file of 3-channel grayscale images with one channel, chunk by chunk."""
    images = np.memmap(path, np.uint8, "r", shape=shape)
    with runs.atomic_write(path) as temporary, open(temporary, "wb") as file:
        for start in range(0, shape[0], CHUNK_IMAGES):
            file.write(np.ascontiguousarray(images[start:start + CHUNK_IMAGES, ..., 0]).tobytes())
    del images
