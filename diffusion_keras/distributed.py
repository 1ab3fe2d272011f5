"""Data-parallel training and sampling over many devices and hosts, with Keras' own distribution API
(JAX).

`start` sets `keras.distribution.DataParallel` over every device of every process, first joining the
other processes when the variables Keras documents for `keras.distribution.initialize()` are set
(KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID).
It must run before any variable is made: variables made earlier live on one device, and JAX then
fails with "incompatible devices". Weights are replicated, each process feeds its own rows of every
global batch (`data.ImageBatches(shard=...)`, so Keras' own dataset sharding is off), and BatchNorm
statistics and the loss are computed over the global batch, so training matches one device with the
same global batch. Every process runs every computation (sampling too: a sharded batch needs all of
them); only process 0 writes files (`is_writer`).

A multi-process run ends as one. A process that stops with an error, a Ctrl-C or a crash posts its
exit code to the coordination service and leaves at once (`end_process`); every other process
watches for that post and stops within a second, with one line, instead of waiting for ever inside
a collective. A process killed outright is noticed by the coordination service's heartbeat, which
ends the others within HEARTBEAT_SECONDS.
"""

import contextlib
import os
import secrets
import sys
import threading

import keras
import numpy as np

from diffusion_keras import backend, interrupts, quiet
from diffusion_keras.errors import UsageError

MULTI_HOST_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                        "KERAS_DISTRIBUTION_PROCESS_ID")
JOIN_SECONDS = 600  # how long a process waits for the others to start (they may be preparing data)
HEARTBEAT_SECONDS = 30  # a process silent this long is dead, and the run ends everywhere
STOPPED_KEY = "diffusion_keras/stopped/"  # + process id: that process's exit code and why
SHARED_KEY = "diffusion_keras/shared/"  # + name: values process 0 decides for all (`shared_value`)
finished = threading.Event()  # this process's command has ended well: stop watching the others


def check_supported():
    """One line on a backend where data-parallel training is not right yet.

    TensorFlow's MirroredStrategy runs this model wrongly (the loss is not divided by the replica
    count, every replica draws the same noise, BatchNorm statistics differ between replicas), and
    PyTorch has no Keras distribution support."""
    if backend.BACKEND != "jax":
        raise UsageError(f"--distribute trains data-parallel on the JAX backend only (this is "
                         f"{backend.BACKEND}); run it as KERAS_BACKEND=jax python train.py "
                         "--distribute ...")


def multi_host_settings():
    """(coordinator address, process count, this process's id) from Keras' variables, or None
    when they are not all set; a one-line error for values that cannot be right."""
    values = [os.environ.get(name, "") for name in MULTI_HOST_VARIABLES]
    if not all(values):
        if any(values):
            missing = [name for name, value in zip(MULTI_HOST_VARIABLES, values) if not value]
            raise UsageError(f"a multi-host run needs all of {', '.join(MULTI_HOST_VARIABLES)}; "
                             f"{', '.join(missing)} not set")
        return None
    addresses, count, index = values
    try:
        count, index = int(count), int(index)
    except ValueError:
        raise UsageError(f"KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID must "
                         f"be integers, got {count!r} and {index!r}") from None
    addresses = addresses.split(",")
    if count < 1 or not 0 <= index < count or len(addresses) not in (1, count):
        raise UsageError(f"KERAS_DISTRIBUTION_PROCESS_ID {index} must be in [0, {count}) and "
                         f"KERAS_DISTRIBUTION_JOB_ADDRESSES must list 1 or {count} host:port "
                         f"addresses (got {len(addresses)})")
    return addresses[0], count, index


def start(batch_size=None):
    """Data parallelism over every device of every process; returns the device count. A training
    `batch_size` must split evenly over the devices (sampling batches are rounded up instead)."""
    check_supported()
    if keras.distribution.distribution() is None:
        settings = multi_host_settings()
        if settings is not None:
            join(*settings)
        devices = keras.distribution.list_devices()
        if batch_size is not None and batch_size % len(devices):
            raise UsageError(f"batch size {batch_size} does not split evenly over {len(devices)} "
                             f"devices; use a multiple of {len(devices)}")
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    return device_count()


def join(coordinator, count, index):
    """Join the other processes (what `keras.distribution.initialize()` does, with deadlines), then
    watch them: a process that stops ends this one too."""
    import jax

    try:
        jax.distributed.initialize(coordinator, count, index, initialization_timeout=JOIN_SECONDS,
                                   heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
    except Exception as error:  # XLA raises its own error types for an unreachable coordinator
        raise UsageError(f"process {index} of {count} could not join the others at {coordinator} "
                         f"within {JOIN_SECONDS} s ({type(error).__name__}); start the same command "
                         "on every host, each with its own KERAS_DISTRIBUTION_PROCESS_ID") from None
    interrupts.reclaim_signals()  # JAX takes SIGTERM as a preemption notice; here it stops a run
    # one random seed in every process, as keras.distribution.initialize() draws, so weights made
    # before a checkpoint is loaded (or a seed is set) are the same everywhere
    quiet.set_random_seed(int(shared_value("seed", lambda: str(secrets.randbits(31)))))
    threading.Thread(target=watch_other_processes, args=(coordination_client(), index),
                     daemon=True, name="diffusion_keras-watch").start()


def coordination_client():
    from jax._src import distributed as jax_distributed  # the client has no public handle

    return jax_distributed.global_state.client


def watch_other_processes(client, index, interval=1.0):
    """Leave at once (exit code 1) when another process has posted that it stopped, until this
    one has finished its command (then the coordination service shuts down as planned)."""
    while not finished.is_set():
        message = stopped_elsewhere(client, index)
        if message and not finished.is_set():
            leave(1, message)
        finished.wait(interval)


def stopped_elsewhere(client=None, index=None):
    """'error: process K stopped (...)' when another process has posted that it stopped (or
    process 0, which hosts the coordination service, is gone), else None."""
    client = client or coordination_client()
    index = process_index() if index is None else index
    try:
        stopped = [(key.rsplit("/", 1)[-1], value) for key, value
                   in client.key_value_dir_get(STOPPED_KEY) if key.rsplit("/", 1)[-1] != str(index)]
    except Exception:  # the coordination service is gone with process 0
        stopped = [("0", "its coordination service is gone")]
    if not stopped:
        return None
    other, why = stopped[0]
    return f"error: process {other} stopped ({why}); stopping process {index} too"


def lost_peer_message(error):
    """One line for a collective that failed because another process is gone (killed outright,
    before it could post why), else None."""
    text = str(error)
    if not any(sign in text for sign in ("Connection reset", "Connection closed", "Broken pipe",
                                         "Socket closed", "DEADLINE_EXCEEDED")):
        return None
    first_line = text.strip().splitlines()[0][:200]
    return (f"error: a collective with the other processes failed ({type(error).__name__}: "
            f"{first_line}); another process has died: see its log")


def leave(code, message=None):
    """End this process now, skipping the shutdown barrier the others would never reach. The
    message goes out as one write on a line of its own, after anything printed so far (a progress
    bar, or a line the main thread is halfway through printing while the watcher calls this), and
    nothing printed afterwards can land on that line."""
    sys.stdout.flush()
    sys.stderr.flush()
    if message:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        os.write(2, f"\n{message}\n".encode())
    os._exit(code)


def end_process(code):
    """At the end of a command: in a multi-process run, a non-zero exit code is posted for the
    others (they stop too) and this process leaves at once."""
    if not code:
        finished.set()
    elif process_count() > 1:
        try:
            coordination_client().key_value_set(f"{STOPPED_KEY}{process_index()}",
                                                f"exit code {code}")
        finally:
            leave(code)


def shared_value(name, decide):
    """`decide()` in process 0, the same string in every process (e.g. a new run folder's name)."""
    if process_count() == 1:
        return decide()
    client = coordination_client()
    if process_index() == 0:
        value = decide()
        client.key_value_set(f"{SHARED_KEY}{name}", value)
        return value
    return client.blocking_key_value_get(f"{SHARED_KEY}{name}", JOIN_SECONDS * 1000)


@contextlib.contextmanager
def locally():
    """Run the block without the distribution, in this process alone (saving a model: Keras makes
    a variable there, which under a distribution every process would have to make too)."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def active():
    return keras.distribution.distribution() is not None


def device_count():
    return len(keras.distribution.distribution().device_mesh.devices.flat) if active() else 1


def joined():
    """Whether this process has joined others (`join`)."""
    return backend.BACKEND == "jax" and coordination_client() is not None


def process_index():
    """This process's number in a multi-host run (0 otherwise)."""
    if joined():
        import jax

        return jax.process_index()
    return 0


def process_count():
    if joined():
        import jax

        return jax.process_count()
    return 1


def is_writer():
    """Whether this process writes files: process 0 of a multi-host run, or the only one."""
    return process_index() == 0


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
