"""The denoising U-Net: `network([noisy_images, noise_variances]) -> pred` shaped like the images."""

import keras
from keras import layers

from diffusion_keras.errors import UsageError
from diffusion_keras.layers import SinusoidalEmbedding, down_block, residual_block, up_block

DEFAULT_WIDTHS = (32, 64, 96, 128)


def check_image_size(image_size, widths):
    """The U-Net halves the resolution len(widths) - 1 times, so the size must divide evenly."""
    factor = 2 ** (len(widths) - 1)
    if image_size <= 0 or image_size % factor:
        raise UsageError(
            f"image size {image_size} is not divisible by {factor} (2^(number of widths - 1) for "
            f"widths {list(widths)}); use a multiple of {factor} or fewer widths"
        )


def build_unet(image_size=32, channels=3, widths=DEFAULT_WIDTHS, block_depth=2,
               embedding_dims=32, embedding_max_frequency=1000.0, name="unet"):
    """The keras-io DDIM U-Net: the noise embedding is tiled over the image and joins at the input."""
    check_image_size(image_size, widths)
    noisy_images = keras.Input((image_size, image_size, channels), name="noisy_images")
    noise_variances = keras.Input((1, 1, 1), name="noise_variances")

    # float32 even under mixed precision: sin(2 pi 1000 v) is noise in bfloat16.
    embedding = SinusoidalEmbedding(embedding_dims, max_frequency=embedding_max_frequency,
                                    dtype="float32")(
        noise_variances
    )
    embedding = layers.UpSampling2D(size=image_size, interpolation="nearest")(embedding)

    x = layers.Conv2D(widths[0], kernel_size=1)(noisy_images)
    x = layers.Concatenate()([x, embedding])

    skips = []
    for width in widths[:-1]:
        x = down_block(width, block_depth)(x, skips)
    for _ in range(block_depth):
        x = residual_block(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = up_block(width, block_depth)(x, skips)

    # Zero-initialised output: the untrained network predicts zero noise, a stable starting point.
    outputs = layers.Conv2D(channels, kernel_size=1, kernel_initializer="zeros", dtype="float32")(x)
    return keras.Model([noisy_images, noise_variances], outputs, name=name)
