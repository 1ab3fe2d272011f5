"""diffusion_keras: train denoising diffusion models on your images with Keras 3, on any backend.

The names below load on first use (PEP 562), so the command lines answer `--help` and argument
errors without importing Keras and TensorFlow. `from diffusion_keras import DiffusionModel`
registers the model with Keras, which `keras.saving.load_model` needs.
"""

import importlib

_NAMES = {
    "DiffusionModel": "diffusion_keras.model",
    "build_unet": "diffusion_keras.unet",
    "cosine_diffusion_schedule": "diffusion_keras.schedules",
    "flow_diffusion_schedule": "diffusion_keras.schedules",
    "linear_diffusion_schedule": "diffusion_keras.schedules",
    "offset_cosine_diffusion_schedule": "diffusion_keras.schedules",
}

__all__ = list(_NAMES)


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'diffusion_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
