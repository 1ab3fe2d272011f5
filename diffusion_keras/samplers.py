"""Samplers: turn initial noise into images by calling one denoiser contract.

Notation (papers -> code), with noise_rates**2 + signal_rates**2 == 1:
    sqrt(alpha_bar_t) = signal_rates          sqrt(1 - alpha_bar_t) = noise_rates
    x_t = noisy_images                        epsilon_theta = pred_noises, x_0 estimate = pred_images
    sigma_t (EDM, DPM-Solver) = noise_rates / signal_rates       lambda_t = -log(sigma_t)
    eta (DDIM) scales the fresh noise: 0 deterministic, 1 the DDPM posterior variance.

`denoise(noisy_images, noise_rates, signal_rates) -> (pred_noises, pred_images)` is all a sampler
sees (`targets` turns any network parametrisation into it). Every sampler has the signature
`sampler(denoise, initial_noise, diffusion_times, schedule, *, seed=0, **options)`, where
`diffusion_times` is a decreasing 1-D tensor from the first to the last time (`sampling_times` makes
one), and is a step function inside one `keras.ops.fori_loop` with any history in the loop state, so
a backend compiles the whole reverse process as one graph. Each returns the last clean-image estimate
(in the model's normalised space). Arithmetic is float32; fresh noise is seeded from (seed, step).
"""

import functools
import inspect

import keras
import numpy as np
from keras import ops

from diffusion_keras.errors import UsageError

SPACINGS = ("uniform", "quadratic")
VARIANCES = ("posterior", "beta")


def sampling_times(steps, spacing="uniform", timesteps=None):
    """`steps + 1` decreasing diffusion times from 1 to 0, as float32 NumPy.

    "uniform" spaces them evenly, "quadratic" packs them near t = 0 (DDIM, Song et al. 2021, D.2).
    With `timesteps` T (discrete DDPM) the times are snapped to the grid k / T, without repeats.
    """
    if steps < 1:
        raise UsageError(f"diffusion steps must be a positive integer, got {steps}")
    if spacing not in SPACINGS:
        raise UsageError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    times = np.linspace(1.0, 0.0, steps + 1)
    if spacing == "quadratic":
        times = times**2
    if timesteps:
        if steps > timesteps:
            raise UsageError(f"{steps} steps exceed the model's {timesteps} discrete timesteps")
        times = np.unique(np.round(times * timesteps))[::-1] / timesteps
    return times.astype("float32")


class StepSeed(keras.random.SeedGenerator):
    """The seed (seed, step) for one draw inside a compiled loop.

    `keras.random` takes ints or SeedGenerators, not tensors, and a real SeedGenerator's state
    variable cannot be updated inside a traced loop; this one has no state, only the seed pair.
    """

    def __init__(self, seed, step):  # no super().__init__: that would create the state variable
        self.seeds = ops.cast(ops.stack([ops.cast(seed, "int32"), ops.cast(step, "int32")]), "uint32")

    def next(self, ordered=True):
        return self.seeds


def run_steps(step, initial_noise, diffusion_times, *history):
    """fori_loop over the time pairs: `step(index, times, next_times, noisy_images, pred_images,
    *history) -> (next_noisy_images, pred_images, *history)`; returns the last pred_images."""
    diffusion_times = ops.cast(ops.convert_to_tensor(diffusion_times), "float32")
    ones = ops.ones_like(initial_noise[:, :1, :1, :1])

    def body(index, state):
        times = ones * ops.take(diffusion_times, index)
        next_times = ones * ops.take(diffusion_times, index + 1)
        return step(index, times, next_times, *state)

    steps = int(ops.shape(diffusion_times)[0]) - 1
    initial_noise = ops.cast(initial_noise, "float32")
    state = (initial_noise, initial_noise, *history)
    return ops.fori_loop(0, steps, body, state)[1]


def ddim_step(denoise, schedule, noisy_images, diffusion_times, next_diffusion_times, eta=0.0,
              noises=None):
    """One DDIM step (Song et al. 2021, eq. 12) from time t to the earlier t_next; with eta > 0,
    `noises` (standard normal, like the images) supply the fresh noise.

    Returns (next_noisy_images, pred_images); usable eagerly to record a reverse trajectory.
    """
    noise_rates, signal_rates = schedule(diffusion_times)
    pred_noises, pred_images = denoise(noisy_images, noise_rates, signal_rates)
    next_noise_rates, next_signal_rates = schedule(next_diffusion_times)
    if eta == 0.0:  # deterministic: no variance to compute on every step
        return next_signal_rates * pred_images + next_noise_rates * pred_noises, pred_images
    # sigma^2 = eta^2 * (1 - a_next) / (1 - a) * (1 - a / a_next), the posterior variance times eta^2
    sigmas = eta * ops.sqrt(ops.maximum(
        ops.square(next_noise_rates / noise_rates)
        * (1.0 - ops.square(signal_rates / next_signal_rates)), 0.0))
    direction_rates = ops.sqrt(ops.maximum(ops.square(next_noise_rates) - ops.square(sigmas), 0.0))
    return (next_signal_rates * pred_images + direction_rates * pred_noises + sigmas * noises,
            pred_images)


def ddim(denoise, initial_noise, diffusion_times, schedule, *, seed=0, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): eta = 0 deterministic, eta = 1 the DDPM posterior."""
    def step(index, times, next_times, noisy_images, _):
        noises = None
        if eta > 0.0:
            noises = keras.random.normal(ops.shape(noisy_images), seed=StepSeed(seed, index))
        return ddim_step(denoise, schedule, noisy_images, times, next_times, eta, noises)

    return run_steps(step, initial_noise, diffusion_times)


def ddpm(denoise, initial_noise, diffusion_times, schedule, *, seed=0, variance="posterior"):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) with sigma^2 = posterior variance or beta_t.

    Between non-adjacent times beta_t is 1 - alpha_bar_t / alpha_bar_next (the skipped steps merged).
    The last step adds no noise, as in the paper.
    """
    last = int(ops.shape(ops.convert_to_tensor(diffusion_times))[0]) - 2

    def step(index, times, next_times, noisy_images, _):
        noise_rates, signal_rates = schedule(times)
        _, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        next_noise_rates, next_signal_rates = schedule(next_times)
        alphas = ops.square(signal_rates / next_signal_rates)
        betas = 1.0 - alphas
        # posterior mean (Ho et al. eq. 7) of q(x_next | x_t, x_0) with x_0 = pred_images
        next_noisy_images = (
            next_signal_rates * betas / ops.square(noise_rates) * pred_images
            + ops.sqrt(alphas) * ops.square(next_noise_rates / noise_rates) * noisy_images
        )
        variances = betas if variance == "beta" else betas * ops.square(next_noise_rates / noise_rates)
        noises = keras.random.normal(ops.shape(noisy_images), seed=StepSeed(seed, index))
        not_last = ops.cast(index < last, "float32")
        return next_noisy_images + not_last * ops.sqrt(variances) * noises, pred_images

    return run_steps(step, initial_noise, diffusion_times)


def dpmpp_2m(denoise, initial_noise, diffusion_times, schedule, *, seed=0):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in the data prediction.

    The previous step's clean-image estimate and log-SNR step live in the loop state.
    """

    def step(index, times, next_times, noisy_images, _, previous_pred_images, previous_steps):
        noise_rates, signal_rates = schedule(times)
        _, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        next_noise_rates, next_signal_rates = schedule(next_times)
        steps = ops.log(next_signal_rates / next_noise_rates) - ops.log(signal_rates / noise_rates)
        # first order (DDIM) on the first step and on a step to sigma = 0 (infinite log-SNR step);
        # otherwise extrapolate with the previous estimate
        ratios = previous_steps / steps
        second_order = (1.0 + 0.5 / ratios) * pred_images - 0.5 / ratios * previous_pred_images
        corrected = ops.where((index > 0) & (next_noise_rates > 0.0), second_order, pred_images)
        next_noisy_images = (next_noise_rates / noise_rates * noisy_images
                             - next_signal_rates * ops.expm1(-steps) * corrected)
        return next_noisy_images, corrected, pred_images, steps

    ones = ops.ones_like(initial_noise[:, :1, :1, :1])
    return run_steps(step, initial_noise, diffusion_times, ops.cast(initial_noise, "float32"), ones)


def heun(denoise, initial_noise, diffusion_times, schedule, *, seed=0):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

    Integrated in x / signal_rate against sigma = noise_rate / signal_rate, where Euler is DDIM;
    two network calls per step, one (Euler) for a step that ends at sigma = 0.
    """

    def step(index, times, next_times, noisy_images, _):
        noise_rates, signal_rates = schedule(times)
        pred_noises, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        next_noise_rates, next_signal_rates = schedule(next_times)
        sigmas, next_sigmas = noise_rates / signal_rates, next_noise_rates / next_signal_rates
        scaled_images = noisy_images / signal_rates
        euler_images = scaled_images + (next_sigmas - sigmas) * pred_noises
        next_pred_noises, next_pred_images = denoise(
            euler_images * next_signal_rates, next_noise_rates, next_signal_rates)
        heun_images = scaled_images + (next_sigmas - sigmas) * 0.5 * (pred_noises + next_pred_noises)
        heun_pred_images = heun_images - next_sigmas * next_pred_noises
        ends_clean = next_sigmas <= 0.0
        next_scaled_images = ops.where(ends_clean, euler_images, heun_images)
        final_pred_images = ops.where(ends_clean, pred_images, heun_pred_images)
        return next_scaled_images * next_signal_rates, final_pred_images

    return run_steps(step, initial_noise, diffusion_times)


SAMPLERS = {"ddim": ddim, "ddpm": ddpm, "dpmpp2m": dpmpp_2m, "heun": heun}


def get_sampler(name, **options):
    """The sampler registered under `name` with `options` bound, checked here (eagerly, before any
    compilation) with a clear error for unknown names and bad values."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    unknown = set(options) - set(inspect.signature(SAMPLERS[name]).parameters)
    if unknown:
        raise UsageError(f"sampler {name!r} takes no option(s) {sorted(unknown)}")
    if not 0.0 <= options.get("eta", 0.0) <= 1.0:
        raise UsageError(f"eta must be in [0, 1], got {options['eta']}")
    if options.get("variance", "posterior") not in VARIANCES:
        raise UsageError(f"unknown DDPM variance {options['variance']!r}; choose one of {list(VARIANCES)}")
    return functools.partial(SAMPLERS[name], **options)


def network_evaluations(name, steps):
    """Denoiser calls a sampler makes for `steps` steps (Heun: two per step), for fair comparisons."""
    return 2 * steps if name == "heun" else steps
