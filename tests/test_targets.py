import numpy as np
import pytest
from keras import ops

from diffusion_keras import targets
from diffusion_keras.schedules import get_schedule

RNG = np.random.default_rng(0)
IMAGES = RNG.standard_normal((6, 4, 4, 3)).astype("float32")
NOISES = RNG.standard_normal((6, 4, 4, 3)).astype("float32")
TIMES = np.linspace(0.05, 1.0, 6, dtype="float32").reshape(6, 1, 1, 1)


@pytest.mark.parametrize("target", targets.TARGETS)
@pytest.mark.parametrize("schedule", ["offset_cosine", "linear", "flow"])
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


@pytest.mark.parametrize("target", targets.TARGETS)
def test_error_scales_relate_a_target_error_to_the_clean_image_error(target):
    noise_rates, signal_rates = get_schedule("offset_cosine")(TIMES)
    noisy_images = signal_rates * IMAGES + noise_rates * NOISES
    outputs = targets.target_values(NOISES, IMAGES, noise_rates, signal_rates, target)
    _, images = targets.to_noises_and_images(outputs, noisy_images, noise_rates, signal_rates, target)
    _, moved = targets.to_noises_and_images(outputs + 0.01, noisy_images, noise_rates, signal_rates,
                                            target)
    image_errors = np.abs(ops.convert_to_numpy(moved - images)).mean(axis=(1, 2, 3))
    scales = ops.convert_to_numpy(targets.x0_error_scales(noise_rates, signal_rates, target)).ravel()
    np.testing.assert_allclose(0.01 / image_errors, scales, rtol=1e-3)


def test_flow_velocity_is_the_straight_path_derivative():
    """On the flow schedule, x_t / (signal + noise) = (1 - t) x_0 + t epsilon: its t-derivative is
    the flow target epsilon - x_0."""
    times = TIMES * 0.9
    rates = [get_schedule("flow")(times + delta) for delta in (0.0, 1e-3)]
    paths = [(s * IMAGES + n * NOISES) / (s + n) for n, s in map(
        lambda r: map(ops.convert_to_numpy, r), rates)]
    np.testing.assert_allclose((paths[1] - paths[0]) / 1e-3, NOISES - IMAGES, rtol=1e-2, atol=1e-2)
