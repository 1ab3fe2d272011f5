"""Data-parallel training and sampling over many devices, with Keras' own distribution API (JAX).

`start` sets `keras.distribution.DataParallel` over every local device (GPUs or TPU cores), first
joining the other hosts with `keras.distribution.initialize()` when the environment variables it
documents are set (KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES,
KERAS_DISTRIBUTION_PROCESS_ID). It must run before the model is built: variables made earlier live
on one device, and JAX then fails with "incompatible devices". Weights are replicated, each batch is
split over the devices, and BatchNorm statistics and the loss are computed over the global batch,
so training matches one device with the same global batch.
"""

import os

import keras
import numpy as np

from diffusion_keras import backend
from diffusion_keras.errors import UsageError

MULTI_HOST_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                        "KERAS_DISTRIBUTION_PROCESS_ID")


def check_supported():
    """One line on a backend where data-parallel training is not right yet.

    TensorFlow's MirroredStrategy runs this model wrongly (the loss is not divided by the replica
    count, every replica draws the same noise, BatchNorm statistics differ between replicas), and
    PyTorch has no Keras distribution support."""
    if backend.BACKEND != "jax":
        raise UsageError(f"--distribute trains data-parallel on the JAX backend only (this is "
                         f"{backend.BACKEND}); run it as KERAS_BACKEND=jax python train.py "
                         "--distribute ...")


def start(batch_size):
    """Data parallelism over every device of every process; returns the device count."""
    check_supported()
    if keras.distribution.distribution() is None:
        if all(os.environ.get(name) for name in MULTI_HOST_VARIABLES):
            keras.distribution.initialize()
        devices = keras.distribution.list_devices()
        if batch_size % len(devices):
            raise UsageError(f"batch size {batch_size} does not split evenly over {len(devices)} "
                             f"devices; use a multiple of {len(devices)}")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return device_count()


def active():
    return keras.distribution.distribution() is not None


def device_count():
    return len(keras.distribution.distribution().device_mesh.devices.flat) if active() else 1


def process_index():
    """This process's number in a multi-host run (0 otherwise): process 0 writes the run folder."""
    if backend.BACKEND == "jax" and active():
        import jax

        return jax.process_index()
    return 0


def process_count():
    if backend.BACKEND == "jax" and active():
        import jax

        return jax.process_count()
    return 1


def batch_size_for_devices(batch_size):
    """`batch_size` rounded up to a multiple of the device count, so a sampling batch splits."""
    return -(-batch_size // device_count()) * device_count()


def shard_batch(array):
    """A batch split over the devices along its first axis (unchanged without a distribution); every
    process passes the whole batch and contributes its devices' rows."""
    if not active():
        return array
    import jax

    layout = keras.distribution.distribution().get_data_layout(array.shape).backend_layout
    return jax.make_array_from_callback(array.shape, layout, lambda index: array[index])


def to_numpy(array):
    """A (possibly sharded) result as one NumPy array in every process."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return keras.ops.convert_to_numpy(array)
