"""Samplers: turn initial noise into images by calling one denoiser contract.

Notation (DDIM paper -> code): sqrt(alpha_bar_t) = signal_rates, sqrt(1 - alpha_bar_t) = noise_rates,
x_t = noisy_images, epsilon_theta = pred_noises, x_0 prediction = pred_images.

`denoise(noisy_images, noise_rates, signal_rates) -> (pred_noises, pred_images)` is all a sampler
sees; each sampler is a step function inside one `keras.ops.fori_loop`, so a backend compiles the
whole reverse process as one graph.
"""

from keras import ops


def ddim_step(denoise, schedule, noisy_images, diffusion_times, next_diffusion_times):
    """One deterministic DDIM step (Song et al. 2021, eta = 0) from time t to the earlier t_next.

    Returns (next_noisy_images, pred_images); usable eagerly to record a reverse trajectory.
    """
    noise_rates, signal_rates = schedule(diffusion_times)
    pred_noises, pred_images = denoise(noisy_images, noise_rates, signal_rates)
    next_noise_rates, next_signal_rates = schedule(next_diffusion_times)
    return next_signal_rates * pred_images + next_noise_rates * pred_noises, pred_images


def ddim(denoise, initial_noise, diffusion_steps, schedule):
    """DDIM from t = 1 to t = 0 in equal time steps, compiled as one loop.

    Returns the last clean-image prediction (in the model's normalised space).
    """
    step_size = 1.0 / diffusion_steps
    ones = ops.ones_like(initial_noise[:, :1, :1, :1])

    def step(index, state):
        noisy_images, _ = state
        diffusion_times = ones * (1.0 - ops.cast(index, "float32") * step_size)
        return ddim_step(denoise, schedule, noisy_images, diffusion_times,
                         diffusion_times - step_size)

    _, pred_images = ops.fori_loop(0, diffusion_steps, step, (initial_noise, initial_noise))
    return pred_images
