"""Every sampler against an oracle denoiser for Gaussian data, where the exact answer is known."""

import numpy as np
import pytest
from keras import ops

from diffusion_keras import backend, gaussian_oracle, samplers, seeding
from diffusion_keras.errors import UsageError
from diffusion_keras.gaussian_oracle import MEAN, STD
from diffusion_keras.schedules import get_schedule, log_sigma_table

SHAPE = (8, 20, 25, 1)  # 4000 pixels, 8 images (one seed each)
DETERMINISTIC = [name for name, sampler in samplers.SAMPLERS.items()
                 if not sampler.is_stochastic({})]


def rates_of(schedule, time):
    return gaussian_oracle.rates(get_schedule(schedule), time)


def initial_noise(seed=0):
    return seeding.initial_noise(seed, 0, SHAPE[0], SHAPE[1:])


def times_for(steps, schedule="cosine", spacing="uniform"):
    return samplers.sampling_times(steps, spacing, log_sigma_table(get_schedule(schedule)))


def sample(name, steps, schedule="cosine", spacing="uniform", seed=0, noise_seed=0, callback=None,
           **options):
    """Images from the oracle; `seed` seeds the fresh noise, `noise_seed` the initial noise."""
    times = times_for(steps, schedule, spacing)
    sampler = samplers.get_sampler(name, **options)
    step_seeds = seeding.step_seeds(seed, 0, SHAPE[0], len(times) - 1)

    def run(noise, seeds):
        return sampler(gaussian_oracle.denoise, noise, times, get_schedule(schedule), step_seeds=seeds,
                       callback=callback)

    function = run if callback else backend.compile_function(run, [])
    return ops.convert_to_numpy(function(initial_noise(noise_seed), step_seeds)).ravel()


def error(name, calls, schedule="cosine", spacing="uniform"):
    steps = samplers.SAMPLERS[name].steps_for(calls)
    images = sample(name, steps, schedule, spacing)
    exact = gaussian_oracle.ode_solution(get_schedule(schedule), initial_noise()).ravel()
    return np.abs(images - exact).mean()


@pytest.mark.parametrize("name, steps, options", [
    ("ddim", 50, {}),
    ("ddim", 1000, {"eta": 1.0}),  # ancestral: exact only as steps grow
    ("ddpm", 1000, {}),
    ("ddpm", 1000, {"variance": "beta"}),
    ("dpmpp2m", 50, {}),
    ("dpmpp3m", 50, {}),
    ("heun", 50, {}),
])
@pytest.mark.parametrize("schedule", ["cosine", "linear", "flow"])
def test_every_sampler_lands_on_the_data_distribution(name, steps, options, schedule):
    images = sample(name, steps, schedule, **options)
    assert np.isfinite(images).all()
    assert abs(images.mean() - MEAN) < 0.03
    assert abs(images.std() - STD) < 0.03


@pytest.mark.parametrize("schedule", ["offset_cosine", "flow"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_converge_to_the_exact_ode_solution(name, schedule):
    assert error(name, 99, schedule) < 0.01


def test_the_last_call_denoises_the_final_state():
    """Offset-cosine's t = 0 still holds noise (rate 0.31): the grid ends there and the sample is the
    network's estimate from the final state, for every sampler."""
    times = times_for(5, "offset_cosine")
    assert times[-1] == 0.0 and len(times) == 5
    for name in DETERMINISTIC:
        calls = []

        def record(*call, calls=calls):
            calls.append([np.asarray(value) for value in call])

        images = sample(name, 5, "offset_cosine", callback=record)
        step, time, noisy_images, pred_images = calls[-1]
        assert (step, time) == (4, 0.0) and len(calls) == 5
        expected = gaussian_oracle.denoise(noisy_images, *rates_of("offset_cosine", 0.0))[1]
        np.testing.assert_allclose(images, ops.convert_to_numpy(expected).ravel(), atol=1e-6)
        np.testing.assert_allclose(images, pred_images.ravel(), atol=1e-6)


def test_eager_callback_run_matches_the_compiled_loop():
    for name, options in (("dpmpp2m", {}), ("ddpm", {})):
        np.testing.assert_allclose(sample(name, 6, callback=lambda *_: None, **options),
                                   sample(name, 6, **options), atol=1e-5)


def test_higher_order_solvers_beat_ddim_at_the_same_network_calls():
    # measured (offset-cosine, uniform grid): 10 calls DDIM 0.0126, DPM-Solver++(2M) 0.0020,
    # (3M) 0.00034; 49-50 calls Heun 0.00063, DDIM 0.0024
    assert error("dpmpp2m", 10, "offset_cosine") < 0.25 * error("ddim", 10, "offset_cosine")
    assert error("dpmpp3m", 10, "offset_cosine") < 0.5 * error("dpmpp2m", 10, "offset_cosine")
    assert error("heun", 49, "offset_cosine") < 0.5 * error("ddim", 50, "offset_cosine")


def test_ddim_with_eta_one_is_ancestral_sampling():
    """Same seeds, same fresh noise: DDIM eta = 1 and DDPM with the posterior variance agree."""
    np.testing.assert_allclose(sample("ddim", 20, eta=1.0, seed=3), sample("ddpm", 20, seed=3),
                               atol=1e-4)


@pytest.mark.slow
def test_ddpm_matches_its_exact_output_mean_and_variance():
    """Every DDPM step is linear in the state plus fresh Gaussian noise when the denoiser is the
    oracle, so the output's mean and variance follow exactly; 2 steps, 40 seeds x 4000 pixels,
    checked within 4 standard errors."""
    schedule, times = "cosine", times_for(2)
    mean, variance = 0.0, 1.0  # the initial noise
    for time, next_time in zip(times[:-1], times[1:]):
        (noise_rate, signal_rate), (next_noise_rate, next_signal_rate) = (
            rates_of(schedule, time), rates_of(schedule, next_time))
        gain = signal_rate * STD**2 / (signal_rate**2 * STD**2 + noise_rate**2)  # d x0_hat / d x
        alpha = (signal_rate / next_signal_rate) ** 2
        beta = 1.0 - alpha
        slope = (next_signal_rate * beta / noise_rate**2 * gain
                 + np.sqrt(alpha) * (next_noise_rate / noise_rate) ** 2)
        offset = next_signal_rate * beta / noise_rate**2 * MEAN * (1.0 - gain * signal_rate)
        mean, variance = slope * mean + offset, slope**2 * variance + beta * (
            next_noise_rate / noise_rate) ** 2
    noise_rate, signal_rate = rates_of(schedule, times[-1])
    gain = signal_rate * STD**2 / (signal_rate**2 * STD**2 + noise_rate**2)
    mean, variance = MEAN + gain * (mean - signal_rate * MEAN), gain**2 * variance
    images = np.concatenate([sample("ddpm", 2, schedule, seed=seed, noise_seed=seed)
                             for seed in range(40)])
    assert abs(images.mean() - mean) < 4 * np.sqrt(variance / len(images))
    assert abs(images.var() / variance - 1.0) < 4 * np.sqrt(2 / len(images))


def test_stochastic_samplers_are_seeded():
    first, second, other = (sample("ddpm", 10, seed=seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(sample("ddim", 10, seed=1), sample("ddim", 10, seed=2))


def test_sampling_times_spacings():
    cosine, offset_cosine = (log_sigma_table(get_schedule(name)) for name in ("cosine", "offset_cosine"))
    # sigma(0) = 0: a call there would be wasted, the grid stops short; offset-cosine ends at t = 0
    np.testing.assert_allclose(samplers.sampling_times(4, "uniform", cosine), [1, .75, .5, .25])
    np.testing.assert_allclose(samplers.sampling_times(4, "uniform", offset_cosine),
                               [1, 2 / 3, 1 / 3, 0], atol=1e-7)
    np.testing.assert_allclose(samplers.sampling_times(4, "quadratic", cosine),
                               [1.0, 0.5625, 0.25, 0.0625])
    for table in (cosine, offset_cosine):
        for spacing in ("karras", "log_snr"):
            times = samplers.sampling_times(6, spacing, table)
            assert times[0] == 1.0 and np.all(np.diff(times) < 0)
            log_sigmas = np.interp(times, table[1], table[0])
            low = table[0][0] if table is offset_cosine else np.log(samplers.SIGMA_MIN)
            assert abs(log_sigmas[-1] - low) < 0.01
            grid = np.exp(log_sigmas[1:] / samplers.KARRAS_RHO) if spacing == "karras" \
                else log_sigmas[1:]
            np.testing.assert_allclose(np.diff(grid), np.diff(grid).mean(), rtol=0.02)
    linear = log_sigma_table(get_schedule("linear"))
    discrete = samplers.sampling_times(1000, "quadratic", linear, timesteps=1000)
    assert discrete[0] == 1.0 and discrete[-1] == 0.001 and np.all(np.diff(discrete) < 0)
    np.testing.assert_allclose(discrete * 1000, np.round(discrete * 1000), atol=1e-3)
    assert len(samplers.sampling_times(10, "uniform", linear, timesteps=1000)) == 10
    np.testing.assert_allclose(samplers.sampling_times(1000, "uniform", linear, timesteps=1000)
                               * 1000, np.arange(1000, 0, -1), atol=1e-3)


def test_every_sampler_is_named_where_the_command_lines_list_them():
    from diffusion_keras.config import SAMPLER_NAMES, SPACINGS

    assert tuple(samplers.SAMPLERS) == SAMPLER_NAMES
    assert {sampler.default_spacing for sampler in samplers.SAMPLERS.values()} <= set(SPACINGS)
    assert [name for name, sampler in samplers.SAMPLERS.items()
            if sampler.is_stochastic({"eta": 0.5, "variance": "beta"})] == ["ddim", "ddpm"]


def test_network_evaluations_count_the_calls_made():
    calls = []

    def counting_denoise(*args):
        calls.append(1)
        return gaussian_oracle.denoise(*args)

    for name in samplers.SAMPLERS:
        calls.clear()
        times = times_for(4)
        samplers.get_sampler(name)(counting_denoise, initial_noise(), times, get_schedule("cosine"),
                                   step_seeds=seeding.step_seeds(0, 0, SHAPE[0], 3),
                                   callback=lambda *_: None)
        assert len(calls) == samplers.SAMPLERS[name].network_evaluations(4), name
        assert samplers.SAMPLERS[name].steps_for(len(calls)) == 4, name


@pytest.mark.parametrize("call, message", [
    (lambda: times_for(0), "positive"),
    (lambda: times_for(5, spacing="cubic"), "spacing"),
    (lambda: samplers.sampling_times(20, "uniform", log_sigma_table(get_schedule("linear")),
                                     timesteps=10), "exceed"),
    (lambda: samplers.get_sampler("euler"), "dpmpp2m"),
    (lambda: samplers.get_sampler("ddim", eta=2.0), "eta"),
    (lambda: samplers.get_sampler("ddpm", variance="fixed"), "variance"),
    (lambda: samplers.get_sampler("heun", eta=0.5), "no option"),
    (lambda: samplers.get_sampler("ddim", callback=print), "no option"),
])
def test_bad_options_are_rejected_with_the_value(call, message):
    with pytest.raises(UsageError, match=message):
        call()
