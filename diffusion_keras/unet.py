"""The denoising U-Net: `network([noisy_images, noise_variances]) -> pred` shaped like the images;
a class-conditional one also takes `class_labels`, one trained with augmentation `augment_labels`
(in that order)."""

import keras
from keras import layers

from diffusion_keras.augmentation import AUGMENT_EMBEDDING, AUGMENT_LABELS
from diffusion_keras.config import ModelConfig
from diffusion_keras.layers import SinusoidalEmbedding, down_block, unet_block, up_block


def build_unet(config=ModelConfig(), name="unet"):
    """The U-Net a `ModelConfig` describes: the keras-io DDIM U-Net with the noise embedding added to
    every residual block through a small MLP, as in DDPM (the default; `embedding="input"`: tiled
    over the image and joined at the input, as keras-io did). Other options: self-attention at the
    feature-map sides in `attention_resolutions`, GroupNorm (`norm="group"`; or none, `norm="none"`)
    and dropout in the residual blocks. With `class_names`, a learned class embedding (index
    len(class_names): no class) is added to the noise embedding, so the classes reach the network
    wherever the noise level does; with `augment`, so are the augmentation labels, through a linear
    map without bias (EDM's), so zero labels add nothing (zero-initialised: a network fine-tuned
    with augmentation starts as the one it came from).
    """
    image_size, channels, widths = config.image_size, config.channels, config.widths
    embedding_dims, norm, dropout = config.embedding_dims, config.norm, config.dropout
    noisy_images = keras.Input((image_size, image_size, channels), name="noisy_images")
    noise_variances = keras.Input((1, 1, 1), name="noise_variances")

    features = SinusoidalEmbedding(embedding_dims, max_frequency=config.embedding_max_frequency,
                                  dtype="float32")(  # sin(2 pi 1000 v) is noise in bfloat16
        noise_variances
    )
    inputs = [noisy_images, noise_variances]
    if config.class_names:
        class_labels = keras.Input((1,), dtype="int32", name="class_labels")
        # float32, like the noise features they join
        classes = layers.Embedding(len(config.class_names) + 1, embedding_dims, dtype="float32")(
            class_labels)
        classes = layers.Reshape((1, 1, embedding_dims), dtype="float32")(classes)
        features = layers.Add(dtype="float32")([features, classes])
        inputs.append(class_labels)
    if config.augment:
        augment_labels = keras.Input((AUGMENT_LABELS,), name="augment_labels")
        augments = layers.Dense(embedding_dims, use_bias=False, kernel_initializer="zeros",
                                dtype="float32", name=AUGMENT_EMBEDDING)(augment_labels)
        augments = layers.Reshape((1, 1, embedding_dims), dtype="float32")(augments)
        features = layers.Add(dtype="float32")([features, augments])
        inputs.append(augment_labels)
    x = layers.Conv2D(widths[0], kernel_size=1)(noisy_images)
    if config.embedding == "input":
        tiled = layers.UpSampling2D(size=image_size, interpolation="nearest")(features)
        x = layers.Concatenate()([x, tiled])
        block = unet_block(norm, None, dropout, config.attention_resolutions)
    else:
        features = layers.Dense(4 * embedding_dims, activation="swish")(features)
        block = unet_block(norm, features, dropout, config.attention_resolutions)

    skips = []
    for width in widths[:-1]:
        x = down_block(width, config.block_depth, block)(x, skips)
    for _ in range(config.block_depth):
        x = block(widths[-1])(x)
    for width in reversed(widths[:-1]):
        x = up_block(width, config.block_depth, block)(x, skips)

    # Zero-initialised output: the untrained network predicts zero noise, a stable starting point.
    outputs = layers.Conv2D(channels, kernel_size=1, kernel_initializer="zeros", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)
