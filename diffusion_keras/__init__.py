"""diffusion_keras: train denoising diffusion models on your images with Keras 3, on any backend."""

from diffusion_keras.model import DiffusionModel
from diffusion_keras.schedules import (
    cosine_diffusion_schedule,
    linear_diffusion_schedule,
    offset_cosine_diffusion_schedule,
)
from diffusion_keras.unet import build_unet

__all__ = [
    "DiffusionModel",
    "build_unet",
    "cosine_diffusion_schedule",
    "linear_diffusion_schedule",
    "offset_cosine_diffusion_schedule",
]
