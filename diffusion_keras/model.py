"""DiffusionModel: the keras-io DDIM model made backend-neutral, seeded and serialisable.

Training goes through Keras' own `fit` on every backend: `call` normalises a batch and
`compute_loss` noises it, denoises it and updates the EMA network, all inside the compiled step.
"""

import keras
import numpy as np
from keras import layers, ops

from diffusion_keras import backend, samplers
from diffusion_keras.errors import UsageError
from diffusion_keras.schedules import get_schedule
from diffusion_keras.unet import DEFAULT_WIDTHS, build_unet


@keras.saving.register_keras_serializable(package="diffusion_keras")
class DiffusionModel(keras.Model):
    """Denoising diffusion model with an EMA copy of its U-Net, sampled with DDIM."""

    def __init__(self, image_size=32, channels=3, widths=DEFAULT_WIDTHS, block_depth=2,
                 embedding_dims=32, embedding_max_frequency=1000.0, schedule="offset_cosine",
                 ema=0.999, seed=None, **kwargs):
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise UsageError(f"channels must be 1 or 3, got {channels}")
        if not 0.0 <= ema < 1.0:
            raise UsageError(f"ema momentum must be in [0, 1), got {ema}")
        self.image_size = image_size
        self.channels = channels
        self.widths = tuple(widths)
        self.block_depth = block_depth
        self.embedding_dims = embedding_dims
        self.embedding_max_frequency = embedding_max_frequency
        self.schedule = schedule
        self.ema = ema
        self.seed = seed
        self.diffusion_schedule = get_schedule(schedule)

        unet_args = (image_size, channels, self.widths, block_depth, embedding_dims,
                     embedding_max_frequency)
        self.normalizer = layers.Normalization(axis=-1, dtype="float32")  # exact in mixed precision
        self.normalizer.build((None, image_size, image_size, channels))
        self.network = build_unet(*unet_args, name="network")
        self.ema_network = build_unet(*unet_args, name="ema_network")
        self.ema_network.set_weights(self.network.get_weights())
        self.ema_network.trainable = False
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.noise_loss_tracker = keras.metrics.Mean(name="noise_loss")
        self.image_loss_tracker = keras.metrics.Mean(name="image_loss")
        self._samplers = {}
        self.built = True

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "channels": self.channels,
            "widths": list(self.widths),
            "block_depth": self.block_depth,
            "embedding_dims": self.embedding_dims,
            "embedding_max_frequency": self.embedding_max_frequency,
            "schedule": self.schedule,
            "ema": self.ema,
            "seed": self.seed,
        }

    @property
    def image_shape(self):
        return (self.image_size, self.image_size, self.channels)

    def denormalize(self, images):
        """Model space back to [0, 1] pixels, using the normaliser's adapted statistics."""
        images = self.normalizer.mean + images * ops.sqrt(self.normalizer.variance)
        return ops.clip(images, 0.0, 1.0)

    def denoise(self, noisy_images, noise_rates, signal_rates, training=False):
        """Predict noise and clean image; the online network when training, else the EMA network."""
        network = self.network if training else self.ema_network
        pred_noises = network([noisy_images, noise_rates**2], training=training)
        pred_images = (noisy_images - noise_rates * pred_noises) / signal_rates
        return pred_noises, pred_images

    def call(self, images, training=False):
        """Pixels in [0, 1] -> the normalised space the network is trained in."""
        return self.normalizer(images)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Noise the normalised batch at random times and score the noise prediction (MAE)."""
        images = y_pred
        noises = keras.random.normal(ops.shape(images), seed=self.seed_generator)
        diffusion_times = keras.random.uniform(
            (ops.shape(images)[0], 1, 1, 1), seed=self.seed_generator
        )
        noise_rates, signal_rates = self.diffusion_schedule(diffusion_times)
        noisy_images = signal_rates * images + noise_rates * noises
        pred_noises, pred_images = self.denoise(noisy_images, noise_rates, signal_rates, training)

        noise_loss = ops.mean(ops.abs(noises - pred_noises))
        image_loss = ops.mean(ops.abs(images - pred_images))
        self.noise_loss_tracker.update_state(noise_loss)
        self.image_loss_tracker.update_state(image_loss)
        if training:
            self.update_ema()
        return noise_loss

    def update_ema(self):
        """ema <- m * ema + (1 - m) * online, for every weight (BatchNorm statistics included).

        No stop_gradient needed: assignments are not differentiated, and on TensorFlow wrapping the
        weights in one halved the training speed.
        """
        for weight, ema_weight in zip(self.network.weights, self.ema_network.weights):
            ema_weight.assign(self.ema * ema_weight + (1.0 - self.ema) * weight)

    def reverse_diffusion(self, initial_noise, diffusion_steps):
        """DDIM from pure noise to normalised images with the EMA network."""
        return samplers.ddim(self.denoise, initial_noise, diffusion_steps, self.diffusion_schedule)

    def initial_noise(self, num_images, seed=None):
        """Standard normal noise shaped like a batch of images; `seed` makes it repeatable."""
        shape = (num_images, *self.image_shape)
        return keras.random.normal(shape, seed=self.seed_generator if seed is None else seed)

    def generate(self, num_images, diffusion_steps=20, initial_noise=None, seed=None,
                 batch_size=256):
        """Sample `num_images` images in [0, 1] as a NumPy array (N, H, W, C), batch by batch."""
        if diffusion_steps < 1:
            raise UsageError(f"diffusion steps must be a positive integer, got {diffusion_steps}")
        if initial_noise is None:
            if num_images < 1:
                raise UsageError(f"number of images must be positive, got {num_images}")
            initial_noise = self.initial_noise(num_images, seed)
        initial_noise = ops.convert_to_tensor(initial_noise, dtype="float32")
        sample = self._compiled_sampler(diffusion_steps)
        batches = [
            ops.convert_to_numpy(sample(initial_noise[start:start + batch_size]))
            for start in range(0, ops.shape(initial_noise)[0], batch_size)
        ]
        return np.concatenate(batches)

    def _compiled_sampler(self, diffusion_steps):
        """One compiled graph per step count: the whole DDIM loop, then denormalisation."""
        if diffusion_steps not in self._samplers:
            def sample(initial_noise):
                return self.denormalize(self.reverse_diffusion(initial_noise, diffusion_steps))

            variables = self.ema_network.variables + self.normalizer.variables
            self._samplers[diffusion_steps] = backend.compile_function(sample, variables)
        return self._samplers[diffusion_steps]
