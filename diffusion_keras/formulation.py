"""What a model learns, in one object: the noising path (schedule), what the network predicts, how
training draws its noise levels, and the loss with its weighting.

EDM keeps one loss class per formulation; here one `Formulation` is built from a model's resolved
`ModelConfig` (`config.FORMULATION_DEFAULTS` says what "continuous", "ddpm" and "flow" mean, the
config's fine-grained settings override them, and `ModelConfig` refuses contradictory ones).
Everything in it is `keras.ops`, so it runs inside the compiled training step on every backend.
"""

import functools
import math

import keras
from keras import ops

from diffusion_keras import targets
from diffusion_keras.schedules import get_schedule, log_sigma_table, times_of_log_sigmas

EDM_LOG_SIGMA_MEAN = -1.2 + math.log(2.0)  # Karras et al.'s P_mean for sigma_data 0.5; ours is 1
EDM_LOG_SIGMA_STD = 1.2


class Formulation:
    """The schedule (times -> noise and signal rates), the network target (`prediction`), the
    training-time distribution and the loss of a resolved `ModelConfig`."""

    def __init__(self, config):
        self.name = config.formulation
        self.prediction = config.prediction
        self.time_distribution = config.time_distribution
        self.loss_function, self.loss_target = config.loss_function, config.loss_target
        self.loss_weighting, self.min_snr_gamma = config.loss_weighting, config.min_snr_gamma
        # the DDPM formulation's integer timesteps k = 1..T, i.e. times k / T; None: continuous
        self.timesteps = config.timesteps if config.formulation == "ddpm" else None
        self.schedule = get_schedule(config.schedule)
        if config.schedule == "linear":  # T linear betas: time k / T is exactly DDPM's step k
            self.schedule = functools.partial(self.schedule, timesteps=config.timesteps)
        # computed eagerly, outside any traced step: noise levels -> times, for sigma-spaced
        # sampling grids and EDM's training noise levels
        self.log_sigma_table = log_sigma_table(self.schedule)

    def training_times(self, batch_size, seed_generator):
        """Training times by `time_distribution`: uniform in [0, 1]; logit-normal (Esser et al.
        2024); or EDM's log-normal noise levels (Karras et al. 2022), log(noise / signal) ~
        N(-1.2 + log 2, 1.2^2) for unit-variance data, mapped to the schedule's times. The DDPM
        formulation draws integer timesteps k = 1..T uniformly, as times k / T."""
        shape = (batch_size, 1, 1, 1)
        if self.timesteps is not None:
            steps = keras.random.randint(shape, 1, self.timesteps + 1, seed=seed_generator)
            return ops.cast(steps, "float32") / self.timesteps
        if self.time_distribution == "uniform":
            return keras.random.uniform(shape, seed=seed_generator)
        normals = keras.random.normal(shape, seed=seed_generator)
        if self.time_distribution == "logit_normal":
            return ops.sigmoid(normals)
        return times_of_log_sigmas(self.log_sigma_table,
                                   EDM_LOG_SIGMA_MEAN + EDM_LOG_SIGMA_STD * normals)

    def noisy(self, images, noises, diffusion_times):
        """(noisy images, noise rates, signal rates) at these times."""
        noise_rates, signal_rates = self.schedule(diffusion_times)
        return signal_rates * images + noise_rates * noises, noise_rates, signal_rates

    def to_noises_and_images(self, outputs, noisy_images, noise_rates, signal_rates):
        """The network's output -> (pred_noises, pred_images), the samplers' denoiser contract."""
        return targets.to_noises_and_images(outputs, noisy_images, noise_rates, signal_rates,
                                            self.prediction)

    def loss(self, noises, images, pred_noises, pred_images, noise_rates, signal_rates):
        """`loss_function` (mae or mse) in `loss_target`'s space, weighted by `loss_weighting`."""
        errors = (targets.target_values(noises, images, noise_rates, signal_rates, self.loss_target)
                  - targets.target_values(pred_noises, pred_images, noise_rates, signal_rates,
                                          self.loss_target))
        errors = ops.abs(errors) if self.loss_function == "mae" else ops.square(errors)
        if self.loss_weighting == "min_snr":
            errors = errors * self.min_snr_weights(noise_rates, signal_rates)
        return ops.mean(errors)

    def min_snr_weights(self, noise_rates, signal_rates):
        """Min-SNR-gamma (Hang et al. 2023): weight min(SNR, gamma) on the squared clean-image error,
        turned into the loss target's space (its square root for an absolute error)."""
        snrs = ops.square(signal_rates / ops.maximum(noise_rates, targets.MIN_RATE))
        weights = ops.minimum(snrs, self.min_snr_gamma) / ops.square(
            targets.x0_error_scales(noise_rates, signal_rates, self.loss_target))
        return ops.sqrt(weights) if self.loss_function == "mae" else weights
