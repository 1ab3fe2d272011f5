"""Training images: folders of image files or tensorflow-datasets, prepared once as uint8, and the
batches `fit` reads from them.

Images stay uint8 until a batch enters the training step (`DiffusionModel.call` scales them); the
folder path needs no TensorFlow, so JAX and PyTorch users can train without it.
"""

import hashlib
import logging
import os
import socket

import keras
import numpy as np

from diffusion_keras import backend, image_cache, image_files
from diffusion_keras.config import DATASETS, default_cache_dir
from diffusion_keras.errors import UsageError, counted

log = logging.getLogger("diffusion_keras")

GRAYSCALE_DATASETS = ("mnist", "fashion_mnist")
# where tensorflow-datasets downloads from first (its mirror), checked before a download is tried
TFDS_HOST = ("storage.googleapis.com", 443)
NORMALIZER_SAMPLE_VALUES = 2**24  # pixel values the normaliser's statistics are measured on


def preprocess(imgs):
    """Any image array (N, H, W) or (N, H, W, C), uint8 or float, -> float32 NHWC in [0, 1]."""
    imgs = np.asarray(imgs)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4:
        raise UsageError(f"expected a batch of images (N, H, W[, C]), got shape {imgs.shape}")
    if np.issubdtype(imgs.dtype, np.integer):  # float32 division, bit for bit as in the model
        return imgs.astype("float32") / np.float32(255.0)
    return np.clip(imgs, 0.0, 1.0).astype("float32")


def folder_source(data_dir, limit=None, seed=0):
    """The images under `data_dir` (a seeded `limit` of them), keyed by every file's path and a
    hash of its content (`image_files.content_digests`): an edited or replaced file is never served
    stale, whatever its modification time says; class labels from the first-level sub-folders."""
    files = image_files.list_image_files(data_dir)
    files = [files[index] for index in image_files.seeded_subset(len(files), limit, seed)]
    labels, class_names = image_files.folder_classes(files, data_dir)
    listing = hashlib.sha256()
    for path, digest in zip(files, image_files.content_digests(files)):
        listing.update(f"{path}\0{digest}\n".encode())
    names = [os.path.relpath(path, data_dir) for path in files]
    name = os.path.basename(os.path.normpath(os.path.abspath(data_dir))) or "images"
    return image_cache.Source(
        name=name, count=len(files), class_names=class_names,
        description={"data_dir": os.path.abspath(data_dir), "files": listing.hexdigest(),
                     "count": len(files)},
        items=lambda: zip(names, files, labels.tolist()))


def tfds_source(name, split="train", limit=None, seed=0):
    """A tensorflow-datasets split (downloaded on first use), read example by example with the
    images still encoded: a seeded `limit` of them is picked before anything is decoded."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of {list(DATASETS)} "
                         "or pass --data-dir FOLDER")
    import tensorflow_datasets as tfds

    builder = tfds_builder(name)
    count = split_size(builder, split)
    keep = image_files.seeded_subset(count, limit, seed)
    features = builder.info.features
    class_names = list(features["label"].names) if "label" in features else []

    def items():
        dataset = builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        wanted = iter(keep)
        next_index = next(wanted, None)
        for index, example in enumerate(tfds.as_numpy(dataset)):
            if index == next_index:
                yield f"{split}[{index}]", example["image"], int(example.get("label", -1))
                next_index = next(wanted, None)
                if next_index is None:
                    return

    return image_cache.Source(
        name=f"{name}-{split}", count=len(keep), class_names=class_names, items=items,
        description={"dataset": name, "split": split, "version": str(builder.info.version),
                     "limit": limit, "seed": seed, "count": len(keep)})


def split_size(builder, split):
    """How many examples a prepared dataset's `split` holds; one line for a split it lacks."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        raise UsageError(f"tensorflow-datasets {builder.name!r} has no split {split!r}; it has "
                         f"{list(builder.info.splits)}") from None


def tfds_builder(name):
    """A prepared tensorflow-datasets builder, downloading it first when the mirror can be reached;
    a one-line error otherwise (in seconds, not minutes of download retries)."""
    import tensorflow_datasets as tfds

    absl = logging.getLogger("absl")  # tfds warns about its own folders while probing them
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        builder = tfds.builder(name)
        prepared = builder.is_prepared()
    except Exception as error:  # a builder that cannot even be made is treated as not prepared
        builder, prepared = None, False
        log.debug("tfds builder %s: %s", name, error)
    finally:
        absl.setLevel(level)
    if not prepared and not reachable(TFDS_HOST):
        raise UsageError(
            f"tensorflow-datasets {name!r} is not downloaded yet and {TFDS_HOST[0]} cannot be "
            "reached; download it once with network access, or pass --data-dir FOLDER of images "
            "instead")
    if not prepared:
        try:
            builder = builder or tfds.builder(name)
            builder.download_and_prepare()
        except Exception as error:  # tfds raises many kinds of download errors
            raise UsageError(
                f"could not load tensorflow-datasets {name!r} ({type(error).__name__}); it must be "
                "downloaded once with network access, or pass --data-dir FOLDER of images instead"
            ) from error
    return builder


def reachable(address, timeout=3.0):
    """Whether a TCP connection to (host, port) opens within `timeout` seconds."""
    try:
        socket.create_connection(address, timeout=timeout).close()
        return True
    except OSError:
        return False


def image_source(dataset="cifar10", data_dir=None, limit=None, seed=0, split="train"):
    """The source a command line asked for: `data_dir` when given, else the tfds `dataset`."""
    if data_dir is not None:
        return folder_source(data_dir, limit, seed)
    return tfds_source(dataset, split, limit, seed)


def open_images(image_size, dataset="cifar10", data_dir=None, limit=None, seed=0, channels=None,
                cache_dir=None, split="train", workers=None, conditional=False):
    """The training images as `image_cache.PreparedImages` (uint8, read batch by batch, with their
    `labels` and `class_names`), prepared into `cache_dir` (default:
    `config.default_cache_dir("images")`) on first use. `channels=None`: 1 for digit datasets and
    folders of grayscale images, else 3. `conditional`: every image must have a class (checked
    before any decoding)."""
    if channels is None and data_dir is None and dataset in GRAYSCALE_DATASETS:
        channels = 1
    source = image_source(dataset, data_dir, limit, seed, split)
    if conditional:
        check_classes(source, data_dir)
    return image_cache.open_prepared(source, image_size, channels,
                                     cache_dir or default_cache_dir("images"), workers)


def check_classes(source, data_dir):
    """One line when a class-conditional run's data has no classes to learn."""
    if data_dir is None and not source.class_names:
        raise UsageError(f"--conditional needs labels, and tensorflow-datasets "
                         f"{source.description['dataset']!r} has no label feature; drop "
                         "--conditional or use a labelled dataset")
    if data_dir is not None:
        unlabelled = sum(label < 0 for _, _, label in source.items())
        if unlabelled or not source.class_names:
            raise UsageError(
                f"--conditional reads classes from the sub-folders of --data-dir {data_dir!r}, "
                f"but {unlabelled or 'all'} image(s) lie directly in it; arrange it as "
                f"{data_dir}/<class name>/<images> (one folder per class), or drop --conditional")


def decode_in_memory(source, image_size, channels=None, workers=None):
    """A small source decoded into one uint8 array, without preparing a file."""
    decoded = list(image_files.decode_usable(source.items(), source.count, image_size, channels,
                                             source.where, workers))
    images = np.stack([array for _, array, _, _ in decoded])
    return images[..., :1] if channels is None and all(gray for _, _, gray, _ in decoded) else images


def load_image_folder(data_dir, image_size, channels=None, limit=None, seed=0):
    """A folder's usable images as one uint8 array (N, H, W, C), for small folders and notebooks
    (`open_images` for training sets: it reads from a prepared file instead of memory)."""
    return decode_in_memory(folder_source(data_dir, limit, seed), image_size, channels)


def normalizer_sample(images, indices=None, seed=0):
    """A seeded sample of the images at `indices` (default: all) as float32 in [0, 1], bounded to
    NORMALIZER_SAMPLE_VALUES pixel values whatever the dataset's size, for the normaliser's
    per-channel statistics (the same sample in every process)."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    count = max(64, NORMALIZER_SAMPLE_VALUES // int(np.prod(images.shape[1:])))
    return preprocess(images[indices[image_files.seeded_subset(len(indices), count, seed)]])


class ImageBatches(keras.utils.PyDataset):
    """Shuffled batches with optional random horizontal flips, reproducible from (seed, epoch),
    of the images at `indices` (default: all) of `images` (any array, uint8 or float, or
    `PreparedImages`); batches keep the images' dtype.

    The last incomplete batch is dropped so every training step has the same (compiled) shape.
    With `labels` (class indices, one per image) a batch is (images, labels), as `fit` passes
    them to a class-conditional model; `paired` (one array row per image, e.g. a reflow student's
    starting noises) rides along the same way, as (images, paired) or (images, (paired, labels)).
    With `shard=(index, count)` (one process of a multi-process run) a batch holds this process's
    share of rows of the global batch of `batch_size`, so the processes together see exactly the
    batches one process would. `steps_per_epoch` caps an epoch at that many batches, each epoch a
    fresh seeded draw. Batches are read ahead by `workers` threads.
    """

    def __init__(self, images, batch_size, flip=True, seed=0, shuffle=True, epoch=0, indices=None,
                 shard=(0, 1), workers=2, labels=None, paired=None, steps_per_epoch=None, **kwargs):
        super().__init__(workers=workers, **kwargs)
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)
        if len(self.indices) < batch_size:
            raise UsageError(f"only {counted(len(self.indices), 'image')} for batch size {batch_size}; "
                             "use a smaller --batch-size or more images")
        shard_index, shard_count = shard
        if batch_size % shard_count:
            raise UsageError(f"batch size {batch_size} does not split evenly over {shard_count} "
                             "processes; use a multiple of the process count")
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, "int32")
        self.paired = None if paired is None else np.asarray(paired)
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.rows = slice(shard_index * batch_size // shard_count,
                          (shard_index + 1) * batch_size // shard_count)
        self.flip = flip
        self.seed = seed
        self.shuffle = shuffle
        self.set_epoch(epoch)

    def plan(self, epoch):
        """Image indices and flip flags of epoch `epoch`, batch after batch, from (seed, epoch).

        Within a batch the indices are sorted (faster reads; the order inside a batch is moot).
        """
        rng = np.random.default_rng((self.seed, epoch))
        count = len(self) * self.batch_size
        order = rng.permutation(len(self.indices)) if self.shuffle else np.arange(len(self.indices))
        order = np.sort(self.indices[order[:count]].reshape(len(self), self.batch_size), axis=1)
        flips = rng.random(count) < 0.5 if self.flip else np.zeros(count, dtype=bool)
        return order.reshape(-1), flips

    def set_epoch(self, epoch):
        """Order the images as epoch `epoch` sees them (resuming a run starts mid-sequence)."""
        self.epoch = epoch
        self.order, self.flips = self.plan(epoch)

    def __len__(self):
        full = len(self.indices) // self.batch_size
        return full if self.steps_per_epoch is None else min(full, self.steps_per_epoch)

    def batch(self, order, flips):
        """The images at `order` (sorted), flipped where `flips` says, with their paired rows and
        labels if any."""
        batch = self.images[order]
        batch[flips] = batch[flips, :, ::-1]
        targets = [values[order] for values in self.target_arrays()]
        if not targets:
            return batch
        return batch, targets[0] if len(targets) == 1 else tuple(targets)

    def target_arrays(self):
        """The per-image arrays a batch carries besides its images: paired rows, then labels."""
        return [values for values in (self.paired, self.labels) if values is not None]

    def __getitem__(self, index):
        start = index * self.batch_size
        rows = slice(start + self.rows.start, start + self.rows.stop)
        return self.batch(self.order[rows], self.flips[rows])

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def fit_input(self, initial_epoch=0, epochs=1):
        """These batches for epochs [initial_epoch, epochs) in the form this backend's `fit`
        consumes fastest; pass `steps_per_epoch=len(batches)` to `fit` with it. Every backend
        orders an epoch by `plan(epoch)`.

        JAX and PyTorch take the PyDataset itself (its worker threads read ahead; `on_epoch_end`
        moves it to the next epoch's plan). On TensorFlow, Keras would feed a PyDataset through
        `tf.data.Dataset.from_generator`, which on 2 CPU cores made training 3x slower than feeding
        arrays; a native tf.data pipeline that asks NumPy for each epoch's plan and each batch's
        images, two batches ahead, keeps the step fed with identical batches.
        """
        self.set_epoch(initial_epoch)
        if backend.BACKEND != "tensorflow":
            return self
        import tensorflow as tf

        image_shape = [self.batch_size, *self.images.shape[1:]]
        image_dtype = tf.as_dtype(self.images.dtype)

        def epoch_batches(epoch):
            order, flips = tf.numpy_function(lambda e: self.plan(int(e)), [epoch],
                                             (tf.int64, tf.bool), stateful=False)
            slices = tf.data.Dataset.from_tensor_slices((tf.ensure_shape(order, [None]),
                                                         tf.ensure_shape(flips, [None])))
            return slices.batch(self.batch_size, drop_remainder=True)

        targets = self.target_arrays()

        def read_flat(order, flips):  # (images, target, ...) as numpy_function returns them
            images, batch_targets = self.batch(order, flips)
            return [images, *(batch_targets if len(targets) > 1 else [batch_targets])]

        def read(order, flips):
            if not targets:
                batch = tf.numpy_function(self.batch, [order, flips], image_dtype, stateful=False)
                return tf.ensure_shape(batch, image_shape)
            arrays = tf.numpy_function(
                read_flat, [order, flips],
                (image_dtype, *(tf.as_dtype(values.dtype) for values in targets)), stateful=False)
            images, *rows = arrays
            rows = [tf.ensure_shape(row, [self.batch_size, *values.shape[1:]])
                    for row, values in zip(rows, targets)]
            return tf.ensure_shape(images, image_shape), rows[0] if len(rows) == 1 else tuple(rows)

        dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch_batches)
        # a known length lets Keras end each validation pass without an "ran out of data" warning
        length = tf.data.experimental.assert_cardinality((epochs - initial_epoch) * len(self))
        return dataset.apply(length).map(read, num_parallel_calls=2).prefetch(2)
