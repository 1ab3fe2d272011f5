import numpy as np
import pytest
from keras import ops

from diffusion_keras import targets
from diffusion_keras.errors import UsageError
from diffusion_keras.schedules import get_schedule

RNG = np.random.default_rng(0)
IMAGES = RNG.standard_normal((6, 4, 4, 3)).astype("float32")
NOISES = RNG.standard_normal((6, 4, 4, 3)).astype("float32")
TIMES = np.linspace(0.05, 1.0, 6, dtype="float32").reshape(6, 1, 1, 1)


@pytest.mark.parametrize("target", targets.TARGETS)
@pytest.mark.parametrize("schedule", ["offset_cosine", "linear"])
def test_exact_outputs_give_back_the_noise_and_image(target, schedule):
    noise_rates, signal_rates = get_schedule(schedule)(TIMES)
    noisy_images = signal_rates * IMAGES + noise_rates * NOISES
    outputs = targets.target_values(NOISES, IMAGES, noise_rates, signal_rates, target)
    pred_noises, pred_images = targets.to_noises_and_images(
        outputs, noisy_images, noise_rates, signal_rates, target)
    np.testing.assert_allclose(ops.convert_to_numpy(pred_noises), NOISES, atol=2e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(pred_images), IMAGES, atol=2e-3)


def test_velocity_is_the_rotation_of_noise_and_image():
    noise_rates, signal_rates = get_schedule("cosine")(TIMES)
    velocities = ops.convert_to_numpy(
        targets.target_values(NOISES, IMAGES, noise_rates, signal_rates, "v"))
    noise_rates, signal_rates = map(ops.convert_to_numpy, (noise_rates, signal_rates))
    np.testing.assert_allclose(velocities, signal_rates * NOISES - noise_rates * IMAGES, rtol=1e-6)
    # v has unit variance like the noise when images and noise are independent and unit variance
    assert abs(velocities.std() - 1.0) < 0.2


def test_unknown_target_names_the_choices():
    with pytest.raises(UsageError, match="epsilon"):
        targets.check_target("score")
