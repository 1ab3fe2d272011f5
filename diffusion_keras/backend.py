"""The one module that asks which Keras backend is running, and compiles for it."""

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
