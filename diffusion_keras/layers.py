"""U-Net building blocks: the noise embedding and the residual, down and up blocks.

The blocks are functional-API builders (`block(...)(x)`), as in the keras-io DDIM example, so the
U-Net is a plain functional `keras.Model` that saves and loads without custom glue.
"""

import math

import keras
from keras import layers, ops


def sinusoidal_embedding(noise_variances, embedding_dims=32, min_frequency=1.0,
                         max_frequency=1000.0):
    """Sin/cos features of the noise variance at log-spaced frequencies (Vaswani et al. 2017).

    Takes (..., 1) and returns (..., embedding_dims).
    """
    frequencies = ops.exp(
        ops.linspace(math.log(min_frequency), math.log(max_frequency), embedding_dims // 2)
    )
    angular_speeds = ops.cast(2.0 * math.pi * frequencies, noise_variances.dtype)
    return ops.concatenate(
        [ops.sin(angular_speeds * noise_variances), ops.cos(angular_speeds * noise_variances)],
        axis=-1,
    )


@keras.saving.register_keras_serializable(package="diffusion_keras")
class SinusoidalEmbedding(layers.Layer):
    """`sinusoidal_embedding` as a serialisable layer (a Lambda would not load in safe mode)."""

    def __init__(self, embedding_dims=32, min_frequency=1.0, max_frequency=1000.0, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dims = embedding_dims
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency

    def call(self, noise_variances):
        return sinusoidal_embedding(
            noise_variances, self.embedding_dims, self.min_frequency, self.max_frequency
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.embedding_dims)

    def get_config(self):
        return {
            **super().get_config(),
            "embedding_dims": self.embedding_dims,
            "min_frequency": self.min_frequency,
            "max_frequency": self.max_frequency,
        }


def normalization(kind, channels):
    """Unscaled BatchNorm (keras-io), GroupNorm with up to 32 groups (DDPM, Ho et al. 2020), or none
    (no statistics to keep or average, and a cheaper step on a CPU)."""
    if kind == "none":
        return layers.Identity()
    if kind == "group":
        return layers.GroupNormalization(groups=math.gcd(32, channels), center=False, scale=False)
    return layers.BatchNormalization(center=False, scale=False)


def residual_block(width, norm="batch", embedding=None, dropout=0.0):
    """Normalise, conv-swish, conv, plus a (1x1-projected when the width changes) skip.

    With `embedding` (batch, 1, 1, dims), a projection of it is added after the first convolution,
    as in DDPM's residual blocks; `dropout` sits before the second convolution.
    """

    def apply(x):
        residual = x if x.shape[-1] == width else layers.Conv2D(width, 1)(x)
        x = normalization(norm, x.shape[-1])(x)
        x = layers.Conv2D(width, 3, padding="same", activation="swish")(x)
        if embedding is not None:
            x = layers.Add()([x, layers.Dense(width)(embedding)])
        if dropout:
            x = layers.Dropout(dropout)(x)
        x = layers.Conv2D(width, 3, padding="same")(x)
        return layers.Add()([x, residual])

    return apply


def attention_block(norm="batch", num_heads=4):
    """Self-attention over all pixels plus a skip (DDPM at 16x16); the heads share the width."""

    def apply(x):
        _, height, width, channels = x.shape
        tokens = layers.Reshape((height * width, channels))(normalization(norm, channels)(x))
        heads = math.gcd(num_heads, channels)
        attended = layers.MultiHeadAttention(heads, channels // heads)(tokens, tokens)
        return layers.Add()([x, layers.Reshape((height, width, channels))(attended)])

    return apply


def unet_block(norm="batch", embedding=None, dropout=0.0, attention_resolutions=()):
    """`block(width)`: a residual block, then self-attention where the resolution (the feature
    map's side) is one of `attention_resolutions`."""

    def block(width):
        def apply(x):
            x = residual_block(width, norm, embedding, dropout)(x)
            return attention_block(norm)(x) if x.shape[1] in attention_resolutions else x

        return apply

    return block


def down_block(width, block_depth, block=residual_block):
    """`block_depth` residual (or any `block(width)`) blocks, each output kept in
    `skips`, then 2x average pooling."""

    def apply(x, skips):
        for _ in range(block_depth):
            x = block(width)(x)
            skips.append(x)
        return layers.AveragePooling2D(pool_size=2)(x)

    return apply


def up_block(width, block_depth, block=residual_block):
    """2x bilinear upsampling, then `block_depth` residual (or `block(width)`) blocks each fed the
    matching skip."""

    def apply(x, skips):
        x = layers.UpSampling2D(size=2, interpolation="bilinear")(x)
        for _ in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = block(width)(x)
        return x

    return apply
