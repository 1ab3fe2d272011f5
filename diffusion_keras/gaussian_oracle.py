"""A Gaussian oracle: data N(MEAN, STD^2) in every pixel, where the exact denoiser and the exact
probability-flow ODE solution are known in closed form, so a sampler's error can be measured
(tests/test_samplers.py, benchmarks/sampler_accuracy.py)."""

import numpy as np
from keras import ops

MEAN, STD = 0.5, 0.4


def denoise(noisy_images, noise_rates, signal_rates):
    """E[x_0 | x_t], and the noise it implies: the exact denoiser (the `samplers` contract)."""
    variances = signal_rates**2 * STD**2 + noise_rates**2
    pred_images = MEAN + signal_rates * STD**2 / variances * (noisy_images - signal_rates * MEAN)
    pred_noises = (noisy_images - signal_rates * pred_images) / ops.maximum(noise_rates, 1e-4)
    return pred_noises, pred_images


def rates(schedule, time):
    """(noise_rate, signal_rate) of `schedule` at one time, as floats."""
    noise_rate, signal_rate = map(ops.convert_to_numpy, schedule(np.float32(time)))
    return float(noise_rate), float(signal_rate)


def ode_solution(schedule, initial_noise, time=0.0):
    """The probability-flow ODE solved exactly from `initial_noise` at t = 1 to `time`, and denoised
    there: the answer a sampler approximates. For Gaussian data the ODE keeps each pixel's standard
    score (x_t - mean_t) / std_t."""
    noise_rate, signal_rate = rates(schedule, 1.0)
    scores = (initial_noise - signal_rate * MEAN) / np.sqrt(signal_rate**2 * STD**2 + noise_rate**2)
    noise_rate, signal_rate = rates(schedule, time)
    state = signal_rate * MEAN + np.sqrt(signal_rate**2 * STD**2 + noise_rate**2) * scores
    return ops.convert_to_numpy(denoise(state, noise_rate, signal_rate)[1])
