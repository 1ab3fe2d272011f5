"""Samplers: turn initial noise into images by calling one denoiser contract.

Notation (papers -> code), with noise_rates**2 + signal_rates**2 == 1:
    sqrt(alpha_bar_t) = signal_rates          sqrt(1 - alpha_bar_t) = noise_rates
    x_t = noisy_images                        epsilon_theta = pred_noises, x_0 estimate = pred_images
    sigma_t (EDM, DPM-Solver) = noise_rates / signal_rates       lambda_t = -log(sigma_t)
    eta (DDIM) scales the fresh noise: 0 deterministic, 1 the DDPM posterior variance.

`denoise(noisy_images, noise_rates, signal_rates) -> (pred_noises, pred_images)` is all a sampler
sees (`targets` turns any network parametrisation into it). Every sampler has the signature
`sampler(denoise, initial_noise, diffusion_times, schedule, *, step_seeds=None, callback=None,
**options)`. `diffusion_times` (`sampling_times` makes them) are the decreasing times where the
network is called: the sampler steps from each to the next, and the last call's clean-image estimate
is the sample, so no call is spent where its answer would be thrown away, and the final state is
always denoised (on a schedule whose last time still holds noise, e.g. offset-cosine's t = 0).
The steps run in one `keras.ops.fori_loop`, any history in the loop state, so a backend compiles the
whole reverse process as one graph; with a `callback(step, time, noisy_images, pred_images)` they
run eagerly instead, one call per network call's input and estimate (GIFs, x0 strips).
`step_seeds` (steps, batch, 2) seed each image's fresh noise at each step (`seeding`).
Arithmetic is float32; images are in the model's normalised space.
"""

import dataclasses
import functools
import inspect
import numbers

import numpy as np
from keras import ops

from diffusion_keras import checks, seeding
from diffusion_keras.config import SPACINGS, VARIANCES
from diffusion_keras.errors import UsageError
from diffusion_keras.schedules import times_of_log_sigmas

KARRAS_RHO = 7.0
# EDM's smallest noise level (0.002 for data of standard deviation 0.5), for our unit-variance data:
# where sigma-spaced grids end on schedules that reach sigma = 0.
SIGMA_MIN = 0.004


def sampling_times(steps, spacing, log_sigma_table, timesteps=None):
    """The `steps` decreasing times, from t = 1, where a sampler calls the network (as float32 NumPy).

    Where the schedule reaches sigma = 0 at t = 0, a call there would return its input, so the grid
    stops short of it (uniform: 1, (n-1)/n, ..., 1/n); where t = 0 still holds noise
    (offset-cosine) the grid ends at t = 0. "uniform" and "quadratic" (denser near the image; Song et
    al. 2021, D.2) space the times; "karras" spaces sigma^(1/7) evenly (Karras et al. 2022, eq. 5)
    and "log_snr" log(sigma) (the grid DPM-Solver is analysed on), both from sigma(1) down to the
    schedule's sigma at t = 0 or `SIGMA_MIN`. With `timesteps` T (discrete DDPM) the times are
    snapped to the grid k / T, k >= 1, without repeats. `log_sigma_table` is the schedule's
    `schedules.log_sigma_table`.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UsageError(f"diffusion steps must be a positive integer, got {steps!r}")
    if spacing not in SPACINGS:
        raise UsageError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if timesteps and steps > timesteps:
        raise UsageError(f"{steps} steps exceed the model's {timesteps} discrete timesteps")
    log_sigmas, _ = log_sigma_table
    ends_noisy = log_sigmas[0] > np.log(1e-6)
    if spacing in ("uniform", "quadratic"):
        fractions = np.linspace(0.0, 1.0, steps) if ends_noisy else np.arange(steps) / steps
        times = 1.0 - fractions if spacing == "uniform" else (1.0 - fractions) ** 2
    else:
        high = log_sigmas[-1]
        low = log_sigmas[0] if ends_noisy else max(np.log(SIGMA_MIN), log_sigmas[0])
        fractions = np.linspace(0.0, 1.0, steps)
        if spacing == "karras":
            high_root, low_root = np.exp(high / KARRAS_RHO), np.exp(low / KARRAS_RHO)
            grid = KARRAS_RHO * np.log(high_root + fractions * (low_root - high_root))
        else:
            grid = high + fractions * (low - high)
        times = ops.convert_to_numpy(times_of_log_sigmas(log_sigma_table, grid.astype("float32")))
        times[0] = 1.0
    if timesteps:
        times = np.unique(np.maximum(np.round(times * timesteps), 1))[::-1] / timesteps
    return np.asarray(times, dtype="float32")


def run_steps(step, denoise, initial_noise, diffusion_times, schedule, history=(), callback=None):
    """Step between consecutive `diffusion_times`, then denoise at the last one and return that
    estimate. `step(index, rates, next_rates, noisy_images, *history) -> ((next_noisy_images,
    *history), pred_images)`, rates being (noise_rates, signal_rates) shaped like a batch."""
    times = ops.cast(ops.convert_to_tensor(diffusion_times), "float32")
    noise_rates, signal_rates = schedule(times)
    ones = ops.ones_like(initial_noise[:, :1, :1, :1], dtype="float32")

    def rates(index):
        return ones * ops.take(noise_rates, index), ones * ops.take(signal_rates, index)

    def body(index, state):
        return step(index, rates(index), rates(index + 1), *state)[0]

    last = len(diffusion_times) - 1
    state = (ops.cast(initial_noise, "float32"), *history)
    if callback is None:
        state = ops.fori_loop(0, last, body, state)
    else:
        for index in range(last):
            next_state, pred_images = step(index, rates(index), rates(index + 1), *state)
            callback(index, float(diffusion_times[index]), state[0], pred_images)
            state = next_state
    _, images = denoise(state[0], *rates(last))
    if callback is not None:
        callback(last, float(diffusion_times[last]), state[0], images)
    return images


def fresh_noise(step_seeds, index, like):
    """Step `index`'s standard normal noise, each image from its own seed pair."""
    if step_seeds is None:
        raise UsageError("a stochastic sampler needs step_seeds (see seeding.step_seeds)")
    return seeding.per_image_normal(ops.take(step_seeds, index, axis=0), tuple(ops.shape(like)[1:]))


def ddim_step(pred_noises, pred_images, next_rates):
    """Deterministic DDIM's next noisy images: the estimates re-noised at `next_rates` (noise and
    signal rates); on rectified flow's path, an Euler step of the velocity."""
    next_noise_rates, next_signal_rates = next_rates
    return next_signal_rates * pred_images + next_noise_rates * pred_noises


def ddim(denoise, initial_noise, diffusion_times, schedule, *, step_seeds=None, callback=None,
         eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): eta = 0 deterministic, eta = 1 the DDPM posterior."""
    def step(index, rates, next_rates, noisy_images):
        (noise_rates, signal_rates), (next_noise_rates, next_signal_rates) = rates, next_rates
        pred_noises, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        if eta == 0.0:  # deterministic: no variance to compute on every step
            return (ddim_step(pred_noises, pred_images, next_rates),), pred_images
        # the fresh noise's std (DDIM's sigma_t; not EDM's sigma = noise / signal, as in `heun`):
        # std^2 = eta^2 (1 - a_next) / (1 - a) (1 - a / a_next), the posterior variance times eta^2
        step_noise_stds = eta * ops.sqrt(ops.maximum(
            ops.square(next_noise_rates / noise_rates)
            * (1.0 - ops.square(signal_rates / next_signal_rates)), 0.0))
        direction_rates = ops.sqrt(ops.maximum(
            ops.square(next_noise_rates) - ops.square(step_noise_stds), 0.0))
        noises = fresh_noise(step_seeds, index, noisy_images)
        return (next_signal_rates * pred_images + direction_rates * pred_noises
                + step_noise_stds * noises,), pred_images

    return run_steps(step, denoise, initial_noise, diffusion_times, schedule, callback=callback)


def ddpm(denoise, initial_noise, diffusion_times, schedule, *, step_seeds=None, callback=None,
         variance="posterior"):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) with sigma^2 = posterior variance or beta_t.

    Between non-adjacent times beta_t is 1 - alpha_bar_t / alpha_bar_next (the skipped steps merged).
    The last call returns its clean-image estimate, as the paper's noise-free last step does.
    """
    def step(index, rates, next_rates, noisy_images):
        (noise_rates, signal_rates), (next_noise_rates, next_signal_rates) = rates, next_rates
        _, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        alphas = ops.square(signal_rates / next_signal_rates)
        betas = 1.0 - alphas
        # posterior mean (Ho et al. eq. 7) of q(x_next | x_t, x_0) with x_0 = pred_images
        next_noisy_images = (
            next_signal_rates * betas / ops.square(noise_rates) * pred_images
            + ops.sqrt(alphas) * ops.square(next_noise_rates / noise_rates) * noisy_images
        )
        variances = betas if variance == "beta" else betas * ops.square(next_noise_rates / noise_rates)
        noises = fresh_noise(step_seeds, index, noisy_images)
        return (next_noisy_images + ops.sqrt(variances) * noises,), pred_images

    return run_steps(step, denoise, initial_noise, diffusion_times, schedule, callback=callback)


def dpmpp_2m(denoise, initial_noise, diffusion_times, schedule, *, step_seeds=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in the data prediction.

    The previous step's clean-image estimate and log-SNR step (h) live in the loop state.
    """
    def step(index, rates, next_rates, noisy_images, previous_pred_images, previous_log_snr_steps):
        (noise_rates, signal_rates), (next_noise_rates, next_signal_rates) = rates, next_rates
        _, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        log_snr_steps = (ops.log(next_signal_rates / next_noise_rates)
                         - ops.log(signal_rates / noise_rates))
        # first order (DDIM) on the first step; then extrapolate with the previous estimate
        ratios = previous_log_snr_steps / log_snr_steps
        second_order = (1.0 + 0.5 / ratios) * pred_images - 0.5 / ratios * previous_pred_images
        corrected = ops.where(index > 0, second_order, pred_images)
        next_noisy_images = (next_noise_rates / noise_rates * noisy_images
                             - next_signal_rates * ops.expm1(-log_snr_steps) * corrected)
        return (next_noisy_images, pred_images, log_snr_steps), pred_images

    initial_noise = ops.cast(initial_noise, "float32")
    history = (initial_noise, ops.ones_like(initial_noise[:, :1, :1, :1]))
    return run_steps(step, denoise, initial_noise, diffusion_times, schedule, history, callback)


def dpmpp_3m(denoise, initial_noise, diffusion_times, schedule, *, step_seeds=None, callback=None):
    """DPM-Solver++(3M): third-order multistep in the data prediction (Lu et al. 2022, with the phi
    functions of the exponential integrator, as k-diffusion's sample_dpmpp_3m_sde at eta = 0).

    First order on the first step, second on the second; the last two estimates and log-SNR steps
    live in the loop state.
    """
    def step(index, rates, next_rates, noisy_images, pred_images_1, pred_images_2, log_snr_steps_1,
             log_snr_steps_2):
        (noise_rates, signal_rates), (next_noise_rates, next_signal_rates) = rates, next_rates
        _, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        h = ops.log(next_signal_rates / next_noise_rates) - ops.log(signal_rates / noise_rates)
        phi_1 = -ops.expm1(-h)
        phi_2 = 1.0 - phi_1 / h
        phi_3 = phi_2 / h - 0.5
        r0, r1 = log_snr_steps_1 / h, log_snr_steps_2 / h
        d1_0 = (pred_images - pred_images_1) / r0
        d1_1 = (pred_images_1 - pred_images_2) / r1
        second = phi_2 * d1_0
        third = phi_2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - phi_3 * (d1_0 - d1_1) / (r0 + r1)
        correction = ops.where(index > 1, third, ops.where(index > 0, second, 0.0 * pred_images))
        next_noisy_images = (next_noise_rates / noise_rates * noisy_images
                             + next_signal_rates * (phi_1 * pred_images + correction))
        return (next_noisy_images, pred_images, pred_images_1, h, log_snr_steps_1), pred_images

    initial_noise = ops.cast(initial_noise, "float32")
    ones = ops.ones_like(initial_noise[:, :1, :1, :1])
    history = (initial_noise, initial_noise, ones, ones)
    return run_steps(step, denoise, initial_noise, diffusion_times, schedule, history, callback)


def heun(denoise, initial_noise, diffusion_times, schedule, *, step_seeds=None, callback=None):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

    Integrated in x / signal_rate against sigma = noise_rate / signal_rate, where Euler is DDIM;
    two network calls per step between grid times, one for the final estimate.
    """
    def step(index, rates, next_rates, noisy_images):
        (noise_rates, signal_rates), (next_noise_rates, next_signal_rates) = rates, next_rates
        pred_noises, pred_images = denoise(noisy_images, noise_rates, signal_rates)
        sigmas, next_sigmas = noise_rates / signal_rates, next_noise_rates / next_signal_rates
        scaled_images = noisy_images / signal_rates
        euler_images = scaled_images + (next_sigmas - sigmas) * pred_noises
        next_pred_noises, _ = denoise(euler_images * next_signal_rates, next_noise_rates,
                                      next_signal_rates)
        heun_images = scaled_images + (next_sigmas - sigmas) * 0.5 * (pred_noises + next_pred_noises)
        return (heun_images * next_signal_rates,), pred_images

    return run_steps(step, denoise, initial_noise, diffusion_times, schedule, callback=callback)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Everything the library, the CLIs and the benchmarks need to know about one sampler."""

    name: str
    function: object  # sampler(denoise, initial_noise, diffusion_times, schedule, *, ...)
    description: str  # for --help
    default_spacing: str  # its grid of the lowest FD at 10 and 20 calls (BENCHMARKS.md, "Samplers")
    options: tuple = ()  # the names of its settings (their defaults are the function's)
    stochastic: object = False  # True, or the option that makes it so when positive (DDIM's eta)
    calls_per_step: int = 1  # Heun: two (a predictor and a corrector call)

    def bind(self, **options):
        """The function with `options` bound, checked eagerly (before any compilation)."""
        unknown = set(options) - set(self.options)
        if unknown:
            raise UsageError(f"sampler {self.name!r} takes no option(s) {sorted(unknown)}")
        checks.number(options.get("eta", 0.0), "eta", 0, 1)
        checks.choice(options.get("variance", "posterior"), VARIANCES, "DDPM variance")
        return functools.partial(self.function, **options)

    @property
    def option_defaults(self):
        """{option: its default}, as the sampler function declares them."""
        parameters = inspect.signature(self.function).parameters
        return {name: parameters[name].default for name in self.options}

    def is_stochastic(self, options):
        """Whether it draws fresh noise at each step (and so reads `step_seeds`)."""
        if isinstance(self.stochastic, str):
            return options.get(self.stochastic, 0.0) > 0.0
        return self.stochastic

    def network_evaluations(self, steps):
        """Denoiser calls for `steps` grid times (the last time's estimate is one call), for fair
        comparisons: Heun makes two per step between them."""
        return self.calls_per_step * (steps - 1) + 1

    def steps_for(self, calls):
        """The most steps whose `network_evaluations` stay within `calls`."""
        return (calls - 1) // self.calls_per_step + 1


# the names are also config.SAMPLER_NAMES, which the command lines read without loading Keras
SAMPLERS = {sampler.name: sampler for sampler in (
    Sampler("dpmpp2m", dpmpp_2m, "DPM-Solver++(2M)", "log_snr"),
    Sampler("dpmpp3m", dpmpp_3m, "DPM-Solver++(3M)", "uniform"),
    Sampler("ddim", ddim, "DDIM", "uniform", ("eta",), stochastic="eta"),
    Sampler("ddpm", ddpm, "ancestral", "uniform", ("variance",), stochastic=True),
    Sampler("heun", heun, "2 network calls a step", "karras", calls_per_step=2),
)}


def sampler_record(name):
    """The `Sampler` registered under `name`, or a one-line error naming the known ones."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}")
    return SAMPLERS[name]


def get_sampler(name, **options):
    """The sampler registered under `name` with `options` bound and checked."""
    return sampler_record(name).bind(**options)


def sampling_name(sampling, steps, seed):
    """The part of an output's file name that every sampling setting changes (`sampling`:
    `generate`'s sampler, spacing and options), e.g. `dpmpp2m_log_snr_steps20_seed0` or
    `ddim-eta0.5_uniform_steps50_seed3`."""
    options = sampler_record(sampling["sampler"]).option_defaults
    options.update({name: sampling[name] for name in options if name in sampling})
    named = "".join(f"-{name}{value:g}" if isinstance(value, numbers.Real) else f"-{value}"
                    for name, value in options.items())  # a number by name, a choice by itself
    return f"{sampling['sampler']}{named}_{sampling['spacing']}_steps{steps}_seed{seed}"
