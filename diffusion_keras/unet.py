"""The denoising U-Net: `network([noisy_images, noise_variances]) -> pred` shaped like the images."""

import keras
from keras import layers

from diffusion_keras.errors import UsageError
from diffusion_keras.layers import NORMALIZATIONS, SinusoidalEmbedding, down_block, unet_block, up_block

DEFAULT_WIDTHS = (32, 64, 96, 128)
EMBEDDINGS = ("input", "every")


def check_image_size(image_size, widths):
    """The U-Net halves the resolution len(widths) - 1 times, so the size must divide evenly."""
    factor = 2 ** (len(widths) - 1)
    if image_size <= 0 or image_size % factor:
        raise UsageError(
            f"image size {image_size} is not divisible by {factor} (2^(number of widths - 1) for "
            f"widths {list(widths)}); use a multiple of {factor} or fewer widths"
        )


def check_unet_options(norm, embedding, dropout):
    if norm not in NORMALIZATIONS:
        raise UsageError(f"unknown normalization {norm!r}; choose one of {list(NORMALIZATIONS)}")
    if embedding not in EMBEDDINGS:
        raise UsageError(f"unknown embedding injection {embedding!r}; choose one of {list(EMBEDDINGS)}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout}")


def build_unet(image_size=32, channels=3, widths=DEFAULT_WIDTHS, block_depth=2,
               embedding_dims=32, embedding_max_frequency=1000.0, name="unet",
               attention_resolutions=(), norm="batch", embedding="input", dropout=0.0):
    """The keras-io DDIM U-Net by default: the noise embedding is tiled over the image and joins at
    the input. DDPM-style options: self-attention at the feature-map sides in
    `attention_resolutions`, GroupNorm (`norm="group"`), the embedding added to every residual block
    (`embedding="every"`, through a small MLP as in DDPM) and dropout in the residual blocks."""
    check_image_size(image_size, widths)
    check_unet_options(norm, embedding, dropout)
    noisy_images = keras.Input((image_size, image_size, channels), name="noisy_images")
    noise_variances = keras.Input((1, 1, 1), name="noise_variances")

    features = SinusoidalEmbedding(embedding_dims, max_frequency=embedding_max_frequency,
                                  dtype="float32")(  # sin(2 pi 1000 v) is noise in bfloat16
        noise_variances
    )
    x = layers.Conv2D(widths[0], kernel_size=1)(noisy_images)
    if embedding == "input":
        tiled = layers.UpSampling2D(size=image_size, interpolation="nearest")(features)
        x = layers.Concatenate()([x, tiled])
        block = unet_block(norm, None, dropout, tuple(attention_resolutions))
    else:
        features = layers.Dense(4 * embedding_dims, activation="swish")(features)
        block = unet_block(norm, features, dropout, tuple(attention_resolutions))

    skips = []
    for width in widths[:-1]:
        x = down_block(width, block_depth, block)(x, skips)
    for _ in range(block_depth):
        x = block(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = up_block(width, block_depth, block)(x, skips)

    # Zero-initialised output: the untrained network predicts zero noise, a stable starting point.
    outputs = layers.Conv2D(channels, kernel_size=1, kernel_initializer="zeros", dtype="float32")(x)
    return keras.Model([noisy_images, noise_variances], outputs, name=name)
