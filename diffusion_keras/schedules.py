"""Diffusion schedules: diffusion times in [0, 1] -> (noise_rates, signal_rates).

Every schedule keeps noise_rates**2 + signal_rates**2 == 1, with time 0 the (near) clean image and
time 1 (near) pure noise. Written with `keras.ops`, so all backends run them inside compiled steps.
"""

import math

import numpy as np
from keras import ops

from diffusion_keras.errors import UsageError

LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02
LINEAR_TIMESTEPS = 1000


def linear_alpha_bars(timesteps=LINEAR_TIMESTEPS, beta_start=LINEAR_BETA_START,
                      beta_end=LINEAR_BETA_END):
    """Cumulative signal variance alpha_bar_k for k = 0..T (DDPM, Ho et al. 2020); alpha_bar_0 = 1."""
    betas = ops.linspace(beta_start, beta_end, timesteps)
    return ops.concatenate([ops.ones((1,)), ops.cumprod(1.0 - betas)])


def linear_diffusion_schedule(diffusion_times, timesteps=LINEAR_TIMESTEPS,
                              beta_start=LINEAR_BETA_START, beta_end=LINEAR_BETA_END):
    """DDPM's linear betas, made continuous: log alpha_bar interpolated between the T+1 steps.

    Time k/T gives exactly the discrete DDPM step k, so a discrete-time model and this schedule agree.
    """
    log_alpha_bars = ops.log(linear_alpha_bars(timesteps, beta_start, beta_end))
    positions = ops.clip(ops.cast(diffusion_times, "float32"), 0.0, 1.0) * timesteps
    lower = ops.minimum(ops.floor(positions), timesteps - 1)
    fraction = positions - lower
    lower = ops.cast(lower, "int32")
    log_alpha_bar = (1.0 - fraction) * ops.take(log_alpha_bars, lower) + fraction * ops.take(
        log_alpha_bars, lower + 1
    )
    signal_rates = ops.exp(0.5 * log_alpha_bar)
    noise_rates = ops.sqrt(ops.maximum(1.0 - ops.square(signal_rates), 0.0))
    return noise_rates, signal_rates


def cosine_diffusion_schedule(diffusion_times, offset=0.008, min_signal_rate=0.01):
    """Cosine schedule (Nichol & Dhariwal 2021), alpha_bar = cos^2((t + s) / (1 + s) * pi / 2), rescaled.

    The signal rate is floored at `min_signal_rate` so that turning a noise prediction into an image
    (dividing by the signal rate) stays finite at t = 1.
    """
    times = ops.cast(diffusion_times, "float32")
    start = math.cos(offset / (1.0 + offset) * math.pi / 2.0)
    signal_rates = ops.cos((times + offset) / (1.0 + offset) * math.pi / 2.0) / start
    signal_rates = ops.clip(signal_rates, min_signal_rate, 1.0)
    noise_rates = ops.sqrt(1.0 - ops.square(signal_rates))
    return noise_rates, signal_rates


def offset_cosine_diffusion_schedule(diffusion_times, min_signal_rate=0.02, max_signal_rate=0.95):
    """The keras-io DDIM schedule: the angle moves linearly between arccos(max) and arccos(min)."""
    start_angle = math.acos(max_signal_rate)
    end_angle = math.acos(min_signal_rate)
    angles = start_angle + ops.cast(diffusion_times, "float32") * (end_angle - start_angle)
    return ops.sin(angles), ops.cos(angles)


def flow_diffusion_schedule(diffusion_times, max_time=0.999):
    """Rectified flow's straight path x = (1 - t) x_0 + t epsilon (Liu et al. 2023, Lipman et al. 2023),
    scaled to unit variance: signal (1 - t) / c and noise t / c with c = sqrt((1 - t)^2 + t^2).

    The network sees the same path at unit variance; `targets`' "flow" velocity epsilon - x_0 is
    defined on it. Times stop at `max_time`, where a little signal keeps sigma = noise / signal finite.
    """
    times = ops.clip(ops.cast(diffusion_times, "float32"), 0.0, max_time)
    scales = ops.sqrt(ops.square(1.0 - times) + ops.square(times))
    return times / scales, (1.0 - times) / scales


def log_sigma_table(schedule, size=1025):
    """(log_sigmas, times): log(noise_rate / signal_rate) at `size` even times in [0, 1], made
    non-decreasing, as float32 NumPy, computed eagerly once, so that times can be found for noise
    levels (`times_of_log_sigmas`). A noise rate of 0 reads as sigma 1e-8."""
    times = np.linspace(0.0, 1.0, size, dtype="float32")
    noise_rates, signal_rates = map(ops.convert_to_numpy, schedule(times))
    log_sigmas = np.log(np.maximum(noise_rates, 1e-8) / np.maximum(signal_rates, 1e-8))
    return np.maximum.accumulate(log_sigmas).astype("float32"), times


def times_of_log_sigmas(table, log_sigmas):
    """The times where log(noise_rate / signal_rate) takes these values (clipped to the schedule's
    range), by linear interpolation in a `log_sigma_table`; `keras.ops`, so usable in a compiled step."""
    table, times = (ops.convert_to_tensor(values) for values in table)
    size = int(ops.shape(table)[0])
    log_sigmas = ops.clip(log_sigmas, table[0], table[-1])
    upper = ops.clip(ops.searchsorted(table, ops.reshape(log_sigmas, (-1,))), 1, size - 1)
    upper = ops.reshape(upper, ops.shape(log_sigmas))
    low, high = ops.take(table, upper - 1), ops.take(table, upper)
    fractions = ops.where(high > low, (log_sigmas - low) / ops.maximum(high - low, 1e-12), 0.0)
    low_times = ops.take(times, upper - 1)
    return low_times + fractions * (ops.take(times, upper) - low_times)


SCHEDULES = {
    "linear": linear_diffusion_schedule,
    "cosine": cosine_diffusion_schedule,
    "offset_cosine": offset_cosine_diffusion_schedule,
    "flow": flow_diffusion_schedule,
}


def get_schedule(name):
    """The schedule function registered under `name`; a clear error for unknown names."""
    if name not in SCHEDULES:
        raise UsageError(f"unknown diffusion schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]
