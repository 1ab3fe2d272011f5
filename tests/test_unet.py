import keras
import numpy as np
import pytest

from diffusion_keras.errors import UsageError
from diffusion_keras.layers import SinusoidalEmbedding
from diffusion_keras.unet import build_unet


@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_shaped_like_the_input(channels):
    network = build_unet(16, channels, widths=(8, 16, 24), block_depth=1, embedding_dims=8)
    images = np.random.rand(2, 16, 16, channels).astype("float32")
    variances = np.full((2, 1, 1, 1), 0.5, "float32")
    assert network([images, variances]).shape == (2, 16, 16, channels)


def test_untrained_network_predicts_zero_noise():
    network = build_unet(8, 3, widths=(8, 16), block_depth=1, embedding_dims=8)
    output = network([np.random.rand(2, 8, 8, 3), np.full((2, 1, 1, 1), 0.3)])
    assert float(keras.ops.max(keras.ops.abs(output))) == 0.0


def test_image_size_must_divide_by_the_downsampling_factor():
    with pytest.raises(UsageError, match="not divisible by 4"):
        build_unet(18, 3, widths=(8, 16, 32))


def test_embedding_layer_config_round_trips():
    layer = SinusoidalEmbedding(16, max_frequency=500.0)
    clone = SinusoidalEmbedding.from_config(layer.get_config())
    values = np.linspace(0, 1, 6, dtype="float32").reshape(6, 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(values)),
                               keras.ops.convert_to_numpy(clone(values)))
    assert clone(values).shape == (6, 16)
