import keras
import numpy as np
import pytest

from diffusion_keras.config import ModelConfig
from diffusion_keras.errors import UsageError
from diffusion_keras.layers import SinusoidalEmbedding
from diffusion_keras.unet import build_unet


def unet(**settings):
    return build_unet(ModelConfig(**settings))


@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_shaped_like_the_input(channels):
    network = unet(image_size=16, channels=channels, widths=(8, 16, 24), block_depth=1, embedding_dims=8)
    images = np.random.rand(2, 16, 16, channels).astype("float32")
    variances = np.full((2, 1, 1, 1), 0.5, "float32")
    assert network([images, variances]).shape == (2, 16, 16, channels)


def test_untrained_network_predicts_zero_noise():
    network = unet(image_size=8, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8)
    output = network([np.random.rand(2, 8, 8, 3), np.full((2, 1, 1, 1), 0.3)])
    assert float(keras.ops.max(keras.ops.abs(output))) == 0.0


def test_image_size_must_divide_by_the_downsampling_factor():
    with pytest.raises(UsageError, match="not divisible by 4"):
        unet(image_size=18, channels=3, widths=(8, 16, 32))


def test_embedding_layer_config_round_trips():
    layer = SinusoidalEmbedding(16, max_frequency=500.0)
    clone = SinusoidalEmbedding.from_config(layer.get_config())
    values = np.linspace(0, 1, 6, dtype="float32").reshape(6, 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(values)),
                               keras.ops.convert_to_numpy(clone(values)))
    assert clone(values).shape == (6, 16)


def test_default_options_are_batchnorm_no_attention_and_the_embedding_in_every_block():
    plain = unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8)
    explicit = unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8,
                    attention_resolutions=(), norm="batch", embedding="every", dropout=0.0)
    keras_io = unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8,
                    embedding="input")
    assert [w.shape for w in plain.weights] == [w.shape for w in explicit.weights]
    assert keras_io.count_params() < plain.count_params(), "keras-io: no per-block projections"
    kinds = {layer.__class__.__name__ for layer in plain.layers}
    assert "BatchNormalization" in kinds and "MultiHeadAttention" not in kinds


def test_ddpm_style_options_build_attention_groupnorm_and_per_block_embedding():
    network = unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8,
                         attention_resolutions=(8,), norm="group", embedding="every", dropout=0.1)
    kinds = [layer.__class__.__name__ for layer in network.layers]
    assert "MultiHeadAttention" in kinds and "GroupNormalization" in kinds
    assert "BatchNormalization" not in kinds and "Dropout" in kinds
    # attention only at the 8x8 level: the down block's is at 16x16, so none there
    attention_inputs = [layer.input[0].shape for layer in network.layers
                        if layer.__class__.__name__ == "MultiHeadAttention"]
    assert attention_inputs and all(shape[1] == 64 for shape in attention_inputs)
    images = np.random.rand(2, 16, 16, 3).astype("float32")
    low, high = (np.full((2, 1, 1, 1), value, "float32") for value in (0.1, 0.9))
    # The last convolution starts at zero, so set it to see the embedding reach the output.
    network.layers[-1].kernel.assign(np.ones(network.layers[-1].kernel.shape, "float32"))
    assert not np.allclose(keras.ops.convert_to_numpy(network([images, low])),
                           keras.ops.convert_to_numpy(network([images, high])))


def test_no_normalisation_builds_without_normalisation_layers_and_keeps_the_weights():
    batch_norm = unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8)
    network = unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, embedding_dims=8,
                   norm="none")
    kinds = {layer.__class__.__name__ for layer in network.layers}
    assert not kinds & {"BatchNormalization", "GroupNormalization"}
    # unscaled BatchNorm learns nothing: the same trainable weights, less its moving statistics
    assert [w.shape for w in network.trainable_weights] == \
        [w.shape for w in batch_norm.trainable_weights]
    assert not network.non_trainable_weights and batch_norm.non_trainable_weights
    output = network([np.random.rand(2, 16, 16, 3).astype("float32"), np.full((2, 1, 1, 1), 0.5)])
    assert output.shape == (2, 16, 16, 3) and np.isfinite(keras.ops.convert_to_numpy(output)).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": "layer"}, "normalization"),
    ({"embedding": "output"}, "embedding injection"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_unet_options_are_rejected_with_the_value(kwargs, message):
    with pytest.raises(UsageError, match=message):
        unet(image_size=16, channels=3, widths=(8, 16), block_depth=1, **kwargs)
