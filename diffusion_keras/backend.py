"""The one module that asks which Keras backend is running, and compiles for it."""

import contextlib

import keras

BACKEND = keras.backend.backend()


def has_gpu():
    """Whether the running backend sees a GPU (decides compile settings; see README's speed notes)."""
    if BACKEND == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if BACKEND == "torch":
        import torch

        return torch.cuda.is_available()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def default_jit_compile():
    """XLA for training: always on JAX; on TensorFlow only with a GPU (it slowed the CPU down)."""
    if BACKEND == "jax":
        return True
    if BACKEND == "tensorflow":
        return has_gpu()
    return False


def as_fit_input(batches, initial_epoch=0, epochs=1):
    """`ImageBatches` in the form this backend's `fit` consumes fastest (epochs [initial, epochs)).

    On TensorFlow, Keras feeds a PyDataset through `tf.data.Dataset.from_generator`, which on 2 CPU
    cores made training 3x slower than feeding arrays; a native tf.data pipeline that asks NumPy
    for each epoch's plan (order and flips) and each batch's images, two batches ahead, keeps the
    step fed with identical batches. Pass `steps_per_epoch=len(batches)` to `fit` with it. Other
    backends take the PyDataset as is (its worker threads read ahead).
    """
    if BACKEND != "tensorflow":
        return batches
    import tensorflow as tf

    image_shape = [batches.batch_size, *batches.images.shape[1:]]
    image_dtype = tf.as_dtype(batches.images.dtype)
    labelled = batches.labels is not None

    def epoch_batches(epoch):
        order, flips = tf.numpy_function(
            lambda e: batches.plan(int(e)), [epoch], (tf.int64, tf.bool), stateful=False
        )
        slices = tf.data.Dataset.from_tensor_slices((tf.ensure_shape(order, [None]),
                                                     tf.ensure_shape(flips, [None])))
        return slices.batch(batches.batch_size, drop_remainder=True)

    def read(order, flips):
        if not labelled:
            batch = tf.numpy_function(batches.batch, [order, flips], image_dtype, stateful=False)
            return tf.ensure_shape(batch, image_shape)
        images, labels = tf.numpy_function(batches.batch, [order, flips], (image_dtype, tf.int32),
                                           stateful=False)
        return tf.ensure_shape(images, image_shape), tf.ensure_shape(labels, image_shape[:1])

    dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(epoch_batches)
    # a known length lets Keras end each validation pass without an "ran out of data" warning
    length = tf.data.experimental.assert_cardinality((epochs - initial_epoch) * len(batches))
    return dataset.apply(length).map(read, num_parallel_calls=2).prefetch(2)


def compile_function(function, variables):
    """Compile `function(*tensors)`, which reads `variables`, into one graph on this backend.

    JAX traces statelessly, so the variables' current values are passed in on every call (not
    baked in at trace time); TensorFlow builds a `tf.function`; PyTorch runs eagerly without autograd.
    """
    if BACKEND == "jax":
        import jax

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([variable.value for variable in variables], *args)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=default_jit_compile(), reduce_retracing=True)
    if BACKEND == "torch":
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return function(*args)

        return no_grad
    return function


def cpu_has_bfloat16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where it pays off."""
    try:
        with open("/proc/cpuinfo") as file:
            flags = file.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_sample_batch_size():
    """Images per sampling call: 256 on a GPU; 64 on a CPU, where a batch's activations then fit
    the cache (2-core CPU, 20 DDIM steps: 10 images/s at batch 32-64, 6.5 at 256)."""
    return 256 if has_gpu() else 64


def default_dtype_policy():
    """The fastest Keras dtype policy measured for this backend and machine (see BENCHMARKS.md)."""
    if has_gpu():
        return "mixed_bfloat16"
    if BACKEND == "tensorflow" and cpu_has_bfloat16():
        return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(policy):
    """Build layers under `policy` (e.g. "mixed_bfloat16") and restore the global default after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def device_name():
    """A short description of where the backend computes."""
    if BACKEND == "jax":
        import jax

        return jax.devices()[0].device_kind
    if BACKEND == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return "gpu" if has_gpu() else "cpu"


def device_peak_memory_mib():
    """Peak accelerator memory of this process in MiB, or None on a CPU."""
    if not has_gpu():
        return None
    if BACKEND == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return round(stats.get("peak_bytes_in_use", 0) / 2**20, 1)
    if BACKEND == "torch":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import tensorflow as tf

    return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
