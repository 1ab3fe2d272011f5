"""Prediction targets: what the network outputs (noise, clean image or a velocity), in one place.

With x_t = signal_rates * x_0 + noise_rates * epsilon and noise_rates**2 + signal_rates**2 == 1:
    "epsilon": the noise (Ho et al. 2020)       "x0": the clean image
    "v": signal_rates * epsilon - noise_rates * x_0 (Salimans & Ho 2022)
    "flow": epsilon - x_0, the velocity of the straight path x = (1 - t) x_0 + t epsilon that
            x_t / (signal_rates + noise_rates) lies on, t = noise_rates / (signal_rates + noise_rates)
            (rectified flow / flow matching; Liu et al. 2023, Lipman et al. 2023)
`to_noises_and_images` turns any of them into the one denoiser contract the samplers use,
`target_values` gives a target's value (training labels, a loss in any space), and `x0_error_scales`
how an error in a target's space relates to the same error in the clean image (loss weightings).
"""

from keras import ops

from diffusion_keras.config import TARGETS  # noqa: F401 (the names, listed with the other settings)

# Keeps x0 -> epsilon finite where a schedule reaches noise_rate 0 (t = 0); such times carry no noise.
MIN_RATE = 1e-4


def target_values(noises, images, noise_rates, signal_rates, target):
    """The value of `target` for these noises and clean images."""
    if target == "epsilon":
        return noises
    if target == "x0":
        return images
    if target == "flow":
        return noises - images
    return signal_rates * noises - noise_rates * images


def to_noises_and_images(outputs, noisy_images, noise_rates, signal_rates, target):
    """A network's `target` output -> (pred_noises, pred_images)."""
    if target == "epsilon":
        return outputs, (noisy_images - noise_rates * outputs) / ops.maximum(signal_rates, MIN_RATE)
    if target == "x0":
        return (noisy_images - signal_rates * outputs) / ops.maximum(noise_rates, MIN_RATE), outputs
    if target == "flow":
        scales = 1.0 / (signal_rates + noise_rates)
        path_images, times = scales * noisy_images, scales * noise_rates
        return path_images + (1.0 - times) * outputs, path_images - times * outputs
    return (noise_rates * noisy_images + signal_rates * outputs,
            signal_rates * noisy_images - noise_rates * outputs)


def x0_error_scales(noise_rates, signal_rates, target):
    """|error in `target`| / |the clean-image error it makes| at a given noisy image: the factor
    between a loss in the target's space and one on x_0 (its square, for squared errors)."""
    noise_rates = ops.maximum(noise_rates, MIN_RATE)
    if target == "epsilon":
        return signal_rates / noise_rates
    if target == "x0":
        return ops.ones_like(noise_rates)
    if target == "flow":
        return (signal_rates + noise_rates) / noise_rates
    return 1.0 / noise_rates
