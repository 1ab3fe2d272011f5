"""Every sampler against an oracle denoiser for Gaussian data, where the exact answer is known."""

import numpy as np
import pytest
from keras import ops

from diffusion_keras import backend, samplers
from diffusion_keras.errors import UsageError
from diffusion_keras.schedules import get_schedule

MEAN, STD = 0.5, 0.4  # data distribution N(MEAN, STD^2), one-pixel "images"
COUNT = 4000


def oracle_denoise(noisy_images, noise_rates, signal_rates):
    """E[x_0 | x_t] for Gaussian data, and the noise it implies: the exact denoiser."""
    variances = signal_rates**2 * STD**2 + noise_rates**2
    pred_images = MEAN + signal_rates * STD**2 / variances * (noisy_images - signal_rates * MEAN)
    pred_noises = (noisy_images - signal_rates * pred_images) / ops.maximum(noise_rates, 1e-4)
    return pred_noises, pred_images


def initial_noise(seed=0, count=COUNT):
    return np.random.default_rng(seed).standard_normal((count, 1, 1, 1)).astype("float32")


def sample(name, steps, schedule="cosine", spacing="uniform", seed=0, **options):
    times = samplers.sampling_times(steps, spacing)
    sampler = samplers.get_sampler(name, **options)

    def run(noise):
        return sampler(oracle_denoise, noise, times, get_schedule(schedule), seed=seed)

    return ops.convert_to_numpy(backend.compile_function(run, [])(initial_noise())).ravel()


@pytest.mark.parametrize("name, steps, options", [
    ("ddim", 50, {}),
    ("ddim", 1000, {"eta": 1.0}),  # ancestral: exact only as steps grow
    ("ddpm", 1000, {}),
    ("ddpm", 1000, {"variance": "beta"}),
    ("dpmpp2m", 50, {}),
    ("heun", 50, {}),
])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_every_sampler_lands_on_the_data_distribution(name, steps, options, schedule):
    images = sample(name, steps, schedule, **options)
    assert np.isfinite(images).all()
    assert abs(images.mean() - MEAN) < 0.03
    assert abs(images.std() - STD) < 0.03


def test_second_order_solvers_beat_ddim_at_the_same_network_calls():
    reference = sample("ddim", 1000)  # the probability-flow ODE solution for the same noise

    def error(name, calls):
        steps = calls // samplers.network_evaluations(name, 1)
        return np.abs(sample(name, steps) - reference).mean()

    # measured: 16 calls DDIM 0.034, DPM-Solver++(2M) 0.0064; 32 calls DDIM 0.017, Heun 0.010
    # (Heun's last step, to sigma = 0, is Euler and dominates its error at few steps)
    assert error("dpmpp2m", 16) < 0.3 * error("ddim", 16)
    assert error("dpmpp2m", 32) < 0.1 * error("ddim", 32)
    assert error("heun", 32) < 0.75 * error("ddim", 32)


def test_ddim_with_eta_one_is_ancestral_sampling():
    """Same seed, same noise: DDIM eta = 1 and DDPM with the posterior variance agree sample by
    sample (the last DDPM step adds no noise; DDIM's last step has zero variance when t_next = 0)."""
    np.testing.assert_allclose(sample("ddim", 20, eta=1.0, seed=3), sample("ddpm", 20, seed=3),
                               atol=1e-4)


def test_stochastic_samplers_are_seeded():
    first, second, other = (sample("ddpm", 10, seed=seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(sample("ddim", 10, seed=1), sample("ddim", 10, seed=2))


def test_ddim_step_moves_to_the_requested_time():
    schedule = get_schedule("cosine")
    noisy = ops.convert_to_tensor(initial_noise(count=8))
    times = ops.convert_to_tensor(np.full((8, 1, 1, 1), 0.6, "float32"))
    next_noisy, pred_images = samplers.ddim_step(oracle_denoise, schedule, noisy, times, times - 0.2)
    next_noise_rates, next_signal_rates = schedule(times - 0.2)
    pred_noises, expected_images = oracle_denoise(noisy, *schedule(times))
    np.testing.assert_allclose(ops.convert_to_numpy(pred_images), ops.convert_to_numpy(expected_images))
    np.testing.assert_allclose(
        ops.convert_to_numpy(next_noisy),
        ops.convert_to_numpy(next_signal_rates * expected_images + next_noise_rates * pred_noises),
        rtol=1e-5)


def test_sampling_times_spacings():
    uniform = samplers.sampling_times(4)
    np.testing.assert_allclose(uniform, [1.0, 0.75, 0.5, 0.25, 0.0])
    quadratic = samplers.sampling_times(4, "quadratic")
    np.testing.assert_allclose(quadratic, [1.0, 0.5625, 0.25, 0.0625, 0.0])
    discrete = samplers.sampling_times(1000, "quadratic", timesteps=1000)
    assert discrete[0] == 1.0 and discrete[-1] == 0.0 and np.all(np.diff(discrete) < 0)
    np.testing.assert_allclose(discrete * 1000, np.round(discrete * 1000), atol=1e-3)
    assert len(samplers.sampling_times(10, timesteps=1000)) == 11


@pytest.mark.parametrize("call, message", [
    (lambda: samplers.sampling_times(0), "positive"),
    (lambda: samplers.sampling_times(5, "cubic"), "spacing"),
    (lambda: samplers.sampling_times(20, timesteps=10), "exceed"),
    (lambda: samplers.get_sampler("euler"), "dpmpp2m"),
    (lambda: samplers.get_sampler("ddim", eta=2.0), "eta"),
    (lambda: samplers.get_sampler("ddpm", variance="fixed"), "variance"),
    (lambda: samplers.get_sampler("heun", eta=0.5), "no option"),
])
def test_bad_options_are_rejected_with_the_value(call, message):
    with pytest.raises(UsageError, match=message):
        call()
