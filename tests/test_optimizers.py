"""Muon on the U-Net's kernels: which weights it takes, that its updates are orthogonalised, and
that a checkpoint trained with it resumes with it."""

import keras
import numpy as np
import pytest

from diffusion_keras.config import ModelConfig, OptimizationConfig
from diffusion_keras.data import ImageBatches
from diffusion_keras.optimizers import KernelMuon
from diffusion_keras.training import build_model
from tests.conftest import TINY


@pytest.fixture(scope="module")
def muon_model(tiny_images):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(**TINY), OptimizationConfig(optimizer="muon"))
    model.normalizer.adapt(tiny_images)
    model.fit(ImageBatches(tiny_images, 16, seed=0), epochs=1, verbose=0)
    return model


def test_muon_takes_the_kernels_and_leaves_the_rest_to_adamw(muon_model):
    optimizer = muon_model.optimizer
    assert isinstance(optimizer, KernelMuon)
    with_adamw = {tuple(weight.shape) for weight in muon_model.network.trainable_weights
                  if optimizer.adam_velocities[optimizer._get_variable_index(weight)] is not None}
    with_muon = {tuple(weight.shape) for weight in muon_model.network.trainable_weights} - with_adamw
    assert (3, 3, 8, 8) in with_muon and (3, 3, 16, 16) in with_muon  # convolutions
    assert (8, 32) in with_muon  # the noise embedding's dense layer
    assert (1, 1, 3, 8) in with_adamw and (1, 1, 8, 3) in with_adamw  # from and to the pixels
    assert all(len(shape) == 1 for shape in with_adamw - {(1, 1, 3, 8), (1, 1, 8, 3)})


def test_a_muon_update_is_orthogonalised_whatever_the_gradient():
    """A gradient dominated by one direction (singular values 100 and 1s) still moves the kernel
    about equally along all its directions: what lets Muon make progress on the rare ones."""
    rng = np.random.default_rng(0)
    left, _ = np.linalg.qr(rng.standard_normal((3 * 3 * 8, 16)))
    right, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    gradient = (left * np.r_[100.0, np.ones(15)]) @ right.T
    kernel = keras.Variable(np.zeros((3, 3, 8, 16), "float32"))
    optimizer = KernelMuon(learning_rate=0.1, weight_decay=0.0)
    optimizer.apply_gradients([(gradient.reshape(3, 3, 8, 16).astype("float32"), kernel)])
    singular_values = np.linalg.svd(-np.asarray(kernel).reshape(-1, 16), compute_uv=False)
    assert singular_values.max() / singular_values.min() < 2  # the gradient's: 100
    assert 0.05 < np.median(singular_values) < 0.5  # lr 0.1 x sqrt(72) x 0.2, Moonlight's scale


def test_a_checkpoint_trained_with_muon_loads_with_its_state(muon_model, tmp_path):
    path = str(tmp_path / "muon.keras")
    muon_model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, KernelMuon)
    assert int(loaded.optimizer.iterations) == int(muon_model.optimizer.iterations) > 0
    for loaded_variable, variable in zip(loaded.optimizer.variables, muon_model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(loaded_variable), np.asarray(variable))


class AppliedRates(keras.callbacks.Callback):
    """The learning rate the optimizer applies at each update (read before the update's batch)."""

    def __init__(self, accumulate):
        super().__init__()
        self.accumulate, self.rates = accumulate, []

    def on_train_batch_begin(self, batch, logs=None):
        if (int(self.model.optimizer._iterations) + 1) % self.accumulate == 0:
            self.rates.append(float(self.model.optimizer.learning_rate))


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_learning_rate_follows_the_intended_curve_per_update(tiny_images, accumulate):
    """Warm-up then cosine decay, in optimizer updates, whatever the gradient accumulation: Keras
    reads a schedule at its batch counter, which would run N times too fast."""
    from diffusion_keras.training import learning_rate_schedule

    optimization = OptimizationConfig(epochs=2, batch_size=8, learning_rate=1e-2, warmup_steps=2,
                                      learning_rate_schedule="cosine",
                                      accumulate_steps=accumulate)
    batches = ImageBatches(tiny_images, 8, seed=0)  # 6 batches an epoch
    updates = 2 * len(batches) // accumulate
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(**TINY), optimization, len(batches))
    model.normalizer.adapt(tiny_images)
    model.run_eagerly = True  # the same schedule reads, without compiling the step for 12 batches
    applied = AppliedRates(accumulate)
    model.fit(batches, epochs=2, verbose=0, callbacks=[applied])
    intended = keras.optimizers.schedules.CosineDecay(0.0, updates - 2, warmup_target=1e-2,
                                                      warmup_steps=2)
    np.testing.assert_allclose(applied.rates, [float(intended(k)) for k in range(updates)],
                               rtol=1e-5, atol=1e-9)
    assert applied.rates[-1] > 0, "the last update still moves the weights"
    assert isinstance(learning_rate_schedule(optimization, updates),
                      keras.optimizers.schedules.LearningRateSchedule)
