"""Prediction targets: what the network outputs (noise, clean image or velocity), in one place.

With x_t = signal_rates * x_0 + noise_rates * epsilon and noise_rates**2 + signal_rates**2 == 1:
    "epsilon": the noise (Ho et al. 2020)       "x0": the clean image
    "v": signal_rates * epsilon - noise_rates * x_0 (Salimans & Ho 2022)
`to_noises_and_images` turns any of them into the one denoiser contract the samplers use, and
`target_values` gives a target's value, for the training labels and for a loss in any space.
"""

from keras import ops

from diffusion_keras.errors import UsageError

TARGETS = ("epsilon", "x0", "v")
# Keeps x0 -> epsilon finite where a schedule reaches noise_rate 0 (t = 0); such times carry no noise.
MIN_RATE = 1e-4


def check_target(target, what="prediction target"):
    if target not in TARGETS:
        raise UsageError(f"unknown {what} {target!r}; choose one of {list(TARGETS)}")
    return target


def target_values(noises, images, noise_rates, signal_rates, target):
    """The value of `target` for these noises and clean images."""
    if target == "epsilon":
        return noises
    if target == "x0":
        return images
    return signal_rates * noises - noise_rates * images


def to_noises_and_images(outputs, noisy_images, noise_rates, signal_rates, target):
    """A network's `target` output -> (pred_noises, pred_images)."""
    if target == "epsilon":
        return outputs, (noisy_images - noise_rates * outputs) / ops.maximum(signal_rates, MIN_RATE)
    if target == "x0":
        return (noisy_images - signal_rates * outputs) / ops.maximum(noise_rates, MIN_RATE), outputs
    return (noise_rates * noisy_images + signal_rates * outputs,
            signal_rates * noisy_images - noise_rates * outputs)
