"""The one module that asks which Keras backend is running, and compiles for it."""

import contextlib

import keras

BACKEND = keras.backend.backend()


def has_gpu():
    """Whether the running backend sees a GPU (decides compile settings; see docs/speed.md)."""
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
